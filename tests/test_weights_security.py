"""Files from others are data, never code: PyTorch checkpoints, weights files, models and feature-cache chunks.

Every checkpoint here is written by the test itself in the legacy PyTorch layout: five pickles
(magic number, protocol version, system info, the state dict with persistent ids, the storage key
list), then each storage as an int64 element count followed by its bytes.
"""

import hashlib
import os
import pickle
import pickletools
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from catsdogs.errors import ConfigError, ModelNotFoundError, WeightsError
from catsdogs.models import backbones, weights
from catsdogs.models import model as model_lib
from catsdogs.models.torch_checkpoint import MAGIC_NUMBER, PROTOCOL_VERSION, read_torch_checkpoint
from catsdogs.store import feature_cache as features

SYSTEM_INFO = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
               "type_sizes": {"short": 2, "int": 4, "long": 4}}

# Storage key -> elements; tensor name -> (storage type, storage key, declared element count, offset, shape, strides).
STORAGES = {"0": np.arange(6, dtype="<f4"), "1": np.array([0.5, -1.5, 2.5], "<f4"), "2": np.array([7], "<i8")}
TENSORS = {
    "a.weight": ("FloatStorage", "0", 6, 0, (2, 3), (3, 1)),
    "a.weight_t": ("FloatStorage", "0", 6, 0, (3, 2), (1, 3)),  # a transposed view of the same storage
    "a.tail": ("FloatStorage", "0", 6, 4, (2,), (1,)),
    "a.bias": ("FloatStorage", "1", 3, 0, (3,), (1,)),
    "bn.num_batches_tracked": ("LongStorage", "2", 1, 0, (), ()),
}
PICKLES = ("magic", "protocol", "system", "state", "keys")


def _global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def _value(value):
    """The opcodes that push a plain value, without the PROTO header and the STOP."""
    return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]


EMPTY_ORDERED_DICT = _global("collections", "OrderedDict") + b")R"  # EMPTY_TUPLE, REDUCE


def state_dict_pickle(tensors):
    """The state dict pickle that torch.save writes for `tensors` (as TENSORS)."""
    items = b""
    for name, (storage_type, key, count, offset, shape, strides) in tensors.items():
        # MARK "storage" type key location count NONE TUPLE, then BINPERSID.
        storage = (b"(" + _value("storage") + _global("torch", storage_type) + _value(key) + _value("cpu")
                   + _value(count) + b"NtQ")
        # _rebuild_tensor_v2(storage, offset, shape, strides, requires_grad=False, OrderedDict()).
        arguments = b"(" + storage + _value(offset) + _value(shape) + _value(strides) + b"\x89" + EMPTY_ORDERED_DICT
        items += _value(name) + _global("torch._utils", "_rebuild_tensor_v2") + arguments + b"tR"
    return b"\x80\x02" + EMPTY_ORDERED_DICT + b"(" + items + b"u."  # MARK items SETITEMS STOP


def write_checkpoint(path, tensors=TENSORS, storages=STORAGES, counts=None, **pickles):
    """Writes a legacy PyTorch checkpoint.

    Args:
        path: the file.
        tensors, storages: as TENSORS and STORAGES.
        counts: {storage key: the element count to write before its bytes}, where not its true count.
        **pickles: raw bytes for any of the five pickles, by their names in PICKLES.
    """
    parts = {"magic": pickle.dumps(MAGIC_NUMBER, 2), "protocol": pickle.dumps(PROTOCOL_VERSION, 2),
             "system": pickle.dumps(SYSTEM_INFO, 2), "state": state_dict_pickle(tensors),
             "keys": pickle.dumps(list(storages), 2), **pickles}
    with open(path, "wb") as f:
        f.write(b"".join(parts[name] for name in PICKLES))
        for key, values in storages.items():
            f.write(struct.pack("<q", (counts or {}).get(key, values.size)) + values.tobytes())
    return path


class CreatesFile:
    """Unpickled, opens its file for writing: the proof that a pickle ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_the_poison_runs_code_under_a_plain_unpickler(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(CreatesFile(marker), 2)).close()
    assert marker.exists()


@pytest.mark.parametrize("poisoned", PICKLES)
def test_a_poisoned_pickle_is_refused_and_never_run(tmp_path, poisoned):
    marker = tmp_path / "ran"
    path = write_checkpoint(tmp_path / "x.pth", **{poisoned: pickle.dumps(CreatesFile(marker), 2)})
    with pytest.raises(WeightsError, match=re.escape(f"{path}: its ") + ".*refers to 'io.open'"):
        read_torch_checkpoint(path)
    assert not marker.exists()


def test_a_well_formed_checkpoint_reads_into_the_arrays_it_holds(tmp_path):
    arrays = read_torch_checkpoint(write_checkpoint(tmp_path / "x.pth"))
    weight = np.arange(6, dtype="<f4").reshape(2, 3)
    expected = {"a.weight": weight, "a.weight_t": weight.T, "a.tail": np.array([4, 5], "<f4"),
                "a.bias": STORAGES["1"], "bn.num_batches_tracked": np.array(7, "<i8")}
    assert list(arrays) == list(expected)
    for name, array in arrays.items():
        assert array.dtype == expected[name].dtype and np.array_equal(array, expected[name]), name


# The digests of the arrays that the reader before the restricted one (commit c87dfbb, a plain
# pickle.load and as_strided) read from the genuine checkpoints.
GENUINE_DIGESTS = {
    "efficientnet_lite0": "d2f76e5e06f76652df4ddfbe384340def7fd0ed0193d4fec67c7f98fa7cb3f67",
    "efficientnet_lite1": "fe6874b6bbe885597eb629a3f6ae0699e752b1d8b19c755cea146613ee46a9d2",
    "efficientnet_lite2": "4d233d0ed79015c20a04fe5ba081ab9705bb0d03c5a2041f6f1de3a3121df762",
}


@pytest.mark.parametrize("name", sorted(GENUINE_DIGESTS))
def test_genuine_lite_checkpoints_read_as_before(name):
    state = read_torch_checkpoint(weights.lite_checkpoint(name))
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(f"{key}:{state[key].dtype.str}:{state[key].shape}:".encode() + state[key].tobytes())
    assert digest.hexdigest() == GENUINE_DIGESTS[name]


def _changed(name, **fields):
    """TENSORS with one tensor's fields changed."""
    storage_type, key, count, offset, shape, strides = TENSORS[name]
    spec = dict(storage_type=storage_type, key=key, count=count, offset=offset, shape=shape, strides=strides)
    return {**TENSORS, name: tuple({**spec, **fields}.values())}


def _truncated(path):
    write_checkpoint(path)
    os.truncate(path, os.path.getsize(path) - 4)


MALFORMED = {
    # name: (how to write it, what the refusal says)
    "stride past its storage": (lambda p: write_checkpoint(p, _changed("a.weight", strides=(3, 1000))),
                                "tensor 'a.weight' reads past its storage"),
    "stride far outside the file": (lambda p: write_checkpoint(p, _changed("a.weight", strides=(2**40, 1))),
                                    "tensor 'a.weight' reads past its storage"),
    "offset past its storage": (lambda p: write_checkpoint(p, _changed("a.weight", offset=5)),
                                "tensor 'a.weight' reads past its storage"),
    "negative stride": (lambda p: write_checkpoint(p, _changed("a.weight", strides=(-3, 1))),
                        "tensor 'a.weight': its offset, shape and strides are not non-negative integers"),
    "negative offset": (lambda p: write_checkpoint(p, _changed("a.weight", offset=-6)),
                        "tensor 'a.weight': its offset, shape and strides are not non-negative integers"),
    "zero strides over a small storage": (
        lambda p: write_checkpoint(p, _changed("a.bias", shape=(2**40,), strides=(0,))),
        "tensor 'a.bias' has more elements than its storage holds"),
    "truncated storage": (_truncated, "storage '2' needs 8 bytes, but only 4 are left in the file"),
    "count larger than the file": (
        lambda p: write_checkpoint(p, _changed("a.bias", count=2**40), counts={"1": 2**40}),
        f"storage '1' needs {4 * 2**40} bytes, but only"),
    "count unlike its tensors'": (lambda p: write_checkpoint(p, counts={"1": 2}),
                                  "storage '1' holds 2 elements, but its tensors declare 3"),
    "unknown storage type": (lambda p: write_checkpoint(p, _changed("a.bias", storage_type="ByteStorage")),
                             "storage type 'torch.ByteStorage' is not supported"),
    "storage missing": (lambda p: write_checkpoint(p, storages={k: STORAGES[k] for k in ("0", "2")}),
                        "storage '1' is declared by a tensor, but not in the file"),
    "key list of ints": (lambda p: write_checkpoint(p, keys=pickle.dumps([0, 1, 2], 2)),
                         "its storage key list is not a list of str"),
    "entry not a tensor": (lambda p: write_checkpoint(p, storages={}, state=pickle.dumps({"a.weight": 1}, 2)),
                           "entry 'a.weight' of its state dict is not a tensor"),
    "bad magic number": (lambda p: write_checkpoint(p, magic=pickle.dumps(42, 2)),
                         "not a PyTorch checkpoint (bad magic number)"),
    "not a pickle": (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64)),
                     "its magic number is not a readable pickle"),
    "other protocol": (lambda p: write_checkpoint(p, protocol=pickle.dumps(1000, 2)),
                       "its protocol version is not 1001"),
    "big-endian": (lambda p: write_checkpoint(p, system=pickle.dumps({**SYSTEM_INFO, "little_endian": False}, 2)),
                   "does not say little-endian"),
    "zip format": (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(64)), "a zip-format PyTorch checkpoint"),
    # PROTO 2, NONE, LONG_BINPUT 2**28: the unpickler would make (and fill) a memo of 2**29 entries, 4 GiB.
    "memo index beyond the pickle": (
        lambda p: write_checkpoint(p, magic=b"\x80\x02Nr" + struct.pack("<I", 2**28) + b"."),
        "its magic number has a memo index (268435456) beyond its 2 opcodes"),
}

# Reads a checkpoint in a process of its own, with at most 3 GiB of memory, so that a reader that
# reads out of bounds or allocates what a file asks fails the test (by what it prints, or by dying)
# instead of crashing the test run or exhausting the machine's memory.
READ_IN_A_SUBPROCESS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from catsdogs.errors import WeightsError
from catsdogs.models.torch_checkpoint import read_torch_checkpoint
try:
    arrays = read_torch_checkpoint(sys.argv[1])
except WeightsError as error:
    print("refused:", error)
else:
    print("read:", {name: array.shape for name, array in arrays.items()})
"""


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_checkpoint_is_refused_naming_the_file_and_its_fault(tmp_path, case):
    write, fault = MALFORMED[case]
    path = tmp_path / "x.pth"
    write(path)
    result = subprocess.run([sys.executable, "-c", READ_IN_A_SUBPROCESS, str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"the reader died ({result.returncode}): {result.stderr[-2000:]}"
    assert result.stdout.startswith(f"refused: {path}: "), result.stdout
    assert fault in result.stdout, result.stdout


def test_weights_files_are_checked_for_a_kind_that_holds_no_code(tmp_path):
    pth = write_checkpoint(tmp_path / "x.pth")
    with pytest.raises(ConfigError, match=re.escape(f"{pth}: not a weights file this backbone reads; expected "
                                                    f"imagenet, random or a file ending in .weights.h5 (Keras "
                                                    f"weights), .h5 (Keras weights, older layout)")):
        backbones.check_weights("resnet50", str(pth))
    other = tmp_path / "x.bin"
    other.write_bytes(b"")
    with pytest.raises(ConfigError, match=re.escape(".pth (legacy PyTorch checkpoint)")):
        backbones.check_weights("efficientnet_lite0", str(other))
    with pytest.raises(WeightsError, match="not a weights file this backbone reads"):
        backbones.build_feature_extractor("efficientnet_lite0", weights=str(other))
    backbones.check_weights("efficientnet_lite0", str(pth))  # a checkpoint: read by the restricted reader


def test_a_poisoned_checkpoint_given_as_weights_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    path = write_checkpoint(tmp_path / "x.pth", state=pickle.dumps({"a.weight": CreatesFile(marker)}, 2))
    with pytest.raises(WeightsError, match=re.escape(f"{path}: its state dict refers to 'io.open'")):
        backbones.build_feature_extractor("efficientnet_lite0", weights=str(path), image_size=64)
    assert not marker.exists()


def test_models_in_other_formats_than_keras_are_refused(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.save(tmp_path / "model.h5")  # the legacy format, which Keras still loads
    with pytest.raises(ModelNotFoundError, match=re.escape(f"{tmp_path / 'model.h5'}: not a .keras model file")):
        model_lib.load(tmp_path / "model.h5")


def test_keras_models_load_in_safe_mode(tmp_path):
    import keras

    marker, path = tmp_path / "ran", tmp_path / "lambda.keras"
    # A Lambda layer keeps its function's bytecode in the file; building the model runs it once.
    inputs = keras.Input((2,))
    function = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")
    keras.Model(inputs, keras.layers.Lambda(function)(inputs)).save(path)
    marker.unlink()
    with pytest.raises(ValueError, match="safe_mode"):
        model_lib.load(path)
    assert not marker.exists()
    keras.models.load_model(path, safe_mode=False)  # the proof that the file would have run code
    assert marker.exists()


def test_a_feature_cache_chunk_holding_objects_is_skipped_not_unpickled(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "features" / "key"
    features.write_chunk(str(folder), ["good"], np.ones((1, 4), np.float32))
    np.savez(folder / "chunk-objects.npz", hashes=np.array([CreatesFile(marker)], dtype=object),
             features=np.zeros((1, 4), np.float32))
    cache = features.FeatureCache(str(tmp_path), "key")
    assert list(cache.features) == ["good"]
    assert not marker.exists()
