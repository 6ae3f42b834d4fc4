"""MNIST-style IDX files (LeCun et al. 1998) as an in-memory source."""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

from jaxdiff.sources.arrays import ArraySource


def load_idx(path: str | os.PathLike, *, split: str = "train") -> ArraySource:
    """MNIST-style IDX files ``{prefix}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``path``.

    ``split`` "train" reads the ``train-*`` files, "test" (or "t10k") the ``t10k-*`` files.
    The format (LeCun et al. 1998, yann.lecun.com/exdb/mnist): a big-endian header
    ``0x0000 <dtype 0x08 = ubyte> <ndim>`` and ``ndim`` uint32 sizes, then the raw bytes.

    Returns:
      images (N, H, W, 1) uint8 and labels (N,).
    """
    prefixes = {"train": "train", "test": "t10k", "t10k": "t10k"}
    if split not in prefixes:
        raise ValueError(f"IDX split must be one of {sorted(prefixes)}, got {split!r}")
    directory = pathlib.Path(path)
    images = _read_idx(_find_idx(directory, f"{prefixes[split]}-images-idx3-ubyte"), ndim=3)
    labels = _read_idx(_find_idx(directory, f"{prefixes[split]}-labels-idx1-ubyte"), ndim=1)
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise ValueError(f"{directory}: the {split} IDX files hold no images")
    return ArraySource(images[..., None], labels=labels.astype(np.int32), origin=str(directory))


def _find_idx(directory: pathlib.Path, stem: str) -> pathlib.Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"IDX file {stem} (or {stem}.gz) not found in {directory}. Pass the directory that "
        "holds it with --config.data.path=DIR (e.g. ../shared/data/mnist holds only the "
        "t10k test split: use --config.data.split=test)."
    )


def _read_idx(path: pathlib.Path, *, ndim: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    header = np.frombuffer(data, ">u4", count=1 + ndim)
    magic = int(header[0])
    if magic != 0x0800 + ndim:  # 0x08: unsigned byte entries.
        raise ValueError(f"{path} is not a {ndim}-d uint8 IDX file (magic number {magic:#x})")
    shape = tuple(int(size) for size in header[1:])
    return np.frombuffer(data, np.uint8, offset=4 * (1 + ndim)).reshape(shape)
