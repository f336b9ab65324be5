"""ConvNeXt sizes: one frozen config per published variant, in one registry.

A family is data here, not a second model: V1 (layer scale in every block) and V2 (Woo et al. 2023:
Global Response Normalization after the block's GELU, no layer scale) share the stem, downsampling,
block skeleton and head, so one ``ConvNeXtConfig`` with ``family`` switches the block.
V2 sizes are registered as ``v2-<size>`` (timm's ``convnextv2_<size>``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace


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


def register_size(builder: Callable[[], ConvNeXtConfig]) -> Callable[[], ConvNeXtConfig]:
    """Register a size under its builder's name (``convnext_tiny`` -> ``tiny``, ``convnextv2_tiny`` -> ``v2-tiny``)."""
    function = builder.__name__
    name = f"v2-{function.removeprefix('convnextv2_')}" if function.startswith("convnextv2_") else \
        function.removeprefix("convnext_")
    if builder().name != name:
        raise ValueError(f"size builder {function} makes a config named {builder().name!r}, not {name!r}")
    if name in _SIZES:
        raise ValueError(f"ConvNeXt size {name!r} is registered twice")
    _SIZES[name] = builder
    return builder


def size_names() -> list[str]:
    """Registered sizes, smallest first."""
    return list(_SIZES)


def get_config(size: str, num_classes: int | None = None) -> ConvNeXtConfig:
    try:
        config = _SIZES[size]()
    except KeyError:
        raise UnknownSizeError(
            f"unknown ConvNeXt size {size!r}; valid sizes: {', '.join(_SIZES)}"
        ) from None
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
