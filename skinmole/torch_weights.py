"""Read a legacy PyTorch state dict without PyTorch and without trusting pickle.

The ImageNet weights we convert ship as a legacy (pre-zip) ``torch.save`` file. That format is a
series of pickles; a bare ``pickle.load`` would execute whatever the file names. This reader's
unpickler resolves only the handful of names a state dict of tensors needs and refuses the rest,
so a tampered file raises ``UnsafeWeightsError`` instead of running code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from pathlib import Path

import numpy as np
from .errors import UnsafeWeightsError  # noqa: F401  (defined in the leaf module; importable from here too)

_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.data: np.ndarray | None = None


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *extra):
    return ("tensor", storage, int(offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, stream, storages: dict):
        super().__init__(stream)
        self._storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeWeightsError(f"refusing to load {module}.{name}: only tensors are allowed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafeWeightsError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, _size = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeWeightsError("storage of an unknown type")
        return self._storages.setdefault(str(key), _Storage(storage_type.dtype))


def read_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{name: numpy array}`` from a legacy ``torch.save`` state-dict file."""
    raw = Path(path).read_bytes()
    stream = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}

    def next_pickle():
        return _RestrictedUnpickler(stream, storages).load()

    try:
        if next_pickle() != _MAGIC:
            raise UnsafeWeightsError(f"{path}: not a legacy PyTorch file (bad magic number)")
        next_pickle()  # protocol version
        next_pickle()  # sys info
        state = next_pickle()
        keys = next_pickle()
        for key in keys:
            storage = storages[str(key)]
            (count,) = struct.unpack("<q", stream.read(8))
            nbytes = count * storage.dtype.itemsize
            buf = stream.read(nbytes)
            if len(buf) != nbytes:
                raise UnsafeWeightsError(f"{path}: truncated storage {key}")
            storage.data = np.frombuffer(buf, dtype=storage.dtype)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, TypeError) as exc:
        raise UnsafeWeightsError(f"{path}: not a readable legacy state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise UnsafeWeightsError(f"{path}: top-level object is not a state dict")

    out = {}
    for name, value in state.items():
        if not (isinstance(value, tuple) and value and value[0] == "tensor"):
            raise UnsafeWeightsError(f"{path}: entry {name!r} is not a tensor")
        _, storage, offset, size, stride = value
        itemsize = storage.dtype.itemsize
        out[name] = np.lib.stride_tricks.as_strided(
            storage.data[offset:], shape=size, strides=[s * itemsize for s in stride]
        ).copy()
    return out
