"""ConvNeXt sizes: one frozen config per published variant, in one registry, under its own name (``tiny``,
``v2-tiny``) and timm's (``convnext_tiny``, ``convnextv2_tiny``), with timm's pretrained tags
(``convnext_tiny.fb_in1k``) and their preprocessing.

A family is data here, not a second model: V1 (layer scale in every block) and V2 (Woo et al. 2023:
Global Response Normalization after the block's GELU, no layer scale) share the stem, downsampling,
block skeleton and head, so one ``ConvNeXtConfig`` with ``family`` switches the block.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, replace

from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing


@dataclass(frozen=True)
class ConvNeXtConfig:
    """Architecture of one ConvNeXt: everything needed to rebuild it, nothing else."""

    name: str
    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    num_classes: int = 1000
    layer_scale_init: float | None = 1e-6  # None: no layer scale (V2)
    norm_eps: float = 1e-6
    head_norm_eps: float = 1e-6
    family: str = "v1"  # "v1" | "v2"
    grn_eps: float = 1e-6  # V2: GRN's N = G / (mean_c G + eps)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown ConvNeXt family {self.family!r}; valid families: {', '.join(FAMILIES)}")
        if (self.family == "v2") != (self.layer_scale_init is None):
            raise ValueError("ConvNeXt V2 has no layer scale (layer_scale_init=None); V1 has one")

    @property
    def uses_grn(self) -> bool:
        return self.family == "v2"

    @property
    def title(self) -> str:
        """How papers and timm name it: ConvNeXt-T, ConvNeXt-V2-atto."""
        return f"ConvNeXt-V2-{self.size}" if self.family == "v2" else f"ConvNeXt-{self.size}"

    @property
    def size(self) -> str:
        """The size without the family: ``v2-tiny`` -> ``tiny``."""
        return self.name.removeprefix("v2-")

    def with_classes(self, num_classes: int) -> "ConvNeXtConfig":
        return replace(self, num_classes=num_classes)

    @property
    def num_blocks(self) -> int:
        return sum(self.depths)

    @property
    def num_layernorms(self) -> int:
        """Stem + 3 downsample + one per block + head."""
        return 1 + 3 + self.num_blocks + 1

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "depths": list(self.depths),
            "dims": list(self.dims),
            "num_classes": self.num_classes,
            "layer_scale_init": self.layer_scale_init,
            "norm_eps": self.norm_eps,
            "head_norm_eps": self.head_norm_eps,
            "family": self.family,
            **({"grn_eps": self.grn_eps} if self.uses_grn else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ConvNeXtConfig":
        family = data.get("family", "v1")  # manifests before V2 are V1
        layer_scale = data.get("layer_scale_init", 1e-6 if family == "v1" else None)
        return cls(
            name=data["name"],
            depths=tuple(data["depths"]),
            dims=tuple(data["dims"]),
            num_classes=int(data["num_classes"]),
            layer_scale_init=None if layer_scale is None else float(layer_scale),
            norm_eps=float(data.get("norm_eps", 1e-6)),
            head_norm_eps=float(data.get("head_norm_eps", 1e-6)),
            family=family,
            grn_eps=float(data.get("grn_eps", 1e-6)),
        )


FAMILIES = ("v1", "v2")


class UnknownSizeError(KeyError):
    """An unknown model size; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; this one reads as prose
        return str(self.args[0])


_SIZES: dict[str, Callable[[], ConvNeXtConfig]] = {}
_TIMM_NAMES: dict[str, str] = {}  # timm architecture name -> registered size


def register_size(builder: Callable[[], ConvNeXtConfig]) -> Callable[[], ConvNeXtConfig]:
    """Register a size under its builder's name, which is timm's architecture name (``convnext_tiny`` -> ``tiny``,
    ``convnextv2_tiny`` -> ``v2-tiny``); timm's name resolves to it too."""
    function = builder.__name__
    name = f"v2-{function.removeprefix('convnextv2_')}" if function.startswith("convnextv2_") else \
        function.removeprefix("convnext_")
    if builder().name != name:
        raise ValueError(f"size builder {function} makes a config named {builder().name!r}, not {name!r}")
    if name in _SIZES:
        raise ValueError(f"ConvNeXt size {name!r} is registered twice")
    _SIZES[name] = builder
    _TIMM_NAMES[builder.__name__] = name
    return builder


def size_names() -> list[str]:
    """Registered sizes, smallest first."""
    return list(_SIZES)


def timm_names() -> list[str]:
    """timm's architecture names of the registered sizes (``convnext_atto`` ...)."""
    return list(_TIMM_NAMES)


@dataclass(frozen=True)
class PretrainedConfig:
    """What a timm pretrained tag evaluates with (its ``pretrained_cfg``): input size, crop, interpolation,
    mean/std, classes. Recorded from timm/models/convnext.py ``default_cfgs`` (timm 1.0.31), not read from timm."""

    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.image_size, self.crop_pct, self.interpolation, self.mean, self.std)


@dataclass(frozen=True)
class ModelName:
    """What a ``--size`` names: a registered size and, for a pretrained tag, the tag and its preprocessing."""

    size: str
    tag: str | None = None
    pretrained: PretrainedConfig | None = None

    @property
    def timm_name(self) -> str:
        architecture = next(timm for timm, size in _TIMM_NAMES.items() if size == self.size)
        return f"{architecture}.{self.tag}" if self.tag else architecture


def resolve_model_name(name: str) -> ModelName:
    """``tiny``, ``convnext_tiny`` or ``convnext_tiny.fb_in1k`` -> the registered size (and the tag's config);
    an unknown name lists the close matches."""
    architecture, dot, tag = name.partition(".")
    size = architecture if architecture in _SIZES else _TIMM_NAMES.get(architecture)
    if size is None:
        close = difflib.get_close_matches(name, [*_SIZES, *_TIMM_NAMES, *PRETRAINED], n=4, cutoff=0.6)
        raise UnknownSizeError(
            f"unknown ConvNeXt size {name!r}" + (f"; close matches: {', '.join(close)}" if close else "")
            + f"; valid sizes: {', '.join(_SIZES)}, or timm's names ({', '.join(_TIMM_NAMES)}), with a pretrained "
              f"tag such as convnext_tiny.fb_in1k (see --help)")
    if not dot:
        return ModelName(size)
    full = f"{next(t for t, s in _TIMM_NAMES.items() if s == size)}.{tag}"
    if full in PRETRAINED:
        return ModelName(size, tag, PRETRAINED[full])
    tags = [known.partition(".")[2] for known in PRETRAINED if known.partition(".")[0] == full.partition(".")[0]]
    if tag in HEADLESS_TAGS:
        example = f"{full.partition('.')[0]}.{tags[0]}" if tags else "a fine-tuned checkpoint"
        raise UnknownSizeError(f"{name!r} is a headless feature extractor or pre-training encoder (no classifier): "
                               f"this tool exports image classifiers; pick a tag with a head, e.g. {example}")
    close = difflib.get_close_matches(tag, tags, n=4, cutoff=0.5)
    raise UnknownSizeError(
        f"unknown pretrained tag {tag!r} for {full.partition('.')[0]}"
        + (f"; close matches: {', '.join(close)}" if close else "")
        + (f"; its tags: {', '.join(tags)}" if tags else "; timm publishes no tags for it"))


def get_config(size: str, num_classes: int | None = None) -> ConvNeXtConfig:
    """The config a size names (any form ``resolve_model_name`` takes); a pretrained tag sets the classes."""
    name = resolve_model_name(size)
    config = _SIZES[name.size]()
    if num_classes is None and name.pretrained is not None:
        num_classes = name.pretrained.num_classes
    return config if num_classes is None else config.with_classes(num_classes)


def find_config(depths: tuple[int, ...], dims: tuple[int, ...], family: str = "v1") -> ConvNeXtConfig | None:
    """The registered size of ``family`` with these depths and dims, if any."""
    for builder in _SIZES.values():
        config = builder()
        if config.family == family and config.depths == tuple(depths) and config.dims == tuple(dims):
            return config
    return None


# atto..nano as in timm (conv_mlp variants), tiny..xlarge as in the paper.
@register_size
def convnext_atto() -> ConvNeXtConfig:
    return ConvNeXtConfig("atto", (2, 2, 6, 2), (40, 80, 160, 320))


@register_size
def convnext_femto() -> ConvNeXtConfig:
    return ConvNeXtConfig("femto", (2, 2, 6, 2), (48, 96, 192, 384))


@register_size
def convnext_pico() -> ConvNeXtConfig:
    return ConvNeXtConfig("pico", (2, 2, 6, 2), (64, 128, 256, 512))


@register_size
def convnext_nano() -> ConvNeXtConfig:
    return ConvNeXtConfig("nano", (2, 2, 8, 2), (80, 160, 320, 640))


@register_size
def convnext_tiny() -> ConvNeXtConfig:
    return ConvNeXtConfig("tiny", (3, 3, 9, 3), (96, 192, 384, 768))


@register_size
def convnext_small() -> ConvNeXtConfig:
    return ConvNeXtConfig("small", (3, 3, 27, 3), (96, 192, 384, 768))


@register_size
def convnext_base() -> ConvNeXtConfig:
    return ConvNeXtConfig("base", (3, 3, 27, 3), (128, 256, 512, 1024))


@register_size
def convnext_large() -> ConvNeXtConfig:
    return ConvNeXtConfig("large", (3, 3, 27, 3), (192, 384, 768, 1536))


@register_size
def convnext_xlarge() -> ConvNeXtConfig:
    return ConvNeXtConfig("xlarge", (3, 3, 27, 3), (256, 512, 1024, 2048))


# timm's pretrained tags for the registered sizes, from timm/models/convnext.py ``default_cfgs`` (timm 1.0.31;
# tests/test_model_names.py checks every entry against the installed timm). All are on the Hugging Face Hub as
# ``timm/<name>``. timm evaluates at ``input_size`` (its ``test_input_size`` is an opt-in), as recorded here.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_IN22K, _IN12K, _CLIP = 21841, 11821, 640  # classes of the ImageNet-22k, -12k and CLIP-embedding heads


def _clip(image_size: int, num_classes: int = 1000) -> PretrainedConfig:
    return PretrainedConfig(image_size, 1.0, mean=_CLIP_MEAN, std=_CLIP_STD, num_classes=num_classes)


PRETRAINED: dict[str, PretrainedConfig] = {
    "convnext_atto.d2_in1k": PretrainedConfig(),
    "convnext_femto.d1_in1k": PretrainedConfig(),
    "convnext_pico.d1_in1k": PretrainedConfig(),
    "convnext_nano.d1h_in1k": PretrainedConfig(crop_pct=0.95),
    "convnext_nano.in12k_ft_in1k": PretrainedConfig(crop_pct=0.95),
    "convnext_nano.in12k": PretrainedConfig(crop_pct=0.95, num_classes=_IN12K),
    "convnext_nano.r384_in12k_ft_in1k": PretrainedConfig(384, 1.0),
    "convnext_nano.r384_in12k": PretrainedConfig(384, 1.0, num_classes=_IN12K),
    "convnext_nano.r384_ad_in12k": PretrainedConfig(384, 1.0, num_classes=_IN12K),
    **{f"convnext_{size}.{tag}": config for size in ("tiny", "small", "base", "large") for tag, config in {
        "fb_in1k": PretrainedConfig(),
        "fb_in22k_ft_in1k": PretrainedConfig(),
        "fb_in22k_ft_in1k_384": PretrainedConfig(384, 1.0),
        "fb_in22k": PretrainedConfig(num_classes=_IN22K),
    }.items()},
    **{f"convnext_{size}.{tag}": config for size in ("tiny", "small") for tag, config in {
        "in12k_ft_in1k": PretrainedConfig(crop_pct=0.95),
        "in12k_ft_in1k_384": PretrainedConfig(384, 1.0),
        "in12k": PretrainedConfig(crop_pct=0.95, num_classes=_IN12K),
    }.items()},
    "convnext_base.clip_laion2b_augreg_ft_in12k_in1k": _clip(256),
    "convnext_base.clip_laion2b_augreg_ft_in12k_in1k_384": _clip(384),
    "convnext_base.clip_laion2b_augreg_ft_in1k": _clip(256),
    "convnext_base.clip_laiona_augreg_ft_in1k_384": _clip(384),
    "convnext_base.clip_laion2b_augreg_ft_in12k": _clip(256, _IN12K),
    "convnext_base.clip_laion2b": _clip(256, _CLIP),
    "convnext_base.clip_laion2b_augreg": _clip(256, _CLIP),
    "convnext_base.clip_laiona": _clip(256, _CLIP),
    "convnext_base.clip_laiona_320": _clip(320, _CLIP),
    "convnext_base.clip_laiona_augreg_320": _clip(320, _CLIP),
    "convnext_xlarge.fb_in22k_ft_in1k": PretrainedConfig(),
    "convnext_xlarge.fb_in22k_ft_in1k_384": PretrainedConfig(384, 1.0),
    "convnext_xlarge.fb_in22k": PretrainedConfig(num_classes=_IN22K),
}
# Tags without a classifier head (timm's num_classes 0), refused by name: timm's feature extractors (dinov3,
# eupe) and V2's FCMAE pre-training encoder (fcmae).
HEADLESS_TAGS = ("dinov3_lvd1689m", "eupe_lvd1689m", "fcmae")


def _v2_tags(size: str, tags: tuple[str, ...]) -> dict[str, PretrainedConfig]:
    """timm's convnextv2_<size> fine-tuned tags (``fcmae`` alone is the headless pre-training encoder)."""
    configs = {"fcmae_ft_in1k": PretrainedConfig(), "fcmae_ft_in22k_in1k": PretrainedConfig(),
               "fcmae_ft_in22k_in1k_384": PretrainedConfig(384, 1.0),
               "fcmae_ft_in22k_in1k_512": PretrainedConfig(512, 1.0)}
    return {f"convnextv2_{size}.{tag}": configs[tag] for tag in tags}


PRETRAINED.update({
    **_v2_tags("atto", ("fcmae_ft_in1k",)), **_v2_tags("femto", ("fcmae_ft_in1k",)),
    **_v2_tags("pico", ("fcmae_ft_in1k",)),
    **{key: value for size in ("nano", "tiny", "base", "large") for key, value in
       _v2_tags(size, ("fcmae_ft_in1k", "fcmae_ft_in22k_in1k", "fcmae_ft_in22k_in1k_384")).items()},
    **_v2_tags("huge", ("fcmae_ft_in1k", "fcmae_ft_in22k_in1k_384", "fcmae_ft_in22k_in1k_512")),
})


# ConvNeXt V2 (timm convnextv2_*, facebookresearch/ConvNeXt-V2): GRN, no layer scale. small is timm's only.
def _v2(name: str, depths: tuple[int, int, int, int], dims: tuple[int, int, int, int]) -> ConvNeXtConfig:
    return ConvNeXtConfig(f"v2-{name}", depths, dims, layer_scale_init=None, family="v2")


@register_size
def convnextv2_atto() -> ConvNeXtConfig:
    return _v2("atto", (2, 2, 6, 2), (40, 80, 160, 320))


@register_size
def convnextv2_femto() -> ConvNeXtConfig:
    return _v2("femto", (2, 2, 6, 2), (48, 96, 192, 384))


@register_size
def convnextv2_pico() -> ConvNeXtConfig:
    return _v2("pico", (2, 2, 6, 2), (64, 128, 256, 512))


@register_size
def convnextv2_nano() -> ConvNeXtConfig:
    return _v2("nano", (2, 2, 8, 2), (80, 160, 320, 640))


@register_size
def convnextv2_tiny() -> ConvNeXtConfig:
    return _v2("tiny", (3, 3, 9, 3), (96, 192, 384, 768))


@register_size
def convnextv2_small() -> ConvNeXtConfig:
    return _v2("small", (3, 3, 27, 3), (96, 192, 384, 768))


@register_size
def convnextv2_base() -> ConvNeXtConfig:
    return _v2("base", (3, 3, 27, 3), (128, 256, 512, 1024))


@register_size
def convnextv2_large() -> ConvNeXtConfig:
    return _v2("large", (3, 3, 27, 3), (192, 384, 768, 1536))


@register_size
def convnextv2_huge() -> ConvNeXtConfig:
    return _v2("huge", (3, 3, 27, 3), (352, 704, 1408, 2816))
