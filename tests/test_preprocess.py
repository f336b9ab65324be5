"""Preprocessing against the same steps written with torchvision's transforms, on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from convnext_export.preprocess import Preprocessing, torchvision_preprocessing

PRESETS = {
    "bicubic-0.875": Preprocessing(image_size=224, crop_pct=0.875, interpolation="bicubic"),
    "bilinear-224/236": torchvision_preprocessing("tiny"),
}


def torchvision_reference(preprocessing: Preprocessing) -> transforms.Compose:
    interpolation = {
        "bicubic": transforms.InterpolationMode.BICUBIC,
        "bilinear": transforms.InterpolationMode.BILINEAR,
    }[preprocessing.interpolation]
    return transforms.Compose(
        [
            transforms.Lambda(lambda image: image.convert("RGB")),  # as torchvision's ImageFolder loader
            transforms.Resize(preprocessing.resize_size, interpolation=interpolation),
            transforms.CenterCrop(preprocessing.image_size),
            transforms.ToTensor(),
            transforms.Normalize(preprocessing.mean, preprocessing.std),
        ]
    )


@pytest.fixture(scope="module")
def real_images(shared_data: Path) -> dict[str, Image.Image]:
    """ImageNet samples of several sizes and modes (grey ones included), a CIFAR image, RGBA and palette images."""
    folder = shared_data / "imagenet-samples"
    files = sorted(folder.glob("*.JPEG"))
    chosen = files[:3]
    chosen += [f for f in files if Image.open(f).mode != "RGB"][:2]  # the grey samples, if any
    images = {f.name: Image.open(f) for f in chosen}
    for image in images.values():
        image.load()
    cifar = Image.open(shared_data / "cifar10" / "test" / "cat" / "0000.jpg")
    cifar.load()
    images["cifar-cat"] = cifar
    base = images[chosen[0].name]
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    images["rgba"] = rgba
    images["palette"] = base.resize((301, 199)).convert("P", palette=Image.Palette.ADAPTIVE)
    images["grey-made"] = base.resize((180, 420)).convert("L")
    # Long side 263 (bicubic) / 243 (bilinear): a crop offset of x.5 with x odd, where rounding and flooring differ.
    images["odd-offset-wide"] = base.resize((103, 100))
    images["odd-offset-tall"] = base.resize((100, 103))
    return images


def test_the_chosen_images_cover_sizes_and_modes(real_images: dict[str, Image.Image]) -> None:
    modes = {image.mode for image in real_images.values()}
    assert {"RGB", "RGBA", "P", "L"} <= modes
    assert len({image.size for image in real_images.values()}) >= 5


@pytest.mark.parametrize("preset", PRESETS)
def test_matches_torchvision_transforms(preset: str, real_images: dict[str, Image.Image]) -> None:
    preprocessing = PRESETS[preset]
    reference = torchvision_reference(preprocessing)
    for name, image in real_images.items():
        ours = preprocessing(image)
        expected = reference(image).numpy()
        assert ours.dtype == np.float32 and ours.shape == (3, 224, 224), name
        assert np.abs(ours - expected).max() <= 1e-5, name


def test_torchvision_presets() -> None:
    assert torchvision_preprocessing("tiny").resize_size == 236
    assert Preprocessing().resize_size == 256
