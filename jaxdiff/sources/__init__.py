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

``tfds_source``, ``idx``, ``arrays`` (``ArraySource``, ``.npy``, digits, label checks) and
``folder`` hold one kind of source each.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxdiff.sources.arrays import ArraySource, check_labels, load_digits, load_npy
from jaxdiff.sources.folder import IMAGE_SUFFIXES, FolderSource, load_folder
from jaxdiff.sources.idx import load_idx
from jaxdiff.sources.tfds_source import OFFLINE_OPTIONS, DatasetUnavailableError, load_tfds

SOURCES = ("tfds", "idx", "npy", "digits", "folder", "scenes")

__all__ = [
    "IMAGE_SUFFIXES",
    "OFFLINE_OPTIONS",
    "SOURCES",
    "ArraySource",
    "DatasetUnavailableError",
    "FolderSource",
    "check_labels",
    "load_digits",
    "load_folder",
    "load_idx",
    "load_npy",
    "load_tfds",
    "make_source",
]


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
