"""Random-access image sources: TFDS, MNIST-style IDX files, ``.npy`` pairs, sklearn digits.

A *source* is anything with ``__len__`` and ``__getitem__`` whose records are
``{'image': uint8 (H, W, C), 'label': int}`` (class labels) or
``{'image': uint8 (H, W, C), 'context': float32 (D,)}`` (context vectors, e.g. the sprites'
5-dim one-hot "hero/non-hero/food/spell/side-facing" labels), or only ``{'image'}``:

* ``load_tfds(name, split=...)``        any TFDS image dataset, through ``tfds.data_source``
                                        (array_record files; TensorFlow is not needed);
* ``load_idx(path, split=...)``         a directory of MNIST-style IDX files;
* ``load_npy(images_path, labels_path)`` a pair of ``.npy`` arrays (the sprites data);
* ``load_digits()``                     scikit-learn's bundled 8x8 digits (no download);
* ``load_folder(path, image_size=...)``  PNG/JPEG files under a directory (your own images),
                                        class sub-folders as labels when asked.

``make_source(config.data)`` picks one from a config; ``jaxdiff.data.make_pipeline`` turns
any of them into batches.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import socket
import urllib.parse
import urllib.request
import warnings
from typing import Any

import grain
import ml_collections
import numpy as np

SOURCES = ("tfds", "idx", "npy", "digits", "folder", "scenes")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

OFFLINE_OPTIONS = (
    "Offline options: put the dataset's downloaded files in a directory and pass "
    "--config.data.manual_dir=DIR (TFDS checks their checksums); point TFDS at an already "
    "prepared copy with the TFDS_DATA_DIR environment variable or --config.data.data_dir=DIR; "
    "read MNIST-style IDX files with --config.data.source=idx "
    "--config.data.path=../shared/data/mnist; or train on scikit-learn's bundled digits, "
    "which need no download: --config configs/digits.py."
)


class DatasetUnavailableError(ValueError):
    """A TFDS dataset is not prepared locally and could not be downloaded or prepared."""


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


# --------------------------------------------------------------------------- TFDS


def load_tfds(
    name: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    manual_dir: str | None = None,
) -> grain.MapDataset:
    """A TFDS dataset as a random-access source (``tfds.data_source``, no TensorFlow).

    Prepares the dataset in ``data_dir`` (default: ``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``) when it is not there yet, from the files in ``manual_dir`` when
    given, else by downloading.

    Raises:
      ValueError: ``name`` is not a TFDS dataset.
      DatasetUnavailableError: the dataset is not prepared and can not be prepared, e.g. the
        machine is offline; the message lists the offline options. This is checked before
        TFDS starts downloading, whose retries would otherwise take minutes to give up.
    """
    # Imported here: ~1 s, only TFDS users pay it.
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import DownloadError
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"{name!r} is not a TFDS dataset; see https://www.tensorflow.org/datasets/catalog "
            "for the names (e.g. 'mnist', 'fashion_mnist', 'cifar10')."
        ) from None
    try:
        records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (NotImplementedError, AssertionError, KeyError):
        # Not prepared as array_record files in data_dir (TFDS words this as a file-format
        # problem, or, from 4.9.10 on, as a KeyError for the empty splits); prepare it below.
        _check_can_prepare(name, builder, manual_dir=manual_dir)
        # With manual_dir the files are local: do not look for a prepared copy on GCS.
        config = tfds.download.DownloadConfig(
            manual_dir=manual_dir, try_download_gcs=not manual_dir
        )
        try:
            prepare = {"download_config": config}
            records = tfds.data_source(
                name, split=split, data_dir=data_dir, download_and_prepare_kwargs=prepare
            )
        except (OSError, AssertionError, DownloadError, NonMatchingChecksumError) as error:
            raise DatasetUnavailableError(
                f"TFDS dataset {name!r} could not be downloaded or prepared ({error}). "
                f"{OFFLINE_OPTIONS}"
            ) from error
    return grain.MapDataset.source(records).map(_tfds_record)


def _tfds_record(example: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"image": np.asarray(example["image"], np.uint8)}
    if "label" in example:
        record["label"] = int(example["label"])
    return record


def _check_can_prepare(name: str, builder: Any, *, manual_dir: str | None) -> None:
    """Raises DatasetUnavailableError unless the files TFDS needs are local or reachable."""
    url_infos = builder.url_infos or {}
    manual = pathlib.Path(manual_dir) if manual_dir else None
    missing = {
        url: info
        for url, info in url_infos.items()
        if not (manual and info.filename and (manual / info.filename).exists())
    }
    if url_infos and not missing:
        return  # Everything is in manual_dir: no network needed.
    # Hosts of the registered URLs; datasets without registered URLs at least need GCS.
    hosts = {urllib.parse.urlsplit(url).hostname for url in missing} or {"storage.googleapis.com"}
    if urllib.request.getproxies() or all(_reachable(host) for host in hosts if host):
        return  # Behind a proxy a direct probe says nothing: let TFDS try.
    lacking = ""
    if manual and missing:
        names = ", ".join(sorted(str(info.filename) for info in missing.values()))
        lacking = f" manual_dir {manual} lacks {names}."
    raise DatasetUnavailableError(
        f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and could not be "
        f"downloaded: {', '.join(sorted(h for h in hosts if h))} cannot be reached "
        f"(no network?).{lacking} {OFFLINE_OPTIONS}"
    )


def _reachable(host: str, *, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- files


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


def make_source(data_config: ml_collections.ConfigDict) -> Any:
    """The source named by ``config.data``.

    Fields (missing ones take the defaults in brackets):
      source: "tfds" | "idx" | "npy" | "digits" | "scenes" (num_scenes renders, depth hints).
      name: TFDS dataset name, e.g. "mnist" (tfds).
      split: "train" | "test" (tfds also takes TFDS split strings like "train[:90%]") ["train"].
      data_dir: where TFDS keeps prepared datasets [None: $TFDS_DATA_DIR or
        ~/tensorflow_datasets] (tfds).
      manual_dir: directory with the dataset's already downloaded files [None] (tfds).
      path: directory with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (idx).
      images_path, labels_path: the two ``.npy`` files; labels_path may be None (npy).
      path, image_size (or resize_to), channels, class_folders: the image folder, the
        square size to crop and resize to, 1 or 3 channels, labels from sub-folders (folder).
    """
    get = data_config.get
    source, split = get("source"), get("split") or "train"
    if source == "tfds":
        return load_tfds(
            get("name"), split=split, data_dir=get("data_dir"), manual_dir=get("manual_dir")
        )
    if source == "idx":
        return load_idx(get("path"), split=split)
    if source == "npy":
        return load_npy(get("images_path"), get("labels_path"))
    if source == "digits":
        return load_digits(split=split)
    if source == "folder":
        return load_folder(
            get("path"), image_size=int(get("resize_to") or get("image_size")),
            channels=int(get("channels", 3)), class_folders=bool(get("class_folders", False)),
        )
    if source == "scenes":  # synthetic shaded scenes with their exact depth (jaxdiff.scenes)
        from jaxdiff import scenes

        return scenes.load_scenes(
            int(get("num_scenes") or 2000), size=int(get("image_size")), seed=int(get("seed") or 0)
        )
    raise ValueError(f"unknown data source {source!r}; --config.data.source must be in {SOURCES}")
