"""Every dataset form on small real files: labels, subsets, arrays, skipped files, errors."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convnext_export.datasets import SkippedFilesWarning, open_dataset
from convnext_export.errors import InputError
from convnext_export.preprocess import Preprocessing

CIFAR = Preprocessing(image_size=32, crop_pct=1.0)
SMALL = Preprocessing(image_size=64, crop_pct=0.875)
CLASSES = ["airplane", "bird", "cat"]


def collect(dataset, batch_size: int = 5) -> tuple[np.ndarray, np.ndarray | None]:
    batches = list(dataset.batches(batch_size))
    assert all(len(b.images) <= batch_size for b in batches)
    images = np.concatenate([b.images for b in batches])
    labels = None if batches[0].labels is None else np.concatenate([b.labels for b in batches])
    return images, labels


def reference_images(files: list[Path], preprocessing: Preprocessing) -> np.ndarray:
    return np.stack([preprocessing(Image.open(f)) for f in files])


@pytest.fixture
def cifar_tree(shared_data: Path, tmp_path: Path) -> Path:
    """3 classes x 4 real CIFAR-10 JPEGs, copied (class folders written out of sorted order)."""
    root = tmp_path / "cifar"
    for name in reversed(CLASSES):
        (root / name).mkdir(parents=True)
        for source in sorted((shared_data / "cifar10" / "test" / name).glob("*.jpg"))[:4]:
            shutil.copy(source, root / name / source.name)
    return root


@pytest.fixture
def imagenet_folder(shared_data: Path, tmp_path: Path) -> Path:
    """6 real ImageNet samples (every 30th, grey ones possible) and the synset list."""
    source = shared_data / "imagenet-samples"
    root = tmp_path / "imagenet"
    root.mkdir()
    for file in sorted(source.glob("*.JPEG"))[::30][:6]:
        shutil.copy(file, root / file.name)
    shutil.copy(source / "synsets.txt", root / "synsets.txt")
    return root


@pytest.fixture
def made_folder(tmp_path: Path) -> Path:
    """Unlabeled images of several sizes and modes, made with Pillow."""
    root = tmp_path / "made"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, (mode, size, ext) in enumerate(
        [("RGB", (90, 70), "png"), ("L", (64, 64), "jpg"), ("RGBA", (50, 120), "png"), ("P", (80, 80), "gif"),
         ("RGB", (100, 100), "bmp"), ("RGB", (77, 66), "webp"), ("RGB", (70, 90), "tiff")]
    ):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(root / f"image{i}.{ext}")
    return root


def test_class_folders(cifar_tree: Path) -> None:
    dataset = open_dataset(cifar_tree, CIFAR)
    assert dataset.kind == "class-folders" and dataset.classes == CLASSES and len(dataset) == 12
    images, labels = collect(dataset)
    files = dataset.files()
    assert labels.dtype == np.int64
    assert labels.tolist() == [CLASSES.index(f.parent.name) for f in files]
    assert images.dtype == np.float32 and images.shape == (12, 3, 32, 32)
    np.testing.assert_array_equal(images, reference_images(files, CIFAR))
    assert dataset.skipped == 0


def test_imagenet_synsets_from_the_folder_list(imagenet_folder: Path) -> None:
    lines = (imagenet_folder / "synsets.txt").read_text().splitlines()
    dataset = open_dataset(imagenet_folder, SMALL, require_labels=True)
    assert dataset.kind == "imagenet-synsets" and len(dataset) == 6 and len(dataset.classes) == 1000
    images, labels = collect(dataset, batch_size=4)
    expected = [next(i for i, line in enumerate(lines) if line.split()[0] == f.name.split("_")[0]) for f in dataset.files()]
    assert labels.tolist() == expected
    np.testing.assert_array_equal(images, reference_images(dataset.files(), SMALL))
    assert dataset.skipped == 0  # synsets.txt is the label list, not a skipped file


def test_imagenet_synsets_from_a_list_elsewhere(imagenet_folder: Path, tmp_path: Path) -> None:
    synsets = tmp_path / "my-synsets.txt"
    (imagenet_folder / "synsets.txt").rename(synsets)
    assert open_dataset(imagenet_folder, SMALL).kind == "image-folder"
    dataset = open_dataset(imagenet_folder, SMALL, synsets=synsets)
    first = dataset.files()[0].name.split("_")[0]
    assert dataset.kind == "imagenet-synsets"
    assert dataset.labels[0] == [line.split()[0] for line in synsets.read_text().splitlines()].index(first)


def test_file_not_in_the_synset_list_is_named(imagenet_folder: Path) -> None:
    Image.new("RGB", (40, 40)).save(imagenet_folder / "n99999999_mystery.JPEG")
    with pytest.raises(InputError, match="n99999999_mystery.JPEG"):
        open_dataset(imagenet_folder, SMALL)


def test_unlabeled_folder(made_folder: Path) -> None:
    dataset = open_dataset(made_folder, SMALL)
    assert dataset.kind == "image-folder" and dataset.classes is None and len(dataset) == 7
    images, labels = collect(dataset, batch_size=3)
    assert labels is None and images.shape == (7, 3, 64, 64)
    np.testing.assert_array_equal(images, reference_images(dataset.files(), SMALL))
    with pytest.raises(InputError, match="labels") as error:
        open_dataset(made_folder, SMALL, require_labels=True)
    assert "class-per-folder" in str(error.value) and "synset" in str(error.value)


def test_balanced_subset_is_seeded(cifar_tree: Path) -> None:
    def chosen(seed: int, limit: int) -> list[Path]:
        return open_dataset(cifar_tree, CIFAR, limit=limit, seed=seed).files()

    assert chosen(0, 6) == chosen(0, 6)
    assert chosen(0, 6) != chosen(1, 6)
    assert Counter(f.parent.name for f in chosen(0, 6)) == {name: 2 for name in CLASSES}
    assert sorted(Counter(f.parent.name for f in chosen(3, 7)).values()) == [2, 2, 3]
    subset = open_dataset(cifar_tree, CIFAR, limit=6, seed=0)
    _, labels = collect(subset)
    assert labels.tolist() == [CLASSES.index(f.parent.name) for f in subset.files()]


def test_limit_larger_than_the_dataset_takes_all(cifar_tree: Path) -> None:
    assert len(open_dataset(cifar_tree, CIFAR, limit=1000)) == 12


def test_unlabeled_subset_is_seeded(made_folder: Path) -> None:
    first = open_dataset(made_folder, SMALL, limit=3, seed=5).files()
    assert len(first) == 3 and first == open_dataset(made_folder, SMALL, limit=3, seed=5).files()
    assert {tuple(open_dataset(made_folder, SMALL, limit=3, seed=s).files()) for s in range(5)} != {tuple(first)}


def test_corrupt_and_non_image_files_are_skipped_and_counted(cifar_tree: Path) -> None:
    (cifar_tree / "bird" / "9999.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    (cifar_tree / "cat" / "notes.txt").write_text("not an image")
    dataset = open_dataset(cifar_tree, CIFAR)
    assert len(dataset) == 13  # the corrupt .jpg is found only when decoded
    for _ in range(2):
        with pytest.warns(SkippedFilesWarning, match=r"skipped 2 file.*9999\.jpg") as caught:
            images, labels = collect(dataset, batch_size=4)
        assert "notes.txt" in str(caught[0].message)
        assert len(images) == 12 and dataset.skipped == 2
    good = [f for f in dataset.files() if f.name != "9999.jpg"]
    assert labels.tolist() == [CLASSES.index(f.parent.name) for f in good]


def test_arrays_preprocessed_float32(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    dataset = open_dataset(tmp_path / "x.npy", CIFAR)
    assert dataset.kind == "array" and len(dataset) == 10 and dataset.files() == [tmp_path / "x.npy"]
    images, labels = collect(dataset, batch_size=4)
    np.testing.assert_array_equal(images, x)
    assert labels is None
    with pytest.raises(InputError, match="labels"):
        open_dataset(tmp_path / "x.npy", CIFAR, require_labels=True)


def test_arrays_wrong_shape_names_both_shapes(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(InputError, match=r"\(4, 3, 16, 16\).*\(4, 3, 32, 32\)"):
        open_dataset(tmp_path / "x.npy", CIFAR)
    np.save(tmp_path / "y.npy", np.zeros((4, 32, 32), np.float32))
    with pytest.raises(InputError, match=r"\(4, 32, 32\)"):
        open_dataset(tmp_path / "y.npy", CIFAR)


def test_arrays_raw_uint8_are_preprocessed(tmp_path: Path) -> None:
    raw = np.random.default_rng(1).integers(0, 256, (5, 40, 48, 3), dtype=np.uint8)
    np.save(tmp_path / "raw.npy", raw)
    images, _ = collect(open_dataset(tmp_path / "raw.npy", CIFAR), batch_size=2)
    np.testing.assert_array_equal(images, np.stack([CIFAR(Image.fromarray(r)) for r in raw]))


def test_npz_with_labels_and_balanced_subset(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((12, 3, 32, 32)).astype(np.float32)
    y = np.arange(12) % 3
    np.savez(tmp_path / "data.npz", x=x, labels=y)
    dataset = open_dataset(tmp_path / "data.npz", CIFAR, limit=6, seed=0, require_labels=True)
    images, labels = collect(dataset, batch_size=4)
    assert Counter(labels.tolist()) == {0: 2, 1: 2, 2: 2} and labels.dtype == np.int64
    rows = [int(np.flatnonzero((x == image).all(axis=(1, 2, 3)))[0]) for image in images]
    assert labels.tolist() == y[rows].tolist()


def test_npz_ambiguous_keys_are_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", a=np.zeros((2, 3, 32, 32), np.float32), b=np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(InputError, match="a, b"):
        open_dataset(tmp_path / "data.npz", CIFAR)


def test_empty_and_missing_sources_name_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "some-class").mkdir(parents=True)
    with pytest.raises(InputError, match="no images") as error:
        open_dataset(empty, CIFAR)
    assert str(empty) in str(error.value) and "class-per-folder" in str(error.value)
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match="does not exist") as error:
        open_dataset(missing, CIFAR)
    assert str(missing) in str(error.value) and ".npy" in str(error.value)
