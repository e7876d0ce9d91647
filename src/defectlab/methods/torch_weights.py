"""Read a PyTorch state dict saved in torch's legacy format into NumPy arrays, without torch.

Pretrained weights published for PyTorch (``.pth``) are pickles, and a pickle
is a program: loading one with `pickle.load` runs whatever callables it names.
This reader runs none. Its unpickler resolves only the handful of names that a
state dict needs (an ``OrderedDict``, torch's tensor-rebuild function and the
storage types), each to a stand-in defined here that records the tensor's
layout; any other name is refused before anything is called. The tensors'
bytes are then read as plain data with `numpy.frombuffer`.

The legacy format (``torch.save`` with ``_use_new_zipfile_serialization=False``,
and every ``torch.save`` before torch 1.6) is one file holding, in order:

1. a pickled magic number (`LEGACY_MAGIC_NUMBER`);
2. a pickled protocol version (`LEGACY_PROTOCOL_VERSION`);
3. a pickled ``sys_info`` dict (byte order, sizes of C ints);
4. the pickled object, here a state dict: an ``OrderedDict`` of name -> tensor,
   each tensor ``torch._utils._rebuild_tensor_v2(storage, storage_offset,
   size, stride, requires_grad, backward_hooks)`` whose ``storage`` is a
   persistent id ``('storage', storage_type, key, location, numel,
   view_metadata)``;
5. a pickled list of the storage keys;
6. for each key in that list's order, an 8-byte element count followed by the
   storage's raw elements, in the byte order that ``sys_info`` records.

Every problem with a file (not this format, truncated, a name outside the
allowed set, data shorter than declared) is one `WeightsFileError` line naming
the file, not a traceback from inside `pickle`.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from defectlab.methods.backbones import WeightsFileError

# torch.serialization.MAGIC_NUMBER and PROTOCOL_VERSION of the legacy format.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
# torch >= 1.6 writes a zip archive by default; that layout is not read here.
ZIP_SIGNATURE = b"PK\x03\x04"
# Storage types of the legacy format and the NumPy element type each holds
# (byte order is applied from the file's sys_info). BFloat16 and the complex
# types have no NumPy twin and are refused like any other unknown name.
STORAGE_DTYPES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "b1",
}


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for a ``torch.<Type>Storage`` class: only its element type.

    Frozen with slots so that a pickle's BUILD opcode cannot set attributes on
    the shared instances (there is no ``__dict__`` to write into).
    """

    name: str
    dtype: str


@dataclass(frozen=True, slots=True)
class _StorageRef:
    """One storage named by a persistent id: which root storage, and where a view starts in it."""

    key: str
    storage_type: _StorageType
    numel: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor whose bytes are not read yet: its storage and its layout in it (in elements)."""

    storage: _StorageRef
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _RebuildTensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records the layout, builds nothing.

    A callable instance rather than a module function, because a function has
    a writable ``__dict__`` and ``__defaults__`` that a pickle could alter.
    """

    def __call__(self, storage: Any, storage_offset: Any, size: Any, stride: Any,
                 *unused_requires_grad_hooks_and_metadata: Any) -> _TensorRef:
        if not isinstance(storage, _StorageRef):
            raise _FormatProblem(f"a tensor's storage is {type(storage).__name__}, not a storage id")
        if not (_is_int(storage_offset) and _is_int_tuple(size) and _is_int_tuple(stride)):
            raise _FormatProblem("a tensor's offset, size or stride is not made of integers")
        if len(size) != len(stride):
            raise _FormatProblem(f"a tensor has size {size} but stride {stride}")
        return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _FormatProblem(Exception):
    """Internal: the file breaks the format; turned into a `WeightsFileError` naming the file."""


# The only names a legacy state-dict pickle may load, each mapped to what it
# resolves to. OrderedDict is the real class: it is a container that runs no
# code of the file's choosing, and torch sets a ``_metadata`` attribute on it
# (a BUILD opcode) that a plain dict could not take.
ALLOWED_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor_v2": _RebuildTensor(),
    **{f"torch.{name}": _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(_is_int(item) for item in value)


class _StateDictUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `ALLOWED_GLOBALS` and records storages instead of loading them.

    Parameters
    ----------
    file : binary file
        Positioned at the start of one pickle.
    path : Path
        The file's path, for messages.
    storages : dict or None
        Root storages seen so far (key -> `_StorageRef`), filled in by
        `persistent_load`; None where the pickle may hold no storages (the
        header pickles and the key list).
    """

    def __init__(self, file: BinaryIO, path: Path, storages: dict[str, _StorageRef] | None):
        # utf-8: how torch decodes Python 2 byte strings in old checkpoints.
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[qualified]
        raise WeightsFileError(
            f"weights file {self._path}: refusing to load {qualified!r} from a weights pickle: "
            f"it may hold only tensors (allowed: {', '.join(sorted(ALLOWED_GLOBALS))})"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        if self._storages is None:
            raise _FormatProblem(f"a storage id {pid!r} outside the state dict")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise _FormatProblem(f"persistent id {pid!r} is not a legacy storage id")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise _FormatProblem(f"storage {key!r} has type {storage_type!r}, not a storage type")
        if not (isinstance(key, str) and _is_int(numel) and numel >= 0):
            raise _FormatProblem(f"storage id {pid!r} has a bad key or element count")
        root = self._storages.setdefault(key, _StorageRef(key, storage_type, numel))
        if root.storage_type != storage_type or root.numel != numel:
            raise _FormatProblem(f"storage {key!r} is declared twice with different types or sizes")
        if view_metadata is None:
            return root
        # Very old torch saved views of a storage: (view_key, offset, view_size), in elements.
        if not (isinstance(view_metadata, tuple) and len(view_metadata) == 3
                and _is_int(view_metadata[1]) and _is_int(view_metadata[2])):
            raise _FormatProblem(f"storage {key!r} has bad view metadata {view_metadata!r}")
        _view_key, view_offset, view_size = view_metadata
        if view_offset < 0 or view_size < 0 or view_offset + view_size > numel:
            raise _FormatProblem(f"a view of storage {key!r} lies outside its {numel} elements")
        return _StorageRef(key, storage_type, view_size, view_offset)


def _load_pickle(handle: BinaryIO, path: Path, what: str,
                 storages: dict[str, _StorageRef] | None = None) -> Any:
    """Unpickle the next pickle of the file safely; any failure is one `WeightsFileError` line."""
    try:
        return _StateDictUnpickler(handle, path, storages).load()
    except WeightsFileError:
        raise
    except _FormatProblem as problem:
        raise WeightsFileError(f"weights file {path}: not a valid torch state dict: {problem}") from None
    except (EOFError, pickle.UnpicklingError) as error:
        if not isinstance(error, EOFError) and "truncated" not in str(error):
            raise WeightsFileError(
                f"weights file {path} is damaged: cannot read the {what} ({str(error)[:200]})"
            ) from None
        raise WeightsFileError(
            f"weights file {path} is truncated: it ends inside the {what}"
        ) from None
    except Exception as error:  # pickle raises many types for damaged data; all mean the same here
        raise WeightsFileError(
            f"weights file {path} is damaged or truncated: cannot read the {what} "
            f"({type(error).__name__}: {str(error)[:200]})"
        ) from None


def _read_storage_data(handle: BinaryIO, path: Path, storage: _StorageRef,
                       little_endian: bool) -> np.ndarray:
    """Read one storage's element count and raw elements, checking both against its declaration."""
    byte_order = "<" if little_endian else ">"
    count_bytes = handle.read(8)
    if len(count_bytes) < 8:
        raise WeightsFileError(
            f"weights file {path} is truncated: it ends before the data of storage {storage.key!r}"
        )
    (count,) = struct.unpack(byte_order + "q", count_bytes)
    if count != storage.numel:
        raise WeightsFileError(
            f"weights file {path} is damaged: storage {storage.key!r} declares {storage.numel} "
            f"elements but its data says {count}"
        )
    dtype = np.dtype(byte_order + storage.storage_type.dtype)
    expected = count * dtype.itemsize
    data = handle.read(expected)
    if len(data) < expected:
        raise WeightsFileError(
            f"weights file {path} is truncated: storage {storage.key!r} needs {expected} bytes "
            f"of data but the file holds only {len(data)} more"
        )
    # Native byte order, so the arrays behave like any other.
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)


def _materialize(name: str, tensor: _TensorRef, storage_data: np.ndarray, path: Path) -> np.ndarray:
    """Cut one tensor out of its storage's elements as a C-contiguous copy, after a bounds check."""
    start = tensor.storage.offset + tensor.storage_offset
    if tensor.storage_offset < 0 or any(step < 0 for step in tensor.stride) or any(
            extent < 0 for extent in tensor.size):
        raise WeightsFileError(
            f"weights file {path}: tensor {name!r} has a negative offset, size or stride"
        )
    if 0 in tensor.size:
        return np.zeros(tensor.size, dtype=storage_data.dtype)
    # A stride-0 (broadcast) tensor could claim far more elements than its file
    # holds and exhaust memory on the copy; a state dict's tensors never do that.
    if int(np.prod(tensor.size, dtype=object)) > tensor.storage.numel:
        raise WeightsFileError(
            f"weights file {path}: tensor {name!r} of size {tensor.size} has more elements than "
            f"the {tensor.storage.numel} of its storage"
        )
    last = start + sum((extent - 1) * step for extent, step in zip(tensor.size, tensor.stride))
    if last >= tensor.storage.offset + tensor.storage.numel:
        raise WeightsFileError(
            f"weights file {path}: tensor {name!r} (size {tensor.size}, stride {tensor.stride}, "
            f"offset {tensor.storage_offset}) reaches past the {tensor.storage.numel} elements "
            f"of its storage"
        )
    itemsize = storage_data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage_data[start:], shape=tensor.size,
        strides=tuple(step * itemsize for step in tensor.stride), writeable=False,
    )
    return np.array(view, order="C", copy=True)


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a state dict saved by ``torch.save`` in the legacy (non-zip) format, without torch.

    Parameters
    ----------
    path : str or Path
        The ``.pth`` / ``.pt`` file.

    Returns
    -------
    dict of str to numpy.ndarray
        The tensors by their state-dict names, in the file's order, each a
        C-contiguous copy with the tensor's shape and element type.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    WeightsFileError
        The file is not a legacy torch file (wrong magic number, a zip-format
        file), is truncated or damaged, names anything but the state-dict
        classes (for example ``os.system``), or holds something other than a
        mapping of names to tensors. The message is one line naming the file.
    """
    path = Path(path)
    with open(path, "rb") as file:
        raw = file.read()
    if raw.startswith(ZIP_SIGNATURE):
        raise WeightsFileError(
            f"weights file {path} is a zip-format torch file (torch >= 1.6 default); only the legacy "
            f"format is read here: re-save it with torch.save(..., _use_new_zipfile_serialization=False)"
        )
    handle = io.BytesIO(raw)
    magic = _load_pickle(handle, path, "magic number")
    if not (_is_int(magic) and magic == LEGACY_MAGIC_NUMBER):
        raise WeightsFileError(
            f"weights file {path} is not a legacy torch file: it does not start with torch's "
            f"magic number (found {str(magic)[:60]!r})"
        )
    protocol = _load_pickle(handle, path, "protocol version")
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise WeightsFileError(
            f"weights file {path} has torch protocol version {protocol!r}, "
            f"not {LEGACY_PROTOCOL_VERSION}"
        )
    sys_info = _load_pickle(handle, path, "sys_info header")
    if not isinstance(sys_info, dict):
        raise WeightsFileError(f"weights file {path}: its sys_info header is not a dict")
    little_endian = bool(sys_info.get("little_endian", True))

    storages: dict[str, _StorageRef] = {}
    state = _load_pickle(handle, path, "state dict", storages)
    if not isinstance(state, dict):
        raise WeightsFileError(
            f"weights file {path} holds a {type(state).__name__}, not a state dict "
            f"(a mapping of names to tensors)"
        )
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise WeightsFileError(
                f"weights file {path}: state dict entry {name!r} is a {type(value).__name__}, "
                f"not a tensor"
            )

    keys = _load_pickle(handle, path, "list of storage keys")
    if not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
        raise WeightsFileError(f"weights file {path}: its list of storage keys is not a list of names")
    if len(set(keys)) != len(keys):
        raise WeightsFileError(f"weights file {path} is damaged: its list of storage keys repeats a key")
    unknown = [key for key in keys if key not in storages]
    missing = [key for key in storages if key not in keys]
    if unknown or missing:
        raise WeightsFileError(
            f"weights file {path} is damaged: storage keys listed without tensors {unknown[:5]}, "
            f"used by tensors but not listed {missing[:5]}"
        )
    storage_data = {
        key: _read_storage_data(handle, path, storages[key], little_endian) for key in keys
    }
    return {
        name: _materialize(name, tensor, storage_data[tensor.storage.key], path)
        for name, tensor in state.items()
    }
