"""Evaluation preprocessing: resize the short side, center crop, normalize.

The steps and their rounding follow timm's and torchvision's eval transforms on PIL images,
so an artifact sees exactly what its weights were evaluated with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError(f"mean {list(self.mean)} and std {list(self.std)} must be finite numbers (no nan or inf)")

    @property
    def resize_size(self) -> int:
        """Short side before the crop (timm: floor(image_size / crop_pct))."""
        return int(math.floor(self.image_size / self.crop_pct + 1e-6))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        return cls(
            image_size=int(data["image_size"]),
            crop_pct=float(data["crop_pct"]),
            interpolation=str(data["interpolation"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
        )

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """RGB image of image_size x image_size, before normalization."""
        image = to_rgb(image)
        width, height = image.size
        size = self.resize_size
        if width <= height:
            new = (size, int(size * height / width))
        else:
            new = (int(size * width / height), size)
        image = image.resize(new, INTERPOLATIONS[self.interpolation])  # a no-op copy at equal size
        width, height = image.size
        top = int(round((height - self.image_size) / 2.0))
        left = int(round((width - self.image_size) / 2.0))
        return image.crop((left, top, left + self.image_size, top + self.image_size))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (..., H, W, 3) -> float32 (..., 3, H, W), normalized."""
        x = pixels.astype(np.float32) / np.float32(255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 (3, image_size, image_size)."""
        return self.normalize(np.asarray(self.resize_and_crop(image)))


# Modes Pillow gives single-channel images of more than 8 bits (16-bit PNG grey, 16/32-bit TIFF): convert("RGB")
# clips their values to 255, so they are scaled to 8 bits first.
WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def is_deep(image: Image.Image) -> bool:
    """Whether the file stores more than 8 bits per channel: a wide mode, or (48/64-bit RGB(A) PNG) a 16-bit
    raw mode Pillow decodes to 8 bits by keeping each value's high byte."""
    return image.mode in WIDE_MODES or any(";16" in str(tile.args) for tile in getattr(image, "tile", None) or ())


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB at 8 bits per channel; 16-bit grey scaled by 255/65535 (rounded) instead of clipped at 255."""
    if image.mode not in WIDE_MODES:
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"a {image.mode} image with values outside 0..65535 has no 8-bit form")
    return Image.fromarray(np.round(values * (255 / 65535)).astype(np.uint8), mode="L").convert("RGB")


# torchvision's ConvNeXt weights: resize 236 (tiny) / 230 (small) / 232 (base, large), bilinear.
TORCHVISION_RESIZE = {"tiny": 236, "small": 230, "base": 232, "large": 232}


def torchvision_preprocessing(size: str) -> Preprocessing:
    resize = TORCHVISION_RESIZE.get(size, 232)
    return Preprocessing(image_size=224, crop_pct=224 / resize, interpolation="bilinear")
