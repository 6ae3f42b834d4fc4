"""In-memory sources: ``ArraySource``, ``.npy`` pairs, scikit-learn's digits, and the checks
that refuse bad labels and pixel values with the file and index that hold them."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """In-memory (or memory-mapped) arrays as a random-access source.

    Attributes:
      images: (N, H, W, C) uint8.
      labels: (N,) integer class labels, or None.
      contexts: (N, D) float32 context vectors, or None.
      origin: where the labels come from (a file name), for error messages.
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    contexts: np.ndarray | None = None
    origin: str = "the data"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record: dict[str, Any] = {"image": np.asarray(self.images[index])}
        if self.labels is not None:
            record["label"] = int(self.labels[index])
        if self.contexts is not None:
            record["context"] = np.asarray(self.contexts[index], np.float32)
        return record


def load_npy(
    images_path: str | os.PathLike, labels_path: str | os.PathLike | None = None
) -> ArraySource:
    """A pair of ``.npy`` arrays, e.g. the sprites' sprites_1788_16x16.npy +
    sprite_labels_nc_1788_16x16.npy.

    Images are (N, H, W, C) or (N, H, W), uint8 or float (floats in [0, 1] are scaled by 255;
    floats in [0, 255] are rounded). Labels are (N,) integer classes, which become ``label``,
    or (N, D) float vectors (one-hot or not), which become ``context``.
    """
    for p in (images_path, labels_path):
        if p is not None and not pathlib.Path(p).exists():
            raise FileNotFoundError(
                f".npy file {p} not found; set --config.data.images_path and "
                "--config.data.labels_path to existing files."
            )
    # Memory-mapped: only the records a batch reads are loaded.
    images = np.load(images_path, mmap_mode="r")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{images_path}: images must be (N, H, W[, C]), got {images.shape}")
    if len(images) == 0:
        raise ValueError(f"{images_path} holds no images (shape {images.shape})")
    images = _to_uint8(images, name=str(images_path))
    if labels_path is None:
        return ArraySource(images)
    labels = np.load(labels_path)
    if len(labels) != len(images):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
            "labels; they must be the same length."
        )
    if labels.ndim == 1:
        return ArraySource(images, labels=_class_labels(labels, name=str(labels_path)),
                           origin=str(labels_path))
    if labels.ndim == 2:
        _first_bad(~np.isfinite(labels), name=str(labels_path), what="non-finite context values")
        return ArraySource(images, contexts=labels.astype(np.float32), origin=str(labels_path))
    raise ValueError(f"{labels_path}: labels must be (N,) or (N, D), got {labels.shape}")


def _first_bad(bad: np.ndarray, *, name: str, what: str, values: np.ndarray | None = None):
    """Raises ValueError naming the file, the count and the first offending (record) index
    when ``bad`` (a boolean array over records, or over all values) has any True."""
    count = int(np.count_nonzero(bad))
    if not count:
        return
    first = np.unravel_index(int(np.argmax(bad.reshape(-1))), bad.shape)
    shown = f" (value {values[first]!r})" if values is not None else ""
    raise ValueError(f"{name}: {count} {what}, the first at index {first[0]}{shown}")


def _class_labels(labels: np.ndarray, *, name: str) -> np.ndarray:
    """(N,) labels as int32, refusing values that are not integers or that do not fit
    (casting would turn 2.7 into 2 and 2**32 + 3 into 3 silently)."""
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"{name}: labels must be integers, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        _first_bad(~np.isfinite(labels) | (labels != np.round(labels)), name=name,
                   what="labels that are not integers", values=labels)
    _first_bad((labels < 0) | (labels > np.iinfo(np.int32).max), name=name,
               what="labels outside [0, 2**31) (class labels start at 0)", values=labels)
    return labels.astype(np.int32)


def check_labels(source: Any, *, num_classes: int | None) -> None:
    """Refuses labels outside [0, num_classes): the null label ``num_classes`` (classifier-free
    guidance) never comes from data, and larger ones would index past the embedding.

    Only in-memory sources (``ArraySource``: .npy, IDX, digits) are checked; TFDS labels come
    from the dataset's own ClassLabel feature.
    """
    labels = getattr(source, "labels", None)
    if labels is None or not num_classes:
        return
    _first_bad(
        (labels < 0) | (labels >= num_classes),
        name=getattr(source, "origin", "the data"),
        what=f"labels outside [0, {num_classes}) (model.num_classes={num_classes}; "
        f"{num_classes} is the null label of classifier-free guidance, never a data label)",
        values=labels,
    )


def _to_uint8(images: np.ndarray, *, name: str) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise ValueError(f"{name}: images must be uint8 or float, got dtype {images.dtype}")
    per_image = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
    _first_bad(per_image, name=name, what="images with non-finite (NaN/inf) pixel values")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        raise ValueError(f"{name}: pixel values in [{low}, {high}]; expected [0, 1] or [0, 255]")
    scale = 255.0 if high <= 1.0 else 1.0
    return np.round(np.asarray(images, np.float32) * scale).astype(np.uint8)


def load_digits(*, split: str = "train") -> ArraySource:
    """scikit-learn's bundled 8x8 digits (1797 images, a copy of the UCI test set; no download).

    Pixel values 0..16 are scaled to 0..255. There is a single split, "train".

    Returns:
      images (1797, 8, 8, 1) uint8 and labels (1797,).
    """
    if split != "train":
        raise ValueError(f"the digits dataset has only the 'train' split, got {split!r}")
    from sklearn import datasets  # Imported here: slow, and only digits users need it.

    digits = datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ArraySource(images, labels=digits.target.astype(np.int32), origin="scikit-learn digits")
