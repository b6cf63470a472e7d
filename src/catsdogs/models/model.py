"""The end-to-end model: backbone and head assembled with their preprocessing and labels; saving and loading it."""

import dataclasses
import os

import keras
import numpy as np

from catsdogs.config.choices import LABEL_SEPARATOR
from catsdogs.errors import ModelNotFoundError
from catsdogs.models.backbones import backbone_name
from catsdogs.models.layers import ClassProbabilities, LabelProbabilities, resize_layer
from catsdogs.store import run_dir
from catsdogs.utils.files import atomic_path

SCORE = "in_distribution_score"  # the model's second output, where it has an open-set score
OPEN_SET_LAYER = "in_distribution"
# Outputs asked for on top (`ModelParts.outputs_from_features(similar=k)`): the k training photos of the
# kNN bank nearest to each photo, as rows of the bank, and their cosine similarities.
SIMILAR_ROWS = "similar_rows"
SIMILARITIES = "similarities"


def assemble(extractor, head, class_names, temperature=1.0, threshold=0.5, open_set=None, multi_label=False,
             label_separator=LABEL_SEPARATOR):
    """One end-to-end model: RGB pixels of any size in [0, 255] in, class probabilities out.

    Args:
        extractor: the backbone from `backbones.build_feature_extractor`.
        head: a Keras head (`heads.LinearHead(...).to_keras()` or `DenseHead`'s), trained on that backbone's features.
        class_names: in label order.
        temperature: logits are divided by it (calibration); multi-label: one per label.
        threshold: for two classes, the probability of the second at which it is predicted; multi-label:
            one per label, at which that label is predicted.
        open_set: an `models.layers.InDistributionScore` fitted on the same features, or None.
        multi_label: a probability per label (`layers.LabelProbabilities`, independent sigmoids) instead
            of one per class summing to 1 (`layers.ClassProbabilities`).
        label_separator: multi-label: what joins a photo's labels in tables (stored with the model).

    Returns:
        a `keras.Model` named "catsdogs": its output is the probabilities, or with `open_set` a
        dict {"probabilities": (n, classes), "in_distribution_score": (n,)}.
    """
    image = keras.Input((None, None, 3), name="image")
    x = resize_layer(extractor.input_shape[1])(image)
    features = extractor(x)
    logits = head(features)
    if multi_label:
        layer = LabelProbabilities(class_names, temperature, threshold, label_separator, name="probabilities")
    else:
        layer = ClassProbabilities(class_names, temperature, threshold, name="probabilities")
    probabilities = layer(logits)
    if open_set is None:
        return keras.Model(image, probabilities, name="catsdogs")
    return keras.Model(image, {"probabilities": probabilities, SCORE: open_set([features, logits])}, name="catsdogs")


@dataclasses.dataclass
class ModelParts:
    """The layers of an end-to-end model (`assemble`) by their role, for code that runs it in pieces:
    exporters start after the resize layer, Grad-CAM needs the backbone's last block.

    The names of the model's layers are known here and nowhere else.
    """

    resize: keras.layers.Layer
    extractor: keras.Model
    head: keras.Model
    probabilities: ClassProbabilities  # or a multi-label model's `layers.LabelProbabilities`
    open_set: keras.layers.Layer = None  # the `layers.InDistributionScore`, where the model has one

    @property
    def bank_size(self) -> int:
        """How many training photos the open-set score's kNN bank holds (0: the model has no bank)."""
        return self.open_set.bank_size if self.open_set is not None and "knn" in self.open_set.methods else 0

    def outputs_from_features(self, features, similar=0):
        """The model's outputs from the extractor's features: {"probabilities"[, "in_distribution_score"]};
        with `similar` (at most `bank_size`), also SIMILARITIES and SIMILAR_ROWS (`InDistributionScore.nearest`)."""
        logits = self.head(features, training=False)
        outputs = {"probabilities": self.probabilities(logits)}
        if self.open_set is not None:
            outputs[SCORE] = self.open_set([features, logits])
        if similar:
            outputs[SIMILARITIES], outputs[SIMILAR_ROWS] = self.open_set.nearest(features, similar)
        return outputs


def parts(model) -> ModelParts:
    """The layers of a catsdogs model by their role (see `ModelParts`)."""
    return ModelParts(
        resize=model.get_layer("resize"),
        extractor=next(layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name != "head"),
        head=model.get_layer("head"), probabilities=model.get_layer("probabilities"),
        open_set=next((layer for layer in model.layers if layer.name == OPEN_SET_LAYER), None))


def outputs_as_dict(outputs):
    """A model's outputs as {"probabilities": ..., ["in_distribution_score": ...]}, whatever its version."""
    return dict(outputs) if isinstance(outputs, dict) else {"probabilities": outputs}


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
    layer (`models.layers.resize_layer`), so an exported model sees what the Keras model sees.

    Args:
        model: an end-to-end model from `assemble` (or loaded).

    Returns:
        a `keras.Model`: (batch, size, size, 3) float32 RGB pixels in [0, 255] in, one output
        (batch, classes) of class probabilities, followed by the in-distribution score as one more
        column where the model has one (one plain tensor is what every export format keeps in
        order; `inference.model_formats.split_outputs` takes it apart).
    """
    info = describe(model)
    float32 = parts(float32_model(model))
    pixels = keras.Input((info.image_size, info.image_size, 3), name="pixels")
    outputs = float32.outputs_from_features(float32.extractor(pixels))
    output = outputs["probabilities"]
    if SCORE in outputs:
        output = keras.layers.Concatenate(name="probabilities_and_score")(
            [output, keras.ops.expand_dims(outputs[SCORE], -1)])
    return keras.Model(pixels, output, name="catsdogs")


@dataclasses.dataclass
class ModelInfo:
    """What a saved model says about itself."""

    class_names: list
    backbone: str  # the --backbone value ("a+b" for an ensemble)
    image_size: int
    threshold: float  # None for a multi-label model: see `thresholds`
    temperature: float  # None for a multi-label model: see `temperatures`
    reject_threshold: float = None  # photos whose in-distribution score is below it are "unknown"; None: no score
    open_set: list = None  # the methods of the in-distribution score
    # A multi-label model's: each label's threshold and temperature, and what joins a photo's labels in tables.
    thresholds: list = None
    temperatures: list = None
    label_separator: str = None

    @property
    def multi_label(self) -> bool:
        """Whether the model answers a set of labels (each its own yes or no) rather than one class."""
        return self.thresholds is not None


def describe(model: keras.Model) -> ModelInfo:
    """What a catsdogs model says about itself: class names, backbone, input size, thresholds, temperature."""
    layers = parts(model)
    probabilities, open_set = layers.probabilities, layers.open_set
    multi_label = isinstance(probabilities, LabelProbabilities)
    return ModelInfo(probabilities.class_names, backbone_name(layers.extractor.name), layers.resize.height,
                     None if multi_label else probabilities.threshold,
                     None if multi_label else probabilities.temperature,
                     open_set.threshold if open_set else None, list(open_set.methods) if open_set else None,
                     **({"thresholds": probabilities.thresholds, "temperatures": probabilities.temperatures,
                         "label_separator": probabilities.separator} if multi_label else {}))


def probabilities_by_class(class_names, probabilities) -> dict:
    """{class name: probability} for one image, as plain floats (JSON-ready)."""
    return {name: float(p) for name, p in zip(class_names, probabilities)}


def predicted_classes(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The model's decision rule. Two classes: the second wins at `threshold`; more: the most probable."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(int)
    return probabilities.argmax(axis=1)


def save(model: keras.Model, path: str) -> None:
    """Writes the model atomically: a crash never leaves a half-written model file."""
    with atomic_path(path) as partial:
        model.save(partial)


def resolve_model_path(run_or_model) -> str:
    """The model file of a run directory, or the given .keras file.

    Raises:
        ModelNotFoundError: neither; or a model file in another format (.h5 models can carry code that
            Keras' safe mode does not check, so they are refused).
    """
    path = os.fspath(run_or_model)
    if os.path.isdir(path):
        path = os.path.join(path, run_dir.MODEL)
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"{run_or_model}: neither a run directory with {run_dir.MODEL} nor a .keras model file")
    if not path.endswith(".keras"):
        raise ModelNotFoundError(f"{run_or_model}: not a .keras model file; catsdogs loads models from run "
                                 f"directories and .keras files only (Keras' safe mode does not cover older "
                                 f"formats such as .h5, whose models can run code when loaded)")
    return path


def load(run_or_model) -> keras.Model:
    """Loads a catsdogs model from a run directory or a .keras file, in Keras' safe mode: a model from
    someone else cannot run Python code of its own (Lambda layers holding code are refused)."""
    return keras.models.load_model(resolve_model_path(run_or_model), safe_mode=True)
