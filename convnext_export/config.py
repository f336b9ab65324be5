"""ConvNeXt sizes: one frozen config per published variant, in one registry."""

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
    layer_scale_init: float = 1e-6
    norm_eps: float = 1e-6
    head_norm_eps: float = 1e-6

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
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ConvNeXtConfig":
        return cls(
            name=data["name"],
            depths=tuple(data["depths"]),
            dims=tuple(data["dims"]),
            num_classes=int(data["num_classes"]),
            layer_scale_init=float(data.get("layer_scale_init", 1e-6)),
            norm_eps=float(data.get("norm_eps", 1e-6)),
            head_norm_eps=float(data.get("head_norm_eps", 1e-6)),
        )


class UnknownSizeError(KeyError):
    """An unknown model size; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; this one reads as prose
        return str(self.args[0])


_SIZES: dict[str, Callable[[], ConvNeXtConfig]] = {}


def register_size(builder: Callable[[], ConvNeXtConfig]) -> Callable[[], ConvNeXtConfig]:
    """Register a size under its builder's name (``convnext_tiny`` -> ``tiny``)."""
    name = builder.__name__.removeprefix("convnext_")
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


def find_config(depths: tuple[int, ...], dims: tuple[int, ...]) -> ConvNeXtConfig | None:
    """The registered size with these depths and dims, if any."""
    for builder in _SIZES.values():
        config = builder()
        if config.depths == tuple(depths) and config.dims == tuple(dims):
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
