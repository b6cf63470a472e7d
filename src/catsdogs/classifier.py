"""A trained classifier as one object: class names, predictions on files and arrays, explanations.

`catsdogs.load(path)` returns one from a run directory, a .keras file or an export folder;
`catsdogs.train(...).classifier` is the one a run just made. Every runtime (Keras, SavedModel,
ONNX, TFLite) predicts through the same decoding, resizing and views (`inference.run_on_files`).
"""

import dataclasses
import os

import numpy as np

from catsdogs import runtimes
from catsdogs.config import INFERENCE_BATCH_SIZE
from catsdogs.data import list_files
from catsdogs.errors import ConfigError
from catsdogs.inference import VIEWS, run_on_files, views_for
from catsdogs.model import ModelInfo, predicted_classes, probabilities_by_class


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The prediction for one file: its label and probabilities, or why it has none.

    Attributes:
        path: the file.
        label: the predicted class (None on error).
        probability: the probability of that class.
        probabilities: class name -> probability.
        error: why the file could not be predicted (None when it was).
    """

    path: str
    label: str = None
    probability: float = None
    probabilities: dict = None
    error: str = None

    def to_dict(self) -> dict:
        """The fields that are set: path, label, probability, probabilities; or path and error."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def to_row(self, classes) -> dict:
        """One flat row for a table (Parquet): every field, None where unset, with `probabilities`
        spread into one column per class, p_<class>, so that error rows have the same columns.

        Args:
            classes: the class names, in the order of the columns.
        """
        row = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "probabilities":
                row.update({f"p_{name}": (value or {}).get(name) for name in classes})
            else:
                row[field.name] = value
        return row


def expand_inputs(inputs) -> list:
    """Files as given and every non-hidden file below the given folders, in a stable order."""
    paths = []
    for item in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
        item = os.fspath(item)
        paths += list_files(item) if os.path.isdir(item) else [item]
    return paths


class Classifier:
    """A trained catsdogs model in its runtime.

    Attributes:
        runtime: what runs it (`runtimes.KerasRuntime` or an `runtimes.ExportedModel`).
        info: class names, backbone, input size, threshold and temperature.
    """

    def __init__(self, runtime):
        """Args:
            runtime: from `runtimes.load`, or a `runtimes.KerasRuntime` of a model in memory.
        """
        self.runtime = runtime
        self.info: ModelInfo = runtime.info

    @property
    def classes(self) -> list:
        """The class names, in the order of the probabilities."""
        return list(self.info.class_names)

    @property
    def model(self):
        """The end-to-end `keras.Model` (raw pixels in, probabilities out), or None for an export."""
        return getattr(self.runtime, "model", None)

    def __repr__(self):
        return (f"Classifier(classes={self.classes}, backbone={self.info.backbone!r}, "
                f"image_size={self.info.image_size}, runtime={self.runtime.runtime!r})")

    def probabilities_of_files(self, paths, tta=False, batch_size=INFERENCE_BATCH_SIZE, desc="predict"):
        """Class probabilities of image files, averaged over the views.

        Returns:
            `inference.Outputs` whose values are (views, files, classes).
        """
        return run_on_files(self.runtime, list(paths), self.info.image_size, batch_size, views_for(tta), desc)

    def predict(self, inputs, tta: bool = False, batch_size: int = INFERENCE_BATCH_SIZE) -> list:
        """Predicts every image among the inputs; an unreadable file gets an error, not an exception.

        Args:
            inputs: image files and folders (every non-hidden file below a folder), or one of them.
            tta: average the probabilities of the photo and its mirror image.
            batch_size: images per forward pass.

        Returns:
            one `Prediction` per file, in order.
        """
        paths = expand_inputs(inputs)
        return self.predictions(paths, self.probabilities_of_files(paths, tta, batch_size))

    def predictions(self, paths, outputs) -> list:
        """The `Prediction` of each file from its probabilities: the model's decision rule applied.

        Args:
            paths: the files.
            outputs: their `inference.Outputs` (probabilities per view, which files have them, errors).

        Returns:
            one `Prediction` per file, in order.
        """
        probabilities = outputs.mean_over_views()
        labels = predicted_classes(probabilities, self.info.threshold) if len(paths) else []
        return [Prediction(path, self.classes[label], float(probs[label]), probabilities_by_class(self.classes, probs)) if ok
                else Prediction(path, error=outputs.errors[path])
                for path, probs, label, ok in zip(paths, probabilities, labels, outputs.ok)]

    def predict_arrays(self, pixels, tta: bool = False, batch_size: int = INFERENCE_BATCH_SIZE) -> np.ndarray:
        """Class probabilities of photos given as pixels.

        Args:
            pixels: (n, height, width, 3) RGB values in [0, 255] (uint8 or float), or a list of
                (height, width, 3) arrays of any sizes.
            tta: average the probabilities of the photo and its mirror image.
            batch_size: images per forward pass.

        Returns:
            (n, classes) probabilities, in the order of `classes`.
        """
        from catsdogs.backbones import resize_layer

        photos = [np.asarray(p) for p in pixels]
        for i, photo in enumerate(photos):
            if photo.ndim != 3 or photo.shape[-1] != 3 or 0 in photo.shape:
                raise ConfigError(f"photo {i}: expected RGB pixels of shape (height, width, 3), got {photo.shape}")
        resize = resize_layer(self.info.image_size)
        resized = np.stack([np.asarray(resize(photo[None].astype(np.float32)))[0] for photo in photos]) \
            if photos else np.zeros((0, self.info.image_size, self.info.image_size, 3), np.float32)
        views = views_for(tta)
        batches = [np.mean([self.runtime(VIEWS[view](resized[i:i + batch_size])) for view in views], axis=0)
                   for i in range(0, len(resized), batch_size)]
        return np.concatenate(batches) if batches else np.zeros((0, len(self.classes)), np.float32)

    def explainer(self):
        """A Grad-CAM `explain.Explainer` of this classifier (Keras models only)."""
        from catsdogs.explain import Explainer

        if self.model is None:
            raise ConfigError(f"Grad-CAM needs the Keras model; this classifier runs a {self.runtime.runtime} "
                              f"export: load its run directory or .keras file instead")
        return Explainer(self.model)


def load(path, runtime: str = None) -> Classifier:
    """Loads a classifier from a run directory, a .keras file or an export folder.

    Args:
        path: the run directory, model file or export folder (or the exported file in it).
        runtime: one of `config.RUNTIMES`, checked against what `path` holds; None: whatever it holds.

    Returns:
        a `Classifier`.
    """
    return Classifier(runtimes.load(path, runtime))
