"""Tensors of a legacy (pre-1.6, non-zip) ``torch.save`` file, read with NumPy and no torch.

The legacy format (``torch/serialization.py``, ``_legacy_save``) is a run of pickles: a magic
number, the protocol version (1001), system information, the object itself, in which every
tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and every
storage a persistent id ``("storage", <type>, key, location, numel, view)``; then the list of
storage keys, and for each key in that order an 8-byte little-endian element count followed by
the raw little-endian elements. Only those globals are let through the unpickler (plus
``collections.OrderedDict``); anything else is refused, so the file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from spa.errors import UserError

__all__ = ["read_legacy_checkpoint"]

_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
             "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8,
             "BoolStorage": np.bool_}


@dataclass(frozen=True)
class _StorageType:
    dtype: Any


@dataclass(frozen=True)
class _TensorRef:
    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: tuple[str, Any], offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *_: Any) -> _TensorRef:
    return _TensorRef(storage[0], offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, handle: BinaryIO, dtypes: dict[str, Any]) -> None:
        super().__init__(handle)
        self.dtypes = dtypes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")

    def persistent_load(self, pid: Any) -> tuple[str, Any]:
        kind, storage_type, key = pid[0], pid[1], pid[2]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid[:2]}")
        self.dtypes[key] = storage_type.dtype
        return key, storage_type


def _materialize(value: Any, storages: dict[str, np.ndarray]) -> Any:
    if isinstance(value, _TensorRef):
        flat = storages[value.key]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[value.offset :], shape=value.size, strides=[s * itemsize for s in value.stride])
        return view.copy()
    if isinstance(value, dict):
        return {key: _materialize(item, storages) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_materialize(item, storages) for item in value)
    return value


def read_legacy_checkpoint(path: Path) -> Any:
    """The object ``torch.save`` wrote to ``path`` (legacy format), tensors as NumPy arrays."""
    with path.open("rb") as handle:
        dtypes: dict[str, Any] = {}
        unpickler = _Unpickler(handle, dtypes)  # every pickle of the file goes through it
        try:
            if unpickler.load() != _MAGIC:
                raise UserError(f"{path} is not a legacy torch.save file (bad magic number)")
            unpickler.load()  # protocol version
            info = unpickler.load()
            if not isinstance(info, dict) or not info.get("little_endian", False):
                raise UserError(f"{path} was not saved little-endian; spa reads little-endian only")
            result = unpickler.load()
            keys = unpickler.load()
            storages = {}
            for key in keys:
                count = int.from_bytes(handle.read(8), "little")
                dtype = np.dtype(dtypes[key])
                storages[key] = np.frombuffer(handle.read(count * dtype.itemsize), dtype=dtype)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as error:
            raise UserError(f"{path} is not a readable legacy torch.save file ({error})") from None
    return _materialize(result, storages)
