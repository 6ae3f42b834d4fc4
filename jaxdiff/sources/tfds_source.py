"""TFDS datasets as random-access sources, through ``tfds.data_source`` (array_record
files; TensorFlow is not needed), with a clear error and the offline options when a dataset
can be neither found locally nor downloaded."""

from __future__ import annotations

import pathlib
import socket
import urllib.parse
import urllib.request
from typing import Any

import grain
import numpy as np

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
