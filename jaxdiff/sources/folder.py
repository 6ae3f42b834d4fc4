"""PNG/JPEG files under a directory (your own images) as a source, class sub-folders as
labels when asked."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class FolderSource:
    """Image files decoded on demand (OpenCV), centre-cropped to a square and resized.

    Attributes:
      paths: the image files, sorted. labels: (N,) int32 class indices, or None.
      classes: the class (sub-folder) names of the labels, or None.
      image_size: side of the square images returned. channels: 1 (grey) or 3 (RGB).
    """

    paths: tuple[str, ...]
    labels: np.ndarray | None
    classes: tuple[str, ...] | None
    image_size: int
    channels: int

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record: dict[str, Any] = {"image": self.read(self.paths[index])}
        if self.labels is not None:
            record["label"] = int(self.labels[index])
        return record

    def read(self, path: str) -> np.ndarray:
        """uint8 (image_size, image_size, channels): the largest centred square, resized
        (INTER_AREA when shrinking, which averages pixels instead of aliasing)."""
        import cv2  # Imported here: only folder users pay for it.

        flag = cv2.IMREAD_GRAYSCALE if self.channels == 1 else cv2.IMREAD_COLOR
        image = cv2.imread(path, flag)
        if image is None:
            raise ValueError(f"cannot decode the image file {path}")
        if self.channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top:top + side, left:left + side]
        size = self.image_size
        shrink = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=shrink)
        return image.reshape(size, size, self.channels)


def load_folder(
    path: str | os.PathLike, *, image_size: int, channels: int = 3, class_folders: bool = False
) -> FolderSource:
    """PNG/JPEG images found recursively under ``path``, as ``FolderSource`` records.

    ``class_folders``: each image's label is the index of its top-level sub-folder in the
    sorted list of sub-folders (torchvision's ImageFolder convention). Files that are not
    readable images are skipped and counted in one warning.

    Raises:
      FileNotFoundError: ``path`` is not a directory.
      ValueError: no readable image under ``path`` (or, with ``class_folders``, images
        outside the class sub-folders); ``channels`` not 1 or 3.
    """
    from PIL import Image  # Checks the files without decoding all pixels.

    root = pathlib.Path(path) if path else None
    if root is None or not root.is_dir():
        raise FileNotFoundError(
            f"image folder {path} is not a directory; set --config.data.path=DIR"
        )
    if channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 (grey) or 3 (RGB) for folders, got {channels}")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    readable, bad = [], []
    for p in found:
        try:
            with Image.open(p) as image:
                image.verify()
            readable.append(p)
        except Exception:  # PIL raises many kinds for broken files; all mean "skip it".
            bad.append(p)
    if bad:
        warnings.warn(
            f"skipped {len(bad)} unreadable image file(s) under {root}, e.g. {bad[0]}",
            stacklevel=2,
        )
    if not readable:
        raise ValueError(
            f"no readable PNG/JPEG images under {root} (searched recursively for "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    labels = classes = None
    if class_folders:
        top = [p.relative_to(root).parts for p in readable]
        loose = [p for p, parts in zip(readable, top, strict=False) if len(parts) < 2]
        if loose:
            raise ValueError(
                f"data.class_folders=True wants every image in a class sub-folder of {root}; "
                f"{len(loose)} are at the top level, e.g. {loose[0]}"
            )
        classes = tuple(sorted({parts[0] for parts in top}))
        labels = np.array([classes.index(parts[0]) for parts in top], np.int32)
    return FolderSource(
        tuple(str(p) for p in readable), labels, classes, int(image_size), int(channels)
    )
