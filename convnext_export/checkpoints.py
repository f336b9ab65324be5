"""Load a ConvNeXt V1 or V2 checkpoint from any of the published layouts onto ``model.ConvNeXt``.

V2 (GRN in every block, no layer scale) comes in the official (facebookresearch/ConvNeXt-V2), timm
and Hugging Face layouts; torchvision ships no V2. The family is read from the keys (any GRN key
means V2), then the same renames apply, plus the GRN ones:

    official      stages.i.j.grn.gamma / .beta (1, 1, 1, 4C)           (model.py's names)
    timm          stages.i.blocks.j.mlp.grn.weight / .bias (4C,)       -> grn.gamma / grn.beta, reshaped
    Hugging Face  convnextv2.encoder.stages.i.layers.j.grn.weight / .bias (1, 1, 1, 4C) -> grn.gamma / grn.beta

One job, one road: read the file safely -> unwrap training wrappers -> detect the layout from
key names -> rename (and reshape) onto the official names -> infer the size -> build and load.
Checkpoints are untrusted input: pickles are read with ``weights_only=True`` and a short
allow-list of harmless types, so a file that would run pickled code is refused, not executed.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from .artifact import file_sha256
from .config import ConvNeXtConfig, UnknownSizeError, find_config, get_config, size_names
from .errors import InputError
from .model import ConvNeXt, build_model

LAYOUTS = ("official", "timm", "torchvision", "huggingface")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".pth.tar", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"

ACCEPTED_CHECKPOINTS = ("--weights takes a checkpoint written by torch.save (.pth, .pt, .bin, .pth.tar, .ckpt) or "
                        "a .safetensors file, in the official, timm, torchvision or Hugging Face layout")

# Entries that hold the weights inside a training checkpoint, most preferred first. The plain
# model weights win over the EMA copy when both are present: they are what the training run
# evaluated and reported by default; a file holding only an EMA copy still loads.
WEIGHT_ENTRIES = ("model", "state_dict", "model_ema", "state_dict_ema")
# Prefixes written by wrappers: DataParallel/DDP (``module.``), Lightning (``model.``).
WRAPPER_PREFIXES = ("module.", "model.")

# Stem conv weight + first block's depthwise conv weight: together they identify a layout.
_LAYOUT_MARKERS = {
    "official": ("downsample_layers.0.0.weight", "stages.0.0.dwconv.weight"),
    "timm": ("stem.0.weight", "stages.0.blocks.0.conv_dw.weight"),
    "torchvision": ("features.0.0.weight", "features.1.0.block.0.weight"),
    "huggingface": ("embeddings.patch_embeddings.weight", "encoder.stages.0.layers.0.dwconv.weight"),
}
_HF_PREFIXES = ("convnext.", "convnextv2.")  # ConvNextForImageClassification / ConvNextV2ForImageClassification
_HF_HEAD_NORM_EPS = 1e-12  # transformers ConvNextConfig.layer_norm_eps default (final LayerNorm only)

_TIMM_PARTS = {"conv_dw": "dwconv", "norm": "norm", "mlp.fc1": "pwconv1", "mlp.fc2": "pwconv2", "gamma": "gamma",
               "mlp.grn.weight": "grn.gamma", "mlp.grn.bias": "grn.beta"}
_TV_PARTS = {"block.0": "dwconv", "block.2": "norm", "block.3": "pwconv1", "block.5": "pwconv2", "layer_scale": "gamma"}
_HF_PARTS = {
    "dwconv": "dwconv",
    "layernorm": "norm",
    "pwconv1": "pwconv1",
    "pwconv2": "pwconv2",
    "layer_scale_parameter": "gamma",
    "grn.weight": "grn.gamma",
    "grn.bias": "grn.beta",
}

_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _rules(*pairs: tuple[str, Callable[[re.Match[str]], str]]) -> list[_Rule]:
    return [(re.compile(pattern), rename) for pattern, rename in pairs]


# Key renames onto model.py's names (REFERENCE.md, "Checkpoint layouts"). Unmatched keys pass
# through unchanged, so they surface as unexpected keys in the fit check.
_RENAMES: dict[str, list[_Rule]] = {
    "official": [],
    "timm": _rules(
        (r"stem\.([01])\.(.+)", lambda m: f"downsample_layers.0.{m[1]}.{m[2]}"),
        (r"stages\.(\d+)\.downsample\.([01])\.(.+)", lambda m: f"downsample_layers.{m[1]}.{m[2]}.{m[3]}"),
        (
            r"stages\.(\d+)\.blocks\.(\d+)\.(conv_dw|norm|mlp\.fc1|mlp\.fc2|gamma|mlp\.grn\.weight|mlp\.grn\.bias)(.*)",
            lambda m: f"stages.{m[1]}.{m[2]}.{_TIMM_PARTS[m[3]]}{m[4]}",
        ),
        (r"head\.norm\.(.+)", lambda m: f"norm.{m[1]}"),
        (r"head\.fc\.(.+)", lambda m: f"head.{m[1]}"),
    ),
    # features.{2i} is stage i's downsample (i = 0: the stem), features.{2i+1} its blocks.
    "torchvision": _rules(
        (r"features\.(\d*[02468])\.([01])\.(.+)", lambda m: f"downsample_layers.{int(m[1]) // 2}.{m[2]}.{m[3]}"),
        (
            r"features\.(\d*[13579])\.(\d+)\.(block\.[0235]|layer_scale)(.*)",
            lambda m: f"stages.{int(m[1]) // 2}.{m[2]}.{_TV_PARTS[m[3]]}{m[4]}",
        ),
        (r"classifier\.0\.(.+)", lambda m: f"norm.{m[1]}"),
        (r"classifier\.2\.(.+)", lambda m: f"head.{m[1]}"),
    ),
    "huggingface": _rules(
        (r"(?:convnext(?:v2)?\.)?embeddings\.patch_embeddings\.(.+)", lambda m: f"downsample_layers.0.0.{m[1]}"),
        (r"(?:convnext(?:v2)?\.)?embeddings\.layernorm\.(.+)", lambda m: f"downsample_layers.0.1.{m[1]}"),
        (
            r"(?:convnext(?:v2)?\.)?encoder\.stages\.(\d+)\.downsampling_layer\.([01])\.(.+)",
            lambda m: f"downsample_layers.{m[1]}.{m[2]}.{m[3]}",
        ),
        (
            r"(?:convnext(?:v2)?\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\."
            r"(dwconv|layernorm|pwconv1|pwconv2|layer_scale_parameter|grn\.weight|grn\.bias)(.*)",
            lambda m: f"stages.{m[1]}.{m[2]}.{_HF_PARTS[m[3]]}{m[4]}",
        ),
        (r"(?:convnext(?:v2)?\.)?layernorm\.(.+)", lambda m: f"norm.{m[1]}"),
        (r"classifier\.(.+)", lambda m: f"head.{m[1]}"),
    ),
}


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: ConvNeXt  # eval mode, weights loaded, float32
    config: ConvNeXtConfig  # inferred from the weights
    layout: str  # one of LAYOUTS
    path: Path
    sha256: str  # of the file bytes


def load_checkpoint(path: str | Path, size: str | None = None, num_classes: int | None = None) -> LoadedCheckpoint:
    """Read, recognise and load a ConvNeXt V1 or V2 checkpoint; ``size``/``num_classes`` are checked, never forced."""
    path = Path(path)
    original = read_state_dict(path)
    try:
        layout = detect_layout(original)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    _check_finite(original, path)
    state_dict = to_official(original, layout)
    config = _infer_config(state_dict, path, layout, size, num_classes)
    model = build_model(config)
    _check_fit(model, state_dict, original, layout, path)
    model.load_state_dict(state_dict, strict=True)
    return LoadedCheckpoint(model.eval(), config, layout, path, file_sha256(path))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, read without executing code and unwrapped."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise InputError(
            f"checkpoint path {path} is a directory; pass the weights file inside it "
            f"(e.g. model.safetensors or pytorch_model.bin)"
        )
    if not path.is_file():  # a FIFO, socket or device: reading it could block forever
        raise InputError(f"{path} is not a regular file (a pipe, socket or device); {ACCEPTED_CHECKPOINTS}")
    name = path.name.lower()
    if name.endswith(PICKLE_SUFFIXES + (SAFETENSORS_SUFFIX,)):
        impostor = _recognised_non_checkpoint(path)
        if impostor is not None:
            kind = "safetensors" if name.endswith(SAFETENSORS_SUFFIX) else "PyTorch"
            raise InputError(f"{path} is not a {kind} checkpoint: it is {impostor}; {ACCEPTED_CHECKPOINTS}")
    if name.endswith(SAFETENSORS_SUFFIX):
        try:
            loaded: object = safetensors.torch.load_file(path, device="cpu")
        except Exception as error:
            raise InputError(
                f"cannot read {path} as a safetensors file ({_first_line(error)}): it is truncated or damaged; "
                f"download it again, or re-save the weights with "
                f"safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
            ) from None
    elif name.endswith(PICKLE_SUFFIXES):
        loaded = _torch_load(path)
    else:
        raise InputError(
            f"unsupported checkpoint file {path}: expected one of "
            f"{', '.join(PICKLE_SUFFIXES + (SAFETENSORS_SUFFIX,))}"
        )
    return _unwrap(loaded, path)


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which published layout the keys follow (V1 or V2 alike); other architectures are refused."""
    layout = _layout_or_none(state_dict)
    if layout is not None:
        return layout
    fcmae = _fcmae_key(state_dict)
    if fcmae is not None:
        raise InputError(
            f"this is a ConvNeXt V2 FCMAE pre-training checkpoint (key {fcmae!r}: the sparse encoder and the "
            f"masked-image decoder, no classifier head), not a model to deploy; export a fine-tuned ConvNeXt V2 "
            f"checkpoint instead (the official *_ft_*.pt files, timm's convnextv2_*.fcmae_ft_* weights, or your "
            f"own fine-tune of this encoder with a classifier head)"
        )
    sample = ", ".join(list(state_dict)[:6])
    raise InputError(
        f"not a ConvNeXt checkpoint: no {'/'.join(LAYOUTS)} layout keys found "
        f"(first keys: {sample}); expected e.g. {_LAYOUT_MARKERS['official'][0]!r} or "
        f"{_LAYOUT_MARKERS['timm'][0]!r}"
    )


def _fcmae_key(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """A key only FCMAE pre-training checkpoints have (facebookresearch/ConvNeXt-V2 models/fcmae.py)."""
    return next((key for key in state_dict if key in ("mask_token", "decoder.0.weight") or
                 (key.startswith("encoder.") and key.endswith(".kernel"))), None)


def detect_family(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``v2`` when any block carries GRN weights, else ``v1``."""
    return "v2" if any(".grn." in key or key.startswith("grn.") for key in state_dict) else "v1"


def to_official(state_dict: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Rename onto model.py's (official) names and reshape 1x1-conv MLP weights and (C,1,1) layer scales."""
    if layout not in _RENAMES:
        raise InputError(f"unknown checkpoint layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    renamed = {}
    for key, tensor in state_dict.items():
        new_key = _official_key(key, layout)
        renamed[new_key] = _official_shape(new_key, tensor)
    return renamed


def _safe_globals() -> list:
    """Harmless non-tensor types real checkpoints carry: training args and numpy scalars/dtypes.

    The numpy entries follow torch's weights_only notes (scalar, dtype, the DType classes);
    ``scalar`` is also registered under its numpy 1.x path for checkpoints saved with numpy 1.
    """
    scalar = np._core.multiarray.scalar
    dtype_classes = [
        getattr(np.dtypes, name)
        for name in dir(np.dtypes)
        if name.endswith("DType") and name not in ("ObjectDType", "VoidDType")
    ]
    return [argparse.Namespace, scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]


def _torch_load(path: Path) -> object:
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch names the refused global: "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose
        # module x is blocked"
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise InputError(
                f"refused to load {path}: it contains a pickled {refused[1]} object, and loading it "
                f"would execute pickled code. If you trust the file, re-save only its weights, "
                f"e.g. torch.save(model.state_dict(), 'weights.pth'), or convert it to .safetensors"
            ) from None
        # torch's own advice (retry with weights_only=False) is exactly what a user should not do;
        # keep only its diagnosis.
        detail = str(error).partition("WeightsUnpickler error:")[2].strip() or _first_line(error)
        raise InputError(
            f"cannot read {path} as a PyTorch checkpoint ({type(error).__name__}: {_first_line(detail)}): it is "
            f"truncated, damaged or not written by torch.save; download it again, or re-save the weights with "
            f"torch.save(model.state_dict(), 'weights.pth')"
        ) from None


def _recognised_non_checkpoint(path: Path) -> str | None:
    """What a would-be checkpoint plainly is instead (empty, a Git LFS pointer, an HTML page, text), else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError:
        return None
    if not head:
        return "an empty file"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (run git lfs pull, or download the file itself)"
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a failed or redirected download?)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None  # binary: let the reader say what is wrong with it
    if all(char.isprintable() or char.isspace() for char in text):
        return f"a text file (it starts with {text.strip()[:40]!r})"
    return None


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """Descend into ``model``/``state_dict``/EMA entries, keep tensors, strip wrapper prefixes."""
    for _ in range(3):  # e.g. {"state_dict": {"model": sd}} at most a couple of levels deep
        if not isinstance(loaded, Mapping):
            break
        inner = next((loaded[key] for key in WEIGHT_ENTRIES if isinstance(loaded.get(key), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping):
        raise InputError(f"{path} holds a {type(loaded).__name__}, not a state dict (a mapping of names to tensors)")
    tensors = {str(key): value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        entries = ", ".join(map(str, list(loaded)[:8])) or "none"
        raise InputError(
            f"no weight tensors found in {path} (entries: {entries}); expected a state dict or "
            f"one under {'/'.join(repr(key) for key in WEIGHT_ENTRIES)}"
        )
    return _strip_wrapper_prefixes(tensors)


def _strip_wrapper_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.``/``model.`` while every key has it; a partial ``model.`` prefix (a Lightning
    module holding other tensors beside its model) keeps only the model's tensors."""
    while True:
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in tensors):
                tensors = {key.removeprefix(prefix): value for key, value in tensors.items()}
                break
        else:
            break
    if _layout_or_none(tensors) is None and any(key.startswith("model.") for key in tensors):
        tensors = {key.removeprefix("model."): value for key, value in tensors.items() if key.startswith("model.")}
    return tensors


def _layout_or_none(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    keys = {_strip_hf_prefix(key) for key in state_dict}
    return next((layout for layout, markers in _LAYOUT_MARKERS.items() if all(m in keys for m in markers)), None)


def _strip_hf_prefix(key: str) -> str:
    for prefix in _HF_PREFIXES:
        if key.startswith(prefix):
            return key.removeprefix(prefix)
    return key


def _official_key(key: str, layout: str) -> str:
    for pattern, rename in _RENAMES[layout]:
        match = pattern.fullmatch(key)
        if match:
            return rename(match)
    return key


def _official_shape(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """timm conv_mlp fc weights (4C,C,1,1) -> Linear (4C,C); torchvision layer scale (C,1,1) -> (C,);
    timm GRN weight/bias (4C,) -> the official (1,1,1,4C)."""
    if re.search(r"\.pwconv[12]\.weight$", key) and tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
        return tensor.flatten(1)
    if re.search(r"\.grn\.(gamma|beta)$", key) and tensor.ndim == 1:
        return tensor.view(1, 1, 1, -1)
    if key.endswith(".gamma") and tensor.ndim > 1 and all(size == 1 for size in tensor.shape[1:]):
        return tensor.flatten()
    return tensor


def _infer_config(
    state_dict: Mapping[str, torch.Tensor], path: Path, layout: str, size: str | None, num_classes: int | None
) -> ConvNeXtConfig:
    blocks: dict[int, dict[int, int]] = {}  # stage -> block -> channels
    for key, tensor in state_dict.items():
        match = re.fullmatch(r"stages\.(\d+)\.(\d+)\.dwconv\.weight", key)
        if match:
            blocks.setdefault(int(match[1]), {})[int(match[2])] = tensor.shape[0]
    depths = tuple(len(blocks.get(stage, {})) for stage in range(4))
    dims = tuple(min(blocks[stage].items())[1] if blocks.get(stage) else 0 for stage in range(4))
    family = detect_family(state_dict)
    found = find_config(depths, dims, family)
    if found is None:
        known = "; ".join(f"{c.name} {list(c.depths)}/{list(c.dims)}" for c in map(get_config, size_names())
                          if c.family == family)
        raise InputError(
            f"{path} ({layout} layout, ConvNeXt {family.upper()}) has depths {list(depths)} and dims {list(dims)}, "
            f"which match no known ConvNeXt {family.upper()} size; valid sizes (depths/dims): {known}"
        )
    if size is not None:
        try:
            requested = get_config(size)
        except UnknownSizeError as error:
            raise InputError(str(error)) from None
        if requested.name != found.name:
            other = (f": it is a ConvNeXt {found.family.upper()} checkpoint (GRN keys "
                     f"{'present' if found.family == 'v2' else 'absent'}), and --size {size} is ConvNeXt "
                     f"{requested.family.upper()}") if requested.family != found.family else ""
            raise InputError(
                f"size {size!r} was requested, but {path} holds a {found.title} "
                f"(depths {list(found.depths)}, dims {list(found.dims)}){other}; use size {found.name!r} or leave it out"
            )
    head = state_dict.get("head.weight")
    if head is None or head.ndim != 2:
        fcmae = (" It looks like an FCMAE pre-training checkpoint (a ConvNeXt V2 encoder without a head): "
                 "export a fine-tuned checkpoint (timm's convnextv2_*.fcmae_ft_* weights, or fine-tune it with "
                 "a classifier head first)") if family == "v2" else ""
        raise InputError(
            f"{path} ({layout} layout, ConvNeXt {family.upper()}) has no classifier head (expected "
            f"{_original_head_key(layout)!r}); this tool exports image classifiers.{fcmae}"
        )
    classes = head.shape[0]
    if num_classes is not None and num_classes != classes:
        raise InputError(
            f"{num_classes} classes were requested, but the checkpoint {path} has {classes} classes "
            f"(head {tuple(head.shape)}); use {classes} or leave the number of classes out"
        )
    config = found.with_classes(classes)
    return replace(config, head_norm_eps=_hf_head_norm_eps(path)) if layout == "huggingface" else config


def _hf_head_norm_eps(path: Path) -> float:
    """``layer_norm_eps`` from the ``config.json`` a Hugging Face save puts beside the weights, else its default."""
    config_file = path.parent / "config.json"
    if not config_file.is_file():
        return _HF_HEAD_NORM_EPS
    try:
        return float(json.loads(config_file.read_text()).get("layer_norm_eps", _HF_HEAD_NORM_EPS))
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise InputError(f"{config_file}: cannot read layer_norm_eps beside the checkpoint ({error})") from None


def _original_head_key(layout: str) -> str:
    return {"official": "head.weight", "timm": "head.fc.weight", "torchvision": "classifier.2.weight"}.get(
        layout, "classifier.weight"
    )


def _check_fit(
    model: ConvNeXt,
    state_dict: Mapping[str, torch.Tensor],
    original: Mapping[str, torch.Tensor],
    layout: str,
    path: Path,
) -> None:
    """Compare names and shapes ourselves so torch's load_state_dict error never reaches the user."""
    expected = model.state_dict()
    source = {_official_key(key, layout): key for key in original}

    def named(key: str) -> str:
        return key if source.get(key, key) == key else f"{key} (from {source[key]})"

    missing = [key for key in expected if key not in state_dict]
    unexpected = [named(key) for key in state_dict if key not in expected]
    misshaped = [
        f"{named(key)}: checkpoint {tuple(tensor.shape)}, model {tuple(expected[key].shape)}"
        for key, tensor in state_dict.items()
        if key in expected and tensor.shape != expected[key].shape
    ]
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped))
        if items
    ]
    if problems:
        raise InputError(
            f"{path} was recognised as the {layout} layout of a {model.config.title} but does not fit it "
            f"(names are model.py's official names): " + "; ".join(problems)
        )


def _check_finite(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity, naming the first tensors that do: the export would be garbage."""
    bad = [f"{key} ({int((~torch.isfinite(tensor)).sum())} of {tensor.numel()})" for key, tensor in state_dict.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise InputError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinity: {', '.join(bad[:5])}"
                         f"{', ...' if len(bad) > 5 else ''}; the training run that wrote them diverged or the file "
                         f"is damaged: use an earlier checkpoint or download it again")


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"
