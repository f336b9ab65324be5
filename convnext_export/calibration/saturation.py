"""How x86 CPUs without VNNI compute ONNX Runtime's u8 x s8 integer convolutions, in numpy.

ONNX Runtime's MLAS kernels for AVX2 and AVX-512 BW multiply u8 activations by s8 weights with
``vpmaddubsw``: the products of two neighbouring reduction elements are added into a
*saturating* int16 before they are widened and accumulated in int32. VNNI (``vpdpbusd``) and
AMX accumulate every product in int32 exactly. The reduction runs over a conv's weights in
(kernel row, kernel column, input channel) order (ONNX Runtime's QLinearConv is NHWC), pairs
being elements (2p, 2p+1) of that order, zero-padded to an even length; activation codes enter
raw (0..255), the zero point is subtracted afterwards from the weight sums. Depthwise convs run
on other kernels that widen to int16 first and do not saturate.

This model of the kernels was checked against ONNX Runtime's AVX2 kernels running under
``qemu-x86_64 -cpu Haswell`` (tests/test_saturation.py): the same output codes, to the bit, for
1x1, 2x2/stride-2, 4x4/stride-4 (3 input channels) and padded 3x3 convs, and no saturation in
depthwise convs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
PAIR_LIMIT = 128  # 255 * 128 = 32640 <= 32767: a pair whose same-sign weights sum to at most this never saturates


def reduction_order(weights: np.ndarray, op_type: str, trans_b: bool = True) -> np.ndarray:
    """Weights as (outputs, K) in the kernel's reduction order: Conv (O, C, kh, kw) -> (O, kh*kw*C)."""
    if op_type == "Conv":
        return weights.transpose(0, 2, 3, 1).reshape(weights.shape[0], -1)
    if op_type == "Gemm":
        return weights if trans_b else weights.T
    raise ValueError(f"no u8 x s8 reduction order for {op_type}")


def from_reduction_order(matrix: np.ndarray, shape: tuple[int, ...], op_type: str, trans_b: bool = True) -> np.ndarray:
    """The inverse of ``reduction_order``."""
    if op_type == "Conv":
        out, channels, height, width = shape
        return matrix.reshape(out, height, width, channels).transpose(0, 3, 1, 2)
    return matrix if trans_b else matrix.T


def _even(matrix: np.ndarray, axis: int) -> np.ndarray:
    if matrix.shape[axis] % 2 == 0:
        return matrix
    pad = [(0, 0)] * matrix.ndim
    pad[axis] = (0, 1)
    return np.pad(matrix, pad)


def pair_sums(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(M, K/2, O) int32 sums a[2p] w[2p] + a[2p+1] w[2p+1] of u8 codes (M, K) and s8 weights (O, K)."""
    a = _even(np.asarray(codes, np.int32), 1).reshape(len(codes), -1, 2)
    w = _even(np.asarray(weights, np.int32), 1).reshape(len(weights), -1, 2)
    return np.einsum("mpj,opj->mpo", a, w)


CHUNK_ELEMENTS = 1 << 23  # pair sums materialized at once


def _pair_sum_chunks(codes: np.ndarray, weights: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """``pair_sums`` of the rows of ``codes`` a chunk at a time: (the chunk's rows, its (rows, K/2, O) sums)."""
    chunk = max(1, CHUNK_ELEMENTS // max(1, weights.shape[0] * ((weights.shape[1] + 1) // 2)))
    for start in range(0, len(codes), chunk):
        yield slice(start, start + chunk), pair_sums(codes[start:start + chunk], weights)


def u8s8_accumulate(codes: np.ndarray, weights: np.ndarray, zero_point: int, saturating: bool) -> np.ndarray:
    """The int32 accumulator sum_k (a_k - zero_point) w_k of a u8 x s8 kernel, saturating pairs (AVX2, AVX-512 BW)
    or exact (VNNI, AMX); ``codes`` (M, K) raw u8 codes, ``weights`` (O, K) int8 in reduction order."""
    out = np.empty((len(codes), len(weights)), np.int64)
    correction = zero_point * np.asarray(weights, np.int64).sum(1)
    for rows, sums in _pair_sum_chunks(codes, weights):
        if saturating:
            sums = np.clip(sums, INT16_MIN, INT16_MAX)
        out[rows] = sums.sum(1, dtype=np.int64) - correction
    return out


def saturation_stats(codes: np.ndarray, weights: np.ndarray, zero_point: int) -> tuple[float, float]:
    """(fraction of pair sums outside int16, relative L2 error saturation puts in the zero-point-corrected
    accumulator) of raw u8 ``codes`` (M, K) and int8 ``weights`` (O, K) in reduction order."""
    saturated = total = 0
    error = norm = 0.0
    correction = zero_point * np.asarray(weights, np.int64).sum(1)
    for _, sums in _pair_sum_chunks(codes, weights):
        clipped = np.clip(sums, INT16_MIN, INT16_MAX)
        saturated += int(np.count_nonzero(clipped != sums))
        total += sums.size
        exact = sums.sum(1, dtype=np.int64)
        error += float(((clipped.sum(1, dtype=np.int64) - exact).astype(np.float64) ** 2).sum())
        norm += float(((exact - correction).astype(np.float64) ** 2).sum())
    return saturated / max(total, 1), (error / max(norm, 1e-30)) ** 0.5


def unsafe_pairs(weights: np.ndarray) -> np.ndarray:
    """(O, K/2) bool: pairs whose same-sign weights can push a u8 x s8 pair sum past int16 for some input."""
    w = _even(np.asarray(weights, np.int32), 1).reshape(len(weights), -1, 2)
    positive = np.clip(w, 0, None).sum(2)
    negative = np.clip(-w, 0, None).sum(2)
    return (positive > PAIR_LIMIT) | (negative > PAIR_LIMIT)


def im2col(codes: np.ndarray, kernel: int, stride: int, pad: int, zero_point: int) -> np.ndarray:
    """u8 codes (N, C, H, W) -> (N*Ho*Wo, kernel*kernel*C) rows in reduction order, padded with the zero point."""
    n, c, h, w = codes.shape
    padded = np.pad(codes, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=zero_point)
    out_h, out_w = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
    cols = np.empty((n, out_h, out_w, kernel, kernel, c), codes.dtype)
    for i in range(kernel):
        for j in range(kernel):
            cols[:, :, :, i, j, :] = padded[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride].transpose(0, 2, 3, 1)
    return cols.reshape(n * out_h * out_w, kernel * kernel * c)
