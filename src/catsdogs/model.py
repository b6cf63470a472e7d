"""The classifier: heads on backbone features, the end-to-end model, saving and loading it."""

import dataclasses
import os

import keras
import numpy as np
from keras import layers

from catsdogs.backbones import resize_layer
from catsdogs.config import HEADS
from catsdogs.layers import ClassProbabilities

MODEL_FILE = "model.keras"


def build_head(feature_dim, num_classes, kind="linear", hidden_units=(256,), dropout=0.5, l2=0.0):
    """A small classifier on pooled features: features in, logits out.

    Args:
        feature_dim: length of the backbone's feature vector.
        num_classes: two gives one logit (sigmoid), more give one logit per class (softmax).
        kind: "linear" (one logistic/softmax layer on the features, fitted by
            `train.fit_linear_head`) or "dense" (the study's fully connected hidden layers with
            dropout, trained by gradient descent).
        hidden_units: sizes of the hidden layers of a dense head.
        dropout: dropout rate after each hidden layer.
        l2: L2 penalty on the dense head's kernels.

    Returns:
        a `keras.Model` named "head".
    """
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")
    regularizer = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    for i, units in enumerate(hidden_units if kind == "dense" else ()):
        x = layers.Dense(units, activation="relu", kernel_regularizer=regularizer, name=f"hidden{i}")(x)
        x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    logits = layers.Dense(1 if num_classes == 2 else num_classes, kernel_regularizer=regularizer, name="logits")(x)
    return keras.Model(inputs, logits, name="head")


def compile_classifier(model, binary, learning_rate):
    """Compiles a model that outputs logits: cross-entropy from logits, accuracy, Adam."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True) if binary
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy") if binary
                 else keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def assemble(extractor, head, class_names, temperature=1.0, threshold=0.5):
    """One end-to-end model: RGB pixels of any size in [0, 255] in, class probabilities out.

    Args:
        extractor: the backbone from `backbones.build_feature_extractor`.
        head: from `build_head`, trained on that backbone's features.
        class_names: in label order.
        temperature: logits are divided by it (calibration).
        threshold: for two classes, the probability of the second at which it is predicted.

    Returns:
        a `keras.Model` named "catsdogs".
    """
    image = keras.Input((None, None, 3), name="image")
    x = resize_layer(extractor.input_shape[1])(image)
    logits = head(extractor(x))
    probabilities = ClassProbabilities(class_names, temperature, threshold, name="probabilities")(logits)
    return keras.Model(image, probabilities, name="catsdogs")


def compute_precision(model):
    """"bfloat16" if any layer of the model computes in bfloat16 (mixed precision), else "float32"."""
    layers_below = [model]
    while layers_below:
        layer = layers_below.pop()
        if layer.compute_dtype == "bfloat16":
            return "bfloat16"
        layers_below += getattr(layer, "layers", [])
    return "float32"


def _float32_layer(layer):
    return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})


def float32_model(model):
    """The same model, with the same weights, computing in float32 throughout."""
    float32 = keras.models.clone_model(model, clone_function=_float32_layer, recursive=True)
    float32.set_weights(model.get_weights())
    return float32


def fixed_size_model(model):
    """The model after its resize layer, computing in float32, for exporters.

    Exporters need a fixed input shape, and ONNX Runtime and TFLite have no bfloat16
    convolutions on CPU. Resizing is left to the runtime's input pipeline, which uses the same
    layer (`backbones.resize_layer`), so an exported model sees what the Keras model sees.

    Args:
        model: an end-to-end model from `assemble` (or loaded).

    Returns:
        a `keras.Model`: (batch, size, size, 3) float32 RGB pixels in [0, 255] in, class
        probabilities out.
    """
    info = describe(model)
    float32 = float32_model(model)
    pixels = keras.Input((info.image_size, info.image_size, 3), name="pixels")
    features = float32.get_layer(info.backbone)(pixels)
    probabilities = float32.get_layer("probabilities")(float32.get_layer("head")(features))
    return keras.Model(pixels, probabilities, name="catsdogs")


@dataclasses.dataclass
class ModelInfo:
    """What a saved model says about itself."""

    class_names: list
    backbone: str
    image_size: int
    threshold: float
    temperature: float


def logits_model(model):
    """The same model without its last layer: pixels in, logits out (for calibration)."""
    return keras.Model(model.input, model.get_layer("probabilities").input, name="logits")


def describe(model):
    probabilities = model.get_layer("probabilities")
    extractor = next(layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name != "head")
    return ModelInfo(probabilities.class_names, extractor.name, model.get_layer("resize").height,
                     probabilities.threshold, probabilities.temperature)


def predicted_classes(probabilities, threshold=0.5):
    """The model's decision rule. Two classes: the second wins at `threshold`; more: the most probable."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(int)
    return probabilities.argmax(axis=1)


def save(model, path):
    """Writes the model atomically: a crash never leaves a half-written model file."""
    partial = f"{path}.partial.keras"
    model.save(partial)
    os.replace(partial, path)


def resolve_model_path(run_or_model):
    """The model file of a run directory, or the given .keras file."""
    path = os.fspath(run_or_model)
    if os.path.isdir(path):
        path = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_or_model}: neither a run directory with {MODEL_FILE} nor a .keras model file")
    return path


def load(run_or_model):
    """Loads a catsdogs model from a run directory or a .keras file."""
    return keras.models.load_model(resolve_model_path(run_or_model))
