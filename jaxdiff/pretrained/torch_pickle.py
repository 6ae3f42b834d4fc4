"""PyTorch ``.pth`` state dicts read into numpy without torch.

``torch.save`` writes either a zip archive (``<name>/data.pkl`` plus one raw file per storage
under ``<name>/data/``; the default since torch 1.6) or, before that, one stream of pickles:
a magic number, the protocol version, system info, the object pickle, the list of storage
keys, then each storage as an int64 element count followed by its bytes. In both the object
pickle names its tensors as ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)`` and its storages as persistent ids ``('storage', torch.FloatStorage, key,
location, numel[, view_metadata])``.

The unpickler here is restricted: it builds dicts, OrderedDicts and tensors (as numpy
arrays, via ``as_strided`` on the storage) and refuses every other global, so a ``.pth``
cannot run code on load (as a plain ``pickle.load`` would let it).
"""

from __future__ import annotations

import collections
import pathlib
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


class _Storage:
    """A storage named in the pickle; its bytes arrive later (legacy) or on demand (zip)."""

    def __init__(self, dtype: Any, key: str):
        self.dtype, self.key, self.array = np.dtype(dtype), key, None


class _Tensor:
    """A tensor view on a storage, made into a numpy array once the storages are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.array[self.offset :]
        strides = [s * flat.itemsize for s in self.stride]
        return np.lib.stride_tricks.as_strided(flat, self.size, strides).copy()


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"a state dict .pth does not hold {module}.{name}")

    def persistent_load(self, pid: tuple) -> _Storage:
        kind, dtype, key = pid[0], pid[1], str(pid[2])
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        return self.storages.setdefault(key, _Storage(dtype, key))


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def load_torch_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The state dict saved by ``torch.save(module.state_dict(), path)``, as numpy arrays.

    Reads both serialisations (zip and the legacy pickle stream); little-endian only.
    """
    storages: dict[str, _Storage] = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            (pkl,) = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            prefix = pkl[: -len("data.pkl")]
            with archive.open(pkl) as f:
                result = _Unpickler(f, storages).load()
            for key, storage in storages.items():
                storage.array = np.frombuffer(archive.read(f"{prefix}data/{key}"), storage.dtype)
        return _materialize(result)
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path} is not a file written by torch.save")
        pickle.load(f), pickle.load(f)  # protocol version, system info
        result = _Unpickler(f, storages).load()
        for key in pickle.load(f):
            storage = storages[str(key)]
            numel = int(np.frombuffer(f.read(8), "<i8")[0])
            data = f.read(numel * storage.dtype.itemsize)
            storage.array = np.frombuffer(data, storage.dtype)
    return _materialize(result)
