"""Residual-stream scales and activation ranges from one pass over the calibration images.

The previous way took two passes of the whole network over the calibration images (one for the
stream scales, one through ONNX Runtime's calibrator on the equalized graph), and ONNX Runtime's
percentile calibrator puts every element of every calibrated tensor into a 2048+-bin
``np.histogram``: on ConvNeXt-T that cost more than the inference itself
(benchmarks/results/export_time.md). This module gives the same ranges from one pass of the
unequalized graph:

- The equalized graph differs from the original only in the tensors ``scaled_tensors`` names,
  which carry ``x / s`` per channel; every other tensor keeps its value. Per-channel min/max of
  each batch give the stream scales and, once ``s`` is known, each chunk's min/max of ``x / s``.
- ONNX Runtime's bins depend only on each chunk's min/max (max |x| for the symmetric layout):
  ``Grid`` replays them chunk by chunk (``asymmetric_grid``, ``absolute_grid``).
- A percentile is where the cumulative histogram crosses (100 - p)%, in the tails. Each tensor
  keeps its largest (and smallest) values, a few more than (100 - p)% of them, with the chunk
  each came from; of the rest only the count matters. ``percentile_bins`` puts the kept values
  in the bins ONNX Runtime gives them and checks that both crossings lie among them.
- Within a channel ``x / s`` keeps the order of ``x``, so the ``x / s`` tensors keep the top of
  every channel (``_ChannelTail``): whatever ``s`` turns out, every value of ``x / s`` above the
  highest channel floor divided by its scale is among them, and the same check applies.

Against ONNX Runtime fed the same values the ranges are the same bit for bit (tests/test_onepass.py).
Against its calibrator on the equalized graph they differ by float rounding only: that graph
computes ``x / s`` through rescaled weights (relative 1e-7). Entropy needs every tensor's whole
histogram and keeps ONNX Runtime's calibrator. A tensor whose kept values do not cover a crossing
(ties, or tails over ``TAIL_BUDGET``) is collected again, unscaled, in a second pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..errors import ConvNeXtExportError, InputError
from .equalize import apply_stream_scales, scaled_tensors, scales_from_peaks, stage_streams
from .ranges import CALIBRATED_OP_TYPES, CalibrationMethod, _chunks

HISTOGRAM_BINS = 2048  # ONNX Runtime's percentile calibrator (create_calibrator's num_bins)
ONE_PASS_METHODS = ("minmax", "percentile")  # entropy needs the whole histogram: ONNX Runtime's calibrator
FULL_FRACTION = 0.25  # a tail this large of a tensor: keep all of its values (small tensors, low percentiles)
TAIL_MARGIN = 16  # values kept beyond the (100 - p)% share: room for ties and for grids that moved
# Stream tensors keep this many times a channel's fair share of the tail (at least 4 x TAIL_MARGIN): equalization
# spreads their tail over the channels; a channel holding more fails the check and takes a second pass. The other
# x / s tensors (pwconv2 outputs, not equalized: their tails sit in a few channels) keep the whole tail per channel.
CHANNEL_SHARE = 32
TAIL_BUDGET = 1 << 30  # bytes of per-channel tails in one pass; beyond (a huge --calib-size): a second pass

Progress = Callable[[str, int, int], None]


def calibrated_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors ONNX Runtime's calibrators collect: float inputs and outputs of ``CALIBRATED_OP_TYPES`` nodes
    that shape inference types, initializers excluded (``CalibraterBase.select_tensors_to_calibrate``)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in inferred.graph.value_info}
    infos.update({vi.name: vi for vi in inferred.graph.output})
    infos.update({vi.name: vi for vi in inferred.graph.input})
    initializers = {init.name for init in model.graph.initializer}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    tensors: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type in CALIBRATED_OP_TYPES:
            for name in [*node.input, *node.output]:
                info = infos.get(name)
                if (info is not None and info.type.HasField("tensor_type")
                        and info.type.tensor_type.elem_type in floats and name not in initializers):
                    tensors[name] = None
    return list(tensors)


# -- ONNX Runtime's bins, replayed from each chunk's extremes (onnxruntime.quantization.calibrate) ----------

@dataclass(frozen=True)
class Grid:
    """The bin edges ONNX Runtime's ``HistogramCollector`` used for each chunk, and where that chunk's bins lie
    in its final histogram (bins are only ever added, at both ends or at the top)."""

    edges: list[np.ndarray]
    offsets: list[int]

    @property
    def final(self) -> np.ndarray:
        return self.edges[-1]

    def histogram(self, values: np.ndarray, chunks: np.ndarray) -> np.ndarray:
        """Counts in the final bins of values each binned as its chunk was (``np.histogram``'s rules)."""
        hist = np.zeros(len(self.final) - 1, np.int64)
        for chunk in np.unique(chunks):
            counts = np.histogram(values[chunks == chunk], bins=self.edges[chunk])[0]
            hist[self.offsets[chunk]:self.offsets[chunk] + len(counts)] += counts
        return hist

    def bins_of(self, value: float) -> list[int]:
        """The final bin ``value`` falls in under each chunk's edges."""
        return [int(np.clip(np.searchsorted(edges, value, side="right") - 1, 0, len(edges) - 2)) + offset
                for edges, offset in zip(self.edges, self.offsets)]


def asymmetric_grid(chunk_lows: Sequence[np.float32], chunk_highs: Sequence[np.float32],
                    bins: int = HISTOGRAM_BINS) -> Grid:
    """``HistogramCollector.collect_value``: [-t, t] over the first chunk's max |x|, widened by whole bins on
    both sides whenever a later chunk reaches further."""
    threshold, states = None, []
    for low, high in zip(chunk_lows, chunk_highs):
        new = np.array(max(abs(np.float32(low)), abs(np.float32(high))), dtype=np.float32)
        added = 0
        if threshold is None or threshold == 0 and new > threshold:
            threshold = new
        elif new > threshold:
            stride = 2 * threshold / bins
            added = int((new - threshold) // stride + 1)
            bins += 2 * added
            threshold = added * stride + threshold
        states.append((threshold, bins, added))
    edges, offsets, cache = [], [], {}
    for index, (threshold, count, _) in enumerate(states):
        key = (float(threshold), count)
        if key not in cache:
            cache[key] = np.histogram_bin_edges(np.empty(0, np.float32), count, range=(-threshold, threshold))
        edges.append(cache[key])
        offsets.append(sum(added for _, _, added in states[index + 1:]))
    return Grid(edges, offsets)


def absolute_grid(first_low: np.float32, chunk_highs: Sequence[np.float32], bins: int = HISTOGRAM_BINS) -> Grid:
    """``HistogramCollector.collect_absolute_value``: the first chunk's [min |x|, max |x|], extended upwards by
    bins of the same width whenever a later chunk reaches further."""
    edges = np.histogram_bin_edges(np.array([first_low, chunk_highs[0]], np.float32), bins)
    grid = [edges]
    for high in chunk_highs[1:]:
        high = np.float32(high)
        if high > edges[-1]:
            width = edges[1] - edges[0]
            edges = np.hstack((edges, np.arange(edges[-1] + width, high + width, width))).astype(np.float32)
        grid.append(edges)
    return Grid(grid, [0] * len(grid))


@dataclass(frozen=True)
class TailValues:
    """The kept values of one end of a tensor, with the chunk of each: at the high end every value above
    ``bound``; at the low end (values negated back) every value below it."""

    values: np.ndarray
    chunks: np.ndarray
    bound: float


def percentile_bins(grid: Grid, total: int, high: TailValues, low: TailValues | None, quantiles: Sequence[float],
                    complete: bool = False) -> list[int] | None:
    """The final bin where ONNX Runtime's cumulative histogram reaches each quantile; None when a crossing may
    lie outside the kept values.

    ``high`` holds every value above its bound, ``low`` every value below its own (``complete``: together they
    are every value); the ``total`` less those lie in between and go to the highest bin any chunk gives the
    high bound. Up to the lowest bin any chunk gives the low bound the counts are those of ``low`` (exact
    below it), from that highest bin on they are exact: a crossing inside those ranges is the full
    histogram's, which the two checks make sure of.
    """
    hist_high = grid.histogram(high.values, high.chunks)
    hist_low = grid.histogram(low.values, low.chunks) if low is not None else np.zeros_like(hist_high)
    hist = hist_high + hist_low
    if not complete:
        bulk_bin = max(grid.bins_of(high.bound))
        hist[bulk_bin] += total - len(high.values) - (len(low.values) if low is not None else 0)
        counted = hist.sum()
        if hist_high[bulk_bin:].sum() <= (1.0 - quantiles[-1]) * counted:
            return None
        if low is not None and hist_low[:min(grid.bins_of(low.bound)) + 1].sum() < quantiles[0] * counted:
            return None
    cdf = np.cumsum(hist / hist.sum())
    return [int(np.searchsorted(cdf, quantile)) for quantile in quantiles]


# -- streaming state ----------------------------------------------------------------------------------------

class _Tail:
    """The largest values of one side of a tensor (x, -x or |x|): every value >= ``floor``, at least ``keep``."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.floor = -math.inf
        self.values: list[np.ndarray] = []
        self.chunks: list[np.ndarray] = []
        self.size = 0

    def offer(self, value: np.ndarray, sign: int, top: np.ndarray, chunk: int) -> None:
        """The values of a batch that reach the floor; ``sign`` -1: the tail of -x (the low end), read from x."""
        if float(top.max()) >= self.floor:
            flat = value.reshape(-1)
            if not math.isfinite(self.floor):
                chosen = self._first(flat if sign > 0 else -flat)
            else:
                chosen = flat[flat >= self.floor] if sign > 0 else -flat[flat <= -self.floor]
            self.values.append(chosen)
            self.chunks.append(np.full(len(chosen), chunk, np.int32))
            self.size += len(chosen)
        if self.size > 2 * self.keep + 4096:
            values, chunks = np.concatenate(self.values), np.concatenate(self.chunks)
            kth = np.partition(values, len(values) - self.keep)[len(values) - self.keep]
            kept = values >= kth
            self.values, self.chunks = [values[kept]], [chunks[kept]]
            self.size, self.floor = int(kept.sum()), float(kth)

    def _first(self, flat: np.ndarray) -> np.ndarray:
        """The first values offered: those above a floor guessed from every 16th value (about twice ``keep``),
        or all of them when fewer than ``keep`` reach it."""
        sample = flat[::16]
        rank = len(sample) - (2 * self.keep) // 16 - 1
        if rank < 1:
            return flat.copy()
        guess = np.partition(sample, rank)[rank]
        chosen = flat[flat >= guess]
        if len(chosen) < self.keep:
            return flat.copy()
        self.floor = float(guess)
        return chosen

    def final(self, scale: None = None) -> TailValues:
        """Every value above the bound; all others are at most the bound."""
        values = np.concatenate(self.values) if self.values else np.empty(0, np.float32)
        chunks = np.concatenate(self.chunks) if self.chunks else np.empty(0, np.int32)
        bound = float(np.nextafter(np.float32(self.floor), np.float32(-np.inf))) if math.isfinite(self.floor) \
            else -math.inf
        return TailValues(values, chunks, bound)


_CHUNK_BITS = np.uint64((1 << 29) - 1)  # the float64 mantissa bits a float32 value leaves zero


def _pack(values: np.ndarray, chunk: int) -> np.ndarray:
    """float32 values as float64 keys that carry their chunk in the mantissa bits a float32 leaves zero: the keys
    sort as the values do (a chunk moves a key by less than the gap to the next float32), so one partition
    moves values and chunks together."""
    return (values.astype(np.float64).view(np.uint64) | np.uint64(chunk)).view(np.float64)


def _unpack(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bits = keys.view(np.uint64)
    return (bits & ~_CHUNK_BITS).view(np.float64).astype(np.float32), (bits & _CHUNK_BITS).astype(np.int32)


class _ChannelTail:
    """The ``keep`` largest values of every channel of one side of an ``x / s`` tensor: ``x / s`` keeps the order
    within a channel, so they hold the largest values of ``x / s`` over all channels, whatever ``s`` (> 0) is.

    A batch's values above their channel's floor wait in ``pending``; they are merged into ``top`` (and the
    floors raised) once they outnumber it twice, so the merges cost about as much as the values they take in."""

    def __init__(self, keep: int, channels: int) -> None:
        self.top = np.full((channels, keep), -np.inf)  # ``_pack`` keys; -inf: no value yet
        self.floor = np.full(channels, -np.inf, np.float32)  # no value of the channel left out exceeds it
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []  # (channel, key)
        self.pending_size = 0
        self.seen = 0  # values per channel so far

    def offer(self, value: np.ndarray, sign: int, top: np.ndarray, chunk: int) -> None:
        """The values of a batch that reach their channel's floor; ``sign`` -1: the tail of -x, read from x."""
        channels = len(self.floor)
        self.seen += value.size // channels
        if not (top > self.floor).any():
            return
        shaped = value.reshape(value.shape[0], channels, -1)
        index = np.flatnonzero(shaped > self.floor[None, :, None] if sign > 0 else shaped < -self.floor[None, :, None])
        chosen = shaped.reshape(-1)[index]
        self.pending.append(((index // shaped.shape[2] % channels).astype(np.int32),
                             _pack(chosen if sign > 0 else -chosen, chunk)))
        self.pending_size += len(index)
        if self.pending_size > 2 * self.top.size:
            self._merge()

    def _merge(self) -> None:
        if not self.pending:
            return
        rows, keys = (np.concatenate(parts) for parts in zip(*self.pending))
        self.pending, self.pending_size = [], 0
        order = np.argsort(rows, kind="stable")
        rows, keys = rows[order], keys[order]
        counts = np.bincount(rows, minlength=len(self.floor))
        position = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        new = np.full((len(self.floor), int(counts.max())), -np.inf)
        new[rows, position] = keys
        self.top = np.partition(np.concatenate([self.top, new], axis=1), new.shape[1], axis=1)[:, new.shape[1]:]
        self.floor = _unpack(self.top.min(axis=1))[0]

    def final(self, scale: np.ndarray) -> TailValues:
        """Every value of ``x / scale`` above the bound; all others are at most the bound."""
        self._merge()
        scale = np.asarray(scale, np.float64)
        values, chunks = _unpack(self.top)
        values = (values / scale[:, None]).astype(np.float32)
        real = np.isfinite(values)
        values, chunks = values[real], chunks[real]
        if self.seen <= self.top.shape[1]:  # every value is here
            return TailValues(values, chunks, -math.inf)
        bound = float((self.floor / scale).astype(np.float32).max())
        above = values > bound
        return TailValues(values[above], chunks[above], bound)


def _negated(tail: TailValues) -> TailValues:
    return TailValues(-tail.values, tail.chunks, -tail.bound)


class _TensorStatistics:
    """One tensor over the pass: per-chunk extremes and tails, per channel for an ``x / s`` tensor (``stage``);
    ``equalized``: a stream tensor, whose channels share the tail."""

    def __init__(self, method: CalibrationMethod, stage: int | None, equalized: bool = False) -> None:
        self.method, self.stage, self.equalized = method, stage, equalized
        self.lows: list[np.ndarray] = []
        self.highs: list[np.ndarray] = []
        self.chunk: list[np.ndarray] | None = None
        self.first_low_abs: np.ndarray | None = None  # symmetric: min |x| of the first chunk (per channel)
        self.below: list[tuple[np.ndarray, np.ndarray]] = []  # symmetric: later |x| under it, with their channel
        self.total = 0
        self.tails: dict[str, _Tail | _ChannelTail] = {}
        self.deferred = False  # tails left to a second pass (over the memory budget)

    @property
    def scaled(self) -> bool:
        return self.stage is not None

    @property
    def cut(self) -> float:
        """Share of the values beyond the range on each side (symmetric: of |x|, on its one side)."""
        return (100.0 - self.method.percentile) / (100.0 if self.method.symmetric else 200.0)

    def extremes(self, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (``x / s`` tensors) or whole-tensor min and max of a batch."""
        if self.scaled:
            rows = value.reshape(value.shape[0], value.shape[1], -1)
            return rows.min(axis=2).min(axis=0), rows.max(axis=2).max(axis=0)
        return np.atleast_1d(value.min()), np.atleast_1d(value.max())

    def tail_bytes(self, value: np.ndarray, images: int, total_images: int) -> int:
        """Memory the tails of an ``x / s`` tensor will hold (value and chunk, per channel and side)."""
        if self.method.name != "percentile" or not self.scaled:
            return 0
        return 8 * (1 if self.method.symmetric else 2) * value.shape[1] * self._keep(value, images, total_images)

    def _keep(self, value: np.ndarray, images: int, total_images: int) -> int:
        """Values each tail keeps (per channel for x / s tensors); every value when that is most of them."""
        total = value.size // images * total_images
        channels = value.shape[1] if self.scaled else 1
        keep = math.floor(self.cut * total) + TAIL_MARGIN
        if self.equalized:
            keep = min(keep, max(CHANNEL_SHARE * math.ceil(keep / channels), 4 * TAIL_MARGIN))
        return math.ceil(total / channels) if keep * channels >= FULL_FRACTION * total else keep

    def observe(self, name: str, value: np.ndarray, extremes: tuple[np.ndarray, np.ndarray], images: int,
                total_images: int) -> None:
        low, high = extremes
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ConvNeXtExportError(f"calibration: tensor {name} is not finite on the calibration images "
                                      f"(NaN or inf); the FP32 graph is broken for these inputs")
        self.total += value.size
        self.chunk = [low, high] if self.chunk is None else [np.minimum(self.chunk[0], low),
                                                              np.maximum(self.chunk[1], high)]
        symmetric, chunk = self.method.symmetric, len(self.lows)
        absolute = np.abs(value) if symmetric else None
        if symmetric and chunk == 0:
            minimum = (absolute.reshape(value.shape[0], value.shape[1], -1).min(axis=2).min(axis=0) if self.scaled
                       else np.atleast_1d(absolute.min()))
            self.first_low_abs = minimum if self.first_low_abs is None else np.minimum(self.first_low_abs, minimum)
        if self.method.name != "percentile" or self.deferred:
            return
        if symmetric and chunk > 0:
            self._keep_below_first(absolute)
        if not self.tails:
            keep = self._keep(value, images, total_images)
            for side in ("abs",) if symmetric else ("high", "low"):
                self.tails[side] = _ChannelTail(keep, value.shape[1]) if self.scaled else _Tail(keep)
        sides = {"abs": (absolute, 1, np.maximum(-low, high))} if symmetric else {
            "high": (value, 1, high), "low": (value, -1, -low)}
        for side, (values, sign, top) in sides.items():
            self.tails[side].offer(values, sign, top, chunk)

    def _keep_below_first(self, absolute: np.ndarray) -> None:
        """Keep the |x| of later chunks below their channel's min |x| in the first chunk: ONNX Runtime's absolute
        histogram starts at the first chunk's min |x| and leaves out whatever later falls below it."""
        floor = (self.first_low_abs.reshape((1, -1) + (1,) * (absolute.ndim - 2)) if self.scaled
                 else self.first_low_abs[0])
        below = absolute < floor
        if below.any():
            index = np.flatnonzero(below)
            channels = ((index // int(np.prod(absolute.shape[2:], dtype=np.int64))) % absolute.shape[1]
                        if self.scaled else np.zeros(len(index), np.int64))
            self.below.append((absolute.reshape(-1)[index], channels))

    def end_chunk(self) -> None:
        if self.chunk is not None:
            self.lows.append(self.chunk[0])
            self.highs.append(self.chunk[1])
            self.chunk = None

    def range(self, scale: np.ndarray | None) -> tuple[float, float] | None:
        """(min, max) ONNX Runtime's calibrator gives this tensor (of ``x / scale``); None: collect it again."""
        divide = (lambda v: (v / scale).astype(np.float32)) if scale is not None else (lambda v: v)
        lows = [np.min(divide(low)) for low in self.lows]
        highs = [np.max(divide(high)) for high in self.highs]
        minimum, maximum = min(lows), max(highs)
        if self.method.name == "minmax":
            if self.method.symmetric:
                peak = max(abs(minimum), abs(maximum))
                return -float(peak), float(peak)
            return float(minimum), float(maximum)
        if self.deferred:
            return None
        if self.method.symmetric:
            grid = absolute_grid(np.min(divide(self.first_low_abs)),
                                 [max(abs(low), abs(high)) for low, high in zip(lows, highs)])
            tail = self.tails["abs"].final(scale)
            dropped = sum(int(np.count_nonzero((v if scale is None else (v / scale[c]).astype(np.float32))
                                               < grid.final[0])) for v, c in self.below)
            complete = len(tail.values) >= self.total
            found = percentile_bins(grid, self.total - dropped, tail, None, [self.method.percentile / 100.0],
                                    complete)
            if found is None:
                return None
            low, high = -grid.final[found[0]], grid.final[found[0]]
        else:
            grid = asymmetric_grid(lows, highs)
            high_tail = self.tails["high"].final(scale)
            low_tail = _negated(self.tails["low"].final(scale))
            complete = len(high_tail.values) + len(low_tail.values) >= self.total
            if complete:  # the two tails meet: together, every value once
                rest = low_tail.values <= high_tail.bound
                high_tail = TailValues(np.concatenate([high_tail.values, low_tail.values[rest]]),
                                       np.concatenate([high_tail.chunks, low_tail.chunks[rest]]), -math.inf)
                low_tail = None
            cut = (100.0 - self.method.percentile) / 200.0  # ONNX Runtime's percent_to_cut_one_side
            found = percentile_bins(grid, self.total, high_tail, low_tail, [cut, 1.0 - cut], complete)
            if found is None:
                return None
            low, high = grid.final[found[0]], grid.final[found[1]]
        return float(max(low, minimum)), float(min(high, maximum))


def _session(model: onnx.ModelProto, outputs: list[str]):
    import onnxruntime

    from ..backends.onnxruntime import session_options

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in outputs if t not in known)
    return onnxruntime.InferenceSession(probe.SerializeToString(), session_options(),
                                        providers=["CPUExecutionProvider"])


def _collect(model: onnx.ModelProto, tensors: list[str], stages: dict[str, int], streams: dict[int, list[str]],
             batches: list[np.ndarray], method: CalibrationMethod, progress: Progress, label: str
             ) -> tuple[dict[str, _TensorStatistics], dict[int, np.ndarray]]:
    """Run ``batches`` once; statistics per tensor (``stages``: the x / s tensors) and stream peaks per stage."""
    streams_of = {name: stage for stage, names in streams.items() for name in names}
    session = _session(model, tensors)
    feed = session.get_inputs()[0].name
    statistics = {name: _TensorStatistics(method, stages.get(name), name in streams_of) for name in tensors}
    peaks: dict[int, np.ndarray] = {}
    total_images, done = sum(len(batch) for batch in batches), 0

    def digest(outputs: dict[str, np.ndarray], images: int, first: bool, ends_chunk: bool) -> None:
        if first:
            _check_tail_budget(statistics, outputs, images, total_images)
        for name, value in outputs.items():
            item = statistics[name]
            extremes = item.extremes(value)
            if name in streams_of:
                peak, stage = np.maximum(-extremes[0], extremes[1]), streams_of[name]
                peaks[stage] = peak if stage not in peaks else np.maximum(peaks[stage], peak)
            item.observe(name, value, extremes, images, total_images)
        if ends_chunk:
            for item in statistics.values():
                item.end_chunk()

    progress(label, 0, total_images)
    for chunk in _chunks(batches):  # ONNX Runtime's calibrator took one chunk per collect_data call
        for index, batch in enumerate(chunk):
            outputs = dict(zip(tensors, session.run(tensors, {feed: batch})))
            digest(outputs, len(batch), done == 0, index == len(chunk) - 1)
            done += len(batch)
            progress(label, done, total_images)
    if done == 0:
        raise InputError("no calibration images to collect ranges from")
    return statistics, peaks


def _check_tail_budget(statistics: dict[str, _TensorStatistics], outputs: dict[str, np.ndarray], images: int,
                       total_images: int) -> None:
    """Leave ``x / s`` tensors to the second pass when their per-channel tails would not fit in the budget."""
    need = {name: statistics[name].tail_bytes(value, images, total_images) for name, value in outputs.items()}
    spent = 0
    for name in sorted(need, key=need.get):
        spent += need[name]
        if need[name] and spent > TAIL_BUDGET:
            statistics[name].deferred = True


def equalize_and_calibrate(model: onnx.ModelProto, batches: list[np.ndarray], method: CalibrationMethod,
                           check_images: np.ndarray, progress: Progress = lambda label, done, total: None,
                           log: Callable[[str], None] = lambda message: None
                           ) -> tuple[onnx.ModelProto, dict[int, np.ndarray], dict[str, tuple[float, float]]]:
    """(equalized graph, stream scales, ranges of its tensors), as ``stream_scales`` + ``apply_stream_scales`` +
    ``collect_ranges`` on the equalized graph give them, in one pass (minmax and percentile)."""
    if method.name not in ONE_PASS_METHODS:
        raise ValueError(f"{method.name}: one-pass calibration covers {', '.join(ONE_PASS_METHODS)}")
    streams = stage_streams(model)
    stages = scaled_tensors(model)
    tensors = calibrated_tensors(model)
    missing = [name for name in stages if name not in tensors]
    if missing:
        raise ConvNeXtExportError(f"residual-stream tensors {', '.join(missing[:3])} are not calibrated tensors")
    statistics, peaks = _collect(model, tensors, stages, streams, batches, method, progress,
                                 f"calibration: {method.name} ranges + stream scales")
    scales = scales_from_peaks(peaks)
    equalized = apply_stream_scales(model, scales, check_images)
    ranges: dict[str, tuple[float, float]] = {}
    again = []
    for name, item in statistics.items():
        found = item.range(None if item.stage is None else scales[item.stage])
        if found is None:
            again.append(name)
        else:
            ranges[name] = found
    if again:
        log(f"calibration: {len(again)} tensor(s) need a second pass of the equalized graph "
            f"({', '.join(again[:3])}{', ...' if len(again) > 3 else ''})")
        exact, _ = _collect(equalized, again, {}, {}, batches, method, progress, "calibration: second pass")
        for name, item in exact.items():
            found = item.range(None)
            if found is None:
                raise ConvNeXtExportError(f"calibration: the tails of {name} do not cover its percentile; "
                                          f"this is a bug, please report it")
            ranges[name] = found
    return equalized, scales, ranges
