"""Every image source behind one interface: folders of files or arrays -> preprocessed batches.

Calibration, accuracy evaluation and benchmarks all read data through ``open_dataset``; a
dataset is opened cheaply (only file names are listed) and decodes images lazily, one batch
at a time, so 50k images never sit in memory at once.

Decoding is sequential: on the 2 shared cores this was written for, a pool of 2 or 4
threads did not speed up decode + resize (200 ImageNet samples: 0.93 s sequential vs
0.95-1.0 s threaded; 2,000 CIFAR images: 0.45 s vs 0.53 s), so it is not worth its weight.
"""

from __future__ import annotations

import warnings
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InputError
from .preprocess import Preprocessing, is_deep

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
SYNSET_LIST_NAME = "synsets.txt"
ACCEPTED_FORMS = (
    "a class-per-folder tree (root/<class>/*.jpg), "
    "a flat folder of ImageNet-style <synset>_<name>.JPEG files with a synsets.txt, "
    "a flat folder of images (unlabeled, calibration only), "
    "or a .npy/.npz array: float32 (N,3,H,W) preprocessed or uint8 (N,H,W,3) images"
)
LABELED_FORMS = (
    "a class-per-folder tree (root/<class>/*.jpg), <synset>_<name> files with a synset list "
    "(--synsets or a synsets.txt in the folder), or an .npz with a 'labels' array"
)
_NAMES_SHOWN = 5


class SkippedFilesWarning(UserWarning):
    """Files in a dataset that are not readable images were left out."""


class ConvertedImagesWarning(UserWarning):
    """Images of more than 8 bits per channel (16-bit PNGs) were scaled to 8 bits."""


@dataclass(frozen=True)
class Batch:
    images: np.ndarray  # float32 (N, 3, H, W), preprocessed
    labels: np.ndarray | None  # int64 (N,), or None when the source has no labels


class ImageDataset(ABC):
    """A selected, labeled or unlabeled set of images that streams preprocessed batches."""

    def __init__(self, path: Path, kind: str, classes: list[str] | None, labels: np.ndarray | None) -> None:
        self.path = path
        self.kind = kind
        self.classes = classes
        self.labels = labels  # int64 labels of the selected samples, in iteration order
        # ordered sets of names, so re-iterating counts each once
        self._not_images: dict[str, None] = {}  # files without an image extension, left out when listed
        self._undecodable: dict[str, None] = {}  # image files found corrupt or unreadable when decoded
        self._converted: dict[str, None] = {}  # images of more than 8 bits per channel, scaled to 8 bits

    @property
    def skipped(self) -> int:
        """Corrupt or non-image files left out so far."""
        return len(self._not_images) + len(self._undecodable)

    @property
    def undecodable(self) -> list[str]:
        """Names of the selected image files that could not be decoded (so far)."""
        return list(self._undecodable)

    @property
    def converted(self) -> list[str]:
        """Names of the images decoded so far that had more than 8 bits per channel and were scaled to 8 bits."""
        return list(self._converted)

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def batches(self, batch_size: int) -> Iterator[Batch]: ...

    @abstractmethod
    def files(self) -> list[Path]: ...

    def _warn_skipped(self) -> None:
        if self._converted:
            warnings.warn(f"{self.path}: {len(self._converted)} image(s) of 16 bits per channel scaled to 8 bits "
                          f"({_shown(self.converted)})", ConvertedImagesWarning, stacklevel=2)
        if self.skipped:
            kinds = [f"{len(names)} {what} ({_shown(list(names))})" for names, what in (
                (self._undecodable, "could not be decoded as an image"), (self._not_images, "not an image file"))
                if names]
            warnings.warn(f"{self.path}: skipped {self.skipped} file(s): {', '.join(kinds)}", SkippedFilesWarning,
                          stacklevel=2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, kind={self.kind!r}, samples={len(self)})"


class FileDataset(ImageDataset):
    """Image files on disk, decoded and preprocessed as they are iterated."""

    def __init__(
        self,
        path: Path,
        kind: str,
        classes: list[str] | None,
        samples: list[Path],
        labels: np.ndarray | None,
        preprocessing: Preprocessing,
        ignored: Sequence[Path] = (),
    ) -> None:
        super().__init__(path, kind, classes, labels)
        self._samples = samples
        self._preprocessing = preprocessing
        self._not_images.update((_relative_name(p, path), None) for p in ignored)

    def __len__(self) -> int:
        return len(self._samples)

    def files(self) -> list[Path]:
        return list(self._samples)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        _check_batch_size(batch_size)
        for start in range(0, len(self._samples), batch_size):
            images, kept = [], []
            for index in range(start, min(start + batch_size, len(self._samples))):
                image = self._decode(self._samples[index])
                if image is not None:
                    images.append(image)
                    kept.append(index)
            if images:
                labels = None if self.labels is None else self.labels[kept]
                yield Batch(np.stack(images), labels)
        self._warn_skipped()

    def _decode(self, file: Path) -> np.ndarray | None:
        try:
            with Image.open(file) as image:
                deep = is_deep(image)  # before decoding: a 48-bit PNG decodes to mode RGB
                pixels = self._preprocessing(image)
            if deep:
                self._converted[_relative_name(file, self.path)] = None
            return pixels
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            # PIL reports undecodable, truncated and unreadable files through these.
            self._undecodable[_relative_name(file, self.path)] = None
            return None


class ArrayDataset(ImageDataset):
    """A .npy/.npz array of preprocessed float32 NCHW or raw uint8 NHWC images."""

    def __init__(
        self,
        path: Path,
        array: np.ndarray,
        indices: np.ndarray,
        labels: np.ndarray | None,
        preprocessing: Preprocessing,
    ) -> None:
        super().__init__(path, "array", None, labels)
        self._array = array
        self._indices = indices
        self._preprocessing = preprocessing
        self._raw = array.dtype == np.uint8

    def __len__(self) -> int:
        return len(self._indices)

    def files(self) -> list[Path]:
        return [self.path]

    def batches(self, batch_size: int) -> Iterator[Batch]:
        _check_batch_size(batch_size)
        for start in range(0, len(self._indices), batch_size):
            rows = self._array[self._indices[start : start + batch_size]]  # reads only these rows of a memmap
            if self._raw:
                images = np.stack([self._preprocessing(Image.fromarray(row)) for row in rows])
            else:
                images = np.ascontiguousarray(rows, dtype=np.float32)
            labels = None if self.labels is None else self.labels[start : start + batch_size]
            yield Batch(images, labels)


def open_dataset(
    path: str | Path,
    preprocessing: Preprocessing,
    *,
    limit: int | None = None,
    seed: int = 0,
    synsets: str | Path | None = None,
    require_labels: bool = False,
) -> ImageDataset:
    """Detect the form of ``path`` and open it; ``limit`` keeps a seeded, class-balanced subset."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise InputError(f"the sample limit must be at least 1, got {limit}")
    if not path.exists():
        raise InputError(f"{path} does not exist; expected {ACCEPTED_FORMS}")
    if path.is_file() and path.suffix.lower() in (".npy", ".npz"):
        dataset = _open_array(path, preprocessing, limit, seed)
    elif path.is_dir():
        dataset = _open_folder(path, preprocessing, limit, seed, synsets)
    else:
        raise InputError(f"{path} is not a dataset; expected {ACCEPTED_FORMS}")
    if require_labels and not dataset.labeled:
        raise InputError(f"{path} has no labels ({dataset.kind}); accuracy needs labels: use {LABELED_FORMS}")
    return dataset


def balanced_subset(labels: np.ndarray | None, count: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices (sorted) of a seeded subset: round-robin over classes, each shuffled, in a shuffled order."""
    if limit is None or limit >= count:
        return np.arange(count)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(count, size=limit, replace=False))
    classes = rng.permutation(np.unique(labels))
    queues = [rng.permutation(np.flatnonzero(labels == label)) for label in classes]
    chosen: list[int] = []
    for depth in range(max(len(q) for q in queues)):
        chosen.extend(int(q[depth]) for q in queues if depth < len(q))
        if len(chosen) >= limit:
            break
    return np.sort(np.asarray(chosen[:limit], dtype=np.int64))


def _open_folder(
    root: Path, preprocessing: Preprocessing, limit: int | None, seed: int, synsets: str | Path | None
) -> FileDataset:
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError as error:
        raise InputError(f"cannot read {root}: {error.strerror or error}; expected {ACCEPTED_FORMS}") from None
    folders = [p for p in entries if p.is_dir()]
    synset_file = Path(synsets) if synsets is not None else root / SYNSET_LIST_NAME
    loose = [p for p in entries if p.is_file() and p != synset_file]
    tree = {folder: _list_files(folder) for folder in folders}
    if any(_is_image(f) for files in tree.values() for f in files):
        classes = [folder.name for folder in folders]
        samples, labels, ignored = [], [], list(loose)
        for label, files in enumerate(tree.values()):
            for file in files:
                if _is_image(file):
                    samples.append(file)
                    labels.append(label)
                else:
                    ignored.append(file)
        kind = "class-folders"
    else:
        samples = [p for p in loose if _is_image(p)]
        ignored = [p for p in loose if not _is_image(p)]
        if not samples:
            raise InputError(f"{root} holds no images; expected {ACCEPTED_FORMS}")
        if synsets is not None or synset_file.is_file():
            classes = _read_synsets(synset_file)
            labels = _synset_labels(samples, classes, synset_file)
            kind = "imagenet-synsets"
        else:
            classes, labels, kind = None, None, "image-folder"
    label_array = None if labels is None else np.asarray(labels, dtype=np.int64)
    chosen = balanced_subset(label_array, len(samples), limit, seed)
    return FileDataset(
        root,
        kind,
        classes,
        [samples[i] for i in chosen],
        None if label_array is None else label_array[chosen],
        preprocessing,
        ignored,
    )


def _list_files(folder: Path) -> list[Path]:
    """Files under a class folder, recursively, in sorted order (as torchvision's ImageFolder)."""
    try:
        return sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
    except OSError as error:
        raise InputError(f"cannot read {folder}: {error.strerror or error}") from None


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _read_synsets(synset_file: Path) -> list[str]:
    """Synset ids in class-index order from ``<synset> <name>`` lines."""
    try:
        lines = synset_file.read_text().splitlines()
    except OSError as error:
        raise InputError(f"cannot read the synset list {synset_file}: {error.strerror or error}") from None
    synsets = [line.split(maxsplit=1)[0] for line in lines if line.strip()]
    if not synsets:
        raise InputError(f"the synset list {synset_file} is empty; expected '<synset> <name>' lines")
    if len(set(synsets)) != len(synsets):
        raise InputError(f"the synset list {synset_file} names a synset twice")
    return synsets


def _synset_labels(files: list[Path], synsets: list[str], synset_file: Path) -> list[int]:
    index = {synset: i for i, synset in enumerate(synsets)}
    unknown = [f.name for f in files if f.stem.split("_", 1)[0] not in index]
    if unknown:
        raise InputError(
            f"{len(unknown)} file(s) do not start with a synset of {synset_file} "
            f"({', '.join(unknown[:_NAMES_SHOWN])}); ImageNet-style files are named <synset>_<name>.JPEG"
        )
    return [index[f.stem.split("_", 1)[0]] for f in files]


def _open_array(path: Path, preprocessing: Preprocessing, limit: int | None, seed: int) -> ArrayDataset:
    try:
        if zipfile.is_zipfile(path):  # by content, not by name: an .npz renamed .npy (or the reverse) still reads
            array, labels = _read_npz(path)
        else:
            array, labels = np.load(path, mmap_mode="r", allow_pickle=False), None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(f"cannot read {path} as a NumPy array: {error}") from None
    size = preprocessing.image_size
    if array.ndim == 4 and array.dtype == np.uint8 and array.shape[-1] == 3:
        pass  # raw images, preprocessed per batch
    elif array.ndim == 4 and np.issubdtype(array.dtype, np.floating) and array.shape[1] == 3:
        if array.shape[2:] != (size, size):
            raise InputError(
                f"{path} holds preprocessed images of shape {tuple(array.shape)}, but the model takes {size} px "
                f"inputs, ({array.shape[0]}, 3, {size}, {size}): preprocess them at {size} px, or give the images "
                f"raw (uint8 (N,H,W,3) or a folder), which are resized and cropped to {size} px"
            )
    else:
        raise InputError(
            f"{path} holds a {array.dtype} array of shape {tuple(array.shape)}; expected float32 (N,3,{size},{size}) "
            "preprocessed images or uint8 (N,H,W,3) images"
        )
    if len(array) == 0:
        raise InputError(f"{path} holds no images; expected {ACCEPTED_FORMS}")
    if labels is not None and (labels.shape != (len(array),) or not np.issubdtype(labels.dtype, np.integer)):
        raise InputError(
            f"{path}: 'labels' must be {len(array)} integers, one per image; got {labels.dtype} {labels.shape}"
        )
    chosen = balanced_subset(labels, len(array), limit, seed)
    if np.issubdtype(array.dtype, np.floating):
        _check_finite(path, array, chosen)
    return ArrayDataset(path, array, chosen, None if labels is None else labels[chosen].astype(np.int64), preprocessing)


def _check_finite(path: Path, array: np.ndarray, chosen: np.ndarray, rows: int = 256) -> None:
    """Refuse preprocessed images holding NaN or infinity (read in chunks of ``rows``: a memmap stays on disk)."""
    for start in range(0, len(chosen), rows):
        block = np.asarray(array[chosen[start:start + rows]])
        bad = ~np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if bad.any():
            index = int(chosen[start + int(np.argmax(bad))])
            values = block[int(np.argmax(bad))]
            kinds = [name for name, found in (("NaN", np.isnan(values).any()), ("infinity", np.isinf(values).any()))
                     if found]
            raise InputError(f"{path}: image {index} holds {' and '.join(kinds)} "
                             f"({int((~np.isfinite(values)).sum())} of its {values.size} values); preprocessed "
                             f"images must be finite: fix or drop it, or give the raw images (uint8 or a folder)")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The image array ('images', 'x', or the only other key) and 'labels' if present."""
    with np.load(path) as archive:  # .npz members cannot be memory-mapped; each is read whole
        keys = list(archive.files)
        candidates = [k for k in ("images", "x") if k in keys] or [k for k in keys if k != "labels"]
        if len(candidates) != 1:
            raise InputError(
                f"{path}: cannot tell which array holds the images (keys: {', '.join(keys) or 'none'}); "
                "name it 'images' or 'x' and the labels 'labels'"
            )
        labels = archive["labels"] if "labels" in keys else None
        return archive[candidates[0]], labels


def _shown(names: list[str]) -> str:
    return ", ".join(names[:_NAMES_SHOWN]) + (", ..." if len(names) > _NAMES_SHOWN else "")


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def _relative_name(file: Path, root: Path) -> str:
    try:
        return str(file.relative_to(root))
    except ValueError:
        return file.name
