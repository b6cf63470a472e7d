"""A trained classifier as one object: class names, predictions on files and arrays, explanations.

`catsdogs.load(path)` returns one from a run directory, a .keras file or an export folder;
`catsdogs.train(...).classifier` is the one a run just made. Every runtime (Keras, SavedModel,
ONNX, TFLite) predicts through the same decoding, resizing and views (`inference.pipeline.run_on_files`).
"""

import dataclasses
import functools
import os

import numpy as np

from catsdogs.config.choices import INFERENCE_BATCH_SIZE, UNKNOWN_LABEL
from catsdogs.data.dataset import expand_inputs
from catsdogs.errors import ConfigError, DataError, UnsupportedError
from catsdogs.inference import model_formats as runtimes
from catsdogs.inference.pipeline import run_on_files
from catsdogs.inference.preprocess import VIEWS, prepare_batch, views_for
from catsdogs.inference.similar import read_training_photos
from catsdogs.models.model import (
    SCORE,
    SIMILAR_ROWS,
    SIMILARITIES,
    ModelInfo,
    predicted_classes,
    probabilities_by_class,
)
from catsdogs.models.multilabel import predicted_labels
from catsdogs.store import run_dir


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The prediction for one file: its label and probabilities, or why it has none.

    A multi-label model answers a set of labels (`labels`) instead of one class: `label` and
    `probability` are then None, but for a rejected photo, labelled unknown.

    Attributes:
        path: the file.
        label: the predicted class, or the unknown label ("unknown") when the photo is rejected
            as none of the classes; None on error.
        probability: the probability of the most probable class (of the predicted class when
            accepted).
        probabilities: class name -> probability (multi-label: each label's own, not summing to 1).
        labels: a multi-label model's answer: the labels whose probability reaches their threshold,
            most probable first; [] when none of them applies, and when the photo is rejected.
        in_distribution_score: how typical the photo is of the training photos, from 0 to 1 (the
            share of training photos that look less typical); None for a model without one.
        accepted: whether the score reaches the reject threshold (None without a score).
        error: why the file could not be predicted (None when it was).
        similar: the training photos most similar to it (`inference.similar.SimilarPhoto`), most similar
            first, where asked for (`Classifier.predict(similar=k)`).
    """

    path: str
    label: str = None
    probability: float = None
    probabilities: dict = None
    labels: list = None
    in_distribution_score: float = None
    accepted: bool = None
    error: str = None
    similar: tuple = None

    def top(self, k: int) -> list:
        """The `k` most probable classes, as (class name, probability), most probable first ([] on error)."""
        return sorted((self.probabilities or {}).items(), key=lambda item: -item[1])[:k]

    def to_dict(self, top_k: int = 1) -> dict:
        """The fields that are set: path, label, probability, probabilities, the score, "similar" (as
        [{"row", "path", "label", "similarity", "file"}]); or path and error; with `top_k` above 1,
        "top_k": the most probable classes as [{"label", "probability"}]."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if top_k > 1 and self.error is None:
            fields["top_k"] = [{"label": label, "probability": probability} for label, probability in self.top(top_k)]
        return fields

    def to_row(self, classes, top_k: int = 1, label_separator: str = None, similar: int = 0) -> dict:
        """One flat row for a table (Parquet, CSV): every field, None where unset, with `probabilities`
        spread into one column per class, p_<class>, so that error rows have the same columns.

        Args:
            classes: the class names, in the order of the columns.
            top_k: above 1, a "top_k" column: "label:probability; ..." of the most probable classes.
            label_separator: a multi-label model's (`ModelInfo.label_separator`): a "labels" column holds
                the labels joined by it; without it there is no such column.
            similar: the similar photos asked for: columns similar_<i>_path, _label, _similarity for i
                from 1 to `similar` (the path relative to the run's data folder).
        """
        row = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "probabilities":
                row.update({f"p_{name}": (value or {}).get(name) for name in classes})
            elif field.name == "labels":
                if label_separator is not None:
                    row["labels"] = None if value is None else label_separator.join(value)
            elif field.name == "similar":
                photos = list(value or ())
                for i in range(similar):
                    photo = photos[i] if i < len(photos) else None
                    for key in ("path", "label", "similarity"):
                        row[f"similar_{i + 1}_{key}"] = getattr(photo, key) if photo else None
            else:
                row[field.name] = value
        if top_k > 1:
            row["top_k"] = "; ".join(f"{label}:{probability:.4f}" for label, probability in self.top(top_k))
        return row


def decide(info, outputs, reject=True, reject_threshold=None, unknown_label=UNKNOWN_LABEL) -> list:
    """The label, probabilities and open-set decision of each photo from a runtime's outputs.

    Args:
        info: the model's `ModelInfo` (classes, decision threshold, reject threshold).
        outputs: {"probabilities": (n, classes)[, "in_distribution_score": (n,)]}.
        reject, reject_threshold, unknown_label: as for `Classifier.predict`.

    Returns:
        one dict of `Prediction` fields per photo (without path): a multi-label model's with the labels
        whose probability reaches their threshold (`models.multilabel.predicted_labels`).
    """
    probabilities = np.asarray(outputs["probabilities"])
    if info.multi_label:
        chosen = predicted_labels(probabilities, info.thresholds)
    else:
        labels = predicted_classes(probabilities, info.threshold)
    scores = outputs.get(SCORE)
    threshold = info.reject_threshold if reject_threshold is None else reject_threshold
    decisions = []
    for i, probs in enumerate(probabilities):
        decision = {"probabilities": probabilities_by_class(info.class_names, probs)}
        if info.multi_label:
            decision["labels"] = [info.class_names[k] for k in np.argsort(-probs, kind="stable") if chosen[i, k]]
        else:
            decision.update(label=info.class_names[labels[i]], probability=float(probs[labels[i]]))
        if scores is not None:
            accepted = bool(scores[i] >= threshold) or not reject
            decision.update(in_distribution_score=float(scores[i]), accepted=accepted)
            if not accepted:  # none of the classes: the label says so, and a set of labels is empty
                decision["label"] = unknown_label
                if info.multi_label:
                    decision["labels"] = []
        decisions.append(decision)
    return decisions


class Classifier:
    """A trained catsdogs model in its runtime.

    Attributes:
        runtime: what runs it (`inference.model_formats.KerasModel` or an `inference.model_formats.ExportedModel`).
        info: class names, backbone, input size, threshold and temperature.
    """

    def __init__(self, runtime, training_photos=None, run_or_model=None):
        """Args:
            runtime: from `model_formats.load`, or a `inference.model_formats.KerasModel` of a model in memory.
            training_photos: the `inference.similar.TrainingPhotos` of the model's kNN bank, where known in memory.
            run_or_model: the run directory (or model file inside it) whose similar.csv names them, read
                when first needed, where `training_photos` is not given.
        """
        self.runtime = runtime
        self.info: ModelInfo = runtime.info
        self._training_photos = training_photos
        self._run_or_model = run_or_model

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
                f"image_size={self.info.image_size}, format={self.runtime.format!r})")

    @property
    def has_open_set(self) -> bool:
        """Whether the model scores how typical a photo is, and so can answer "unknown"."""
        return self.info.reject_threshold is not None

    @functools.cached_property
    def training_photos(self):
        """The `inference.similar.TrainingPhotos` of the model's kNN bank, or None where unknown."""
        if self._training_photos is None and self._run_or_model is not None:
            return read_training_photos(self._run_or_model)
        return self._training_photos

    def check_similar(self, k: int):
        """Checks that the classifier can name the `k` training photos most similar to a photo.

        Raises:
            UnsupportedError: an export, a model without a kNN bank, or one whose photos are not named
                (each message says what to do); ConfigError: `k` out of range; DataError: a similar.csv
                that does not match the model.
        """
        if self.model is None:
            raise UnsupportedError(
                f"similar training photos need the Keras model: this classifier runs a {self.runtime.format} "
                f"export, which holds the training photos' features only inside its in-distribution score, "
                f"not as an output, and not their names; predict with the run directory or its .keras file instead")
        bank = self.runtime.bank_size
        if not bank:
            raise UnsupportedError(
                f"this model keeps no features of its training photos to compare with (its open-set score is "
                f"{'+'.join(self.info.open_set or ()) or 'none'}; only a kNN score keeps them): train it again "
                f"with --open-set auto, or a score with knn, to find similar training photos")
        photos = self.training_photos
        if photos is None:
            raise UnsupportedError(
                f"the model's kNN bank holds {bank} training photos, but which photos they are is written in its "
                f"run directory's {run_dir.SIMILAR}, not found beside this model (a .keras file on its own, or a "
                f"run trained before catsdogs wrote it): load the run directory, or train it again")
        if len(photos) != bank:
            raise DataError(f"{run_dir.SIMILAR} names {len(photos)} training photos, but the model's kNN bank "
                            f"holds {bank}: it belongs to another model")
        if not 1 <= k <= bank:
            raise ConfigError(f"similar photos {k}: expected 1 to {bank}, the training photos the model keeps")

    def outputs_of_files(self, paths, tta=False, batch_size=INFERENCE_BATCH_SIZE, desc="predict", similar=0):
        """The model's outputs for image files, per view.

        Args:
            similar: also the `similar` most similar training photos of each (`check_similar`).

        Returns:
            `inference.pipeline.Outputs` whose values are {"probabilities": (views, files, classes)[,
            "in_distribution_score": (views, files)][, SIMILARITIES and SIMILAR_ROWS: (views, files, similar)]}.
        """
        forward = self.runtime
        if similar:
            self.check_similar(similar)
            forward = self.runtime.with_similar(similar)
        return run_on_files(forward, list(paths), self.info.image_size, batch_size, views_for(tta), desc)

    def predict(self, inputs, tta: bool = False, batch_size: int = INFERENCE_BATCH_SIZE, reject: bool = True,
                reject_threshold: float = None, unknown_label: str = UNKNOWN_LABEL, similar: int = 0) -> list:
        """Predicts every image among the inputs; an unreadable file gets an error, not an exception.

        Args:
            inputs: image files and folders (every non-hidden file below a folder), or one of them.
            tta: average the outputs of the photo and its mirror image.
            batch_size: images per forward pass.
            reject: answer `unknown_label` for photos whose in-distribution score is under the
                threshold (models with an open-set score); False: always a trained class.
            reject_threshold: instead of the model's own threshold (higher rejects more).
            unknown_label: the label of rejected photos.
            similar: also name the `similar` training photos most similar to each photo (`Prediction.similar`;
                with `tta`, of the photo as it is).

        Returns:
            one `Prediction` per file, in order.
        """
        paths = expand_inputs(inputs)
        return self.predictions(paths, self.outputs_of_files(paths, tta, batch_size, similar=similar), reject,
                                reject_threshold, unknown_label)

    def predictions(self, paths, outputs, reject=True, reject_threshold=None, unknown_label=UNKNOWN_LABEL) -> list:
        """The `Prediction` of each file from the model's outputs: its decision rules applied (`decide`).

        Args:
            paths: the files.
            outputs: their `inference.pipeline.Outputs` (the model's outputs per view, which files have them, errors).
            reject, reject_threshold, unknown_label: as for `predict`.

        Returns:
            one `Prediction` per file, in order.
        """
        if not outputs.ok.any():
            return [Prediction(path, error=outputs.errors[path]) for path in paths]
        decisions = decide(self.info, outputs.mean_over_views(), reject, reject_threshold, unknown_label)
        if SIMILAR_ROWS in outputs.values:  # of the photo as it is (the first view): rows cannot be averaged
            for decision, rows, similarities in zip(decisions, outputs.values[SIMILAR_ROWS][0],
                                                    outputs.values[SIMILARITIES][0]):
                decision["similar"] = self.training_photos.similar(rows, similarities)
        return [Prediction(path, **decision) if ok else Prediction(path, error=outputs.errors[path])
                for path, decision, ok in zip(paths, decisions, outputs.ok)]

    def predict_arrays(self, pixels, tta: bool = False, batch_size: int = INFERENCE_BATCH_SIZE,
                       with_scores: bool = False):
        """Class probabilities of photos given as pixels.

        Args:
            pixels: (n, height, width, 3) RGB values in [0, 255] (uint8 or float), or a list of
                (height, width, 3) arrays of any sizes.
            tta: average the outputs of the photo and its mirror image.
            batch_size: images per forward pass.
            with_scores: also return the in-distribution scores (None for a model without them).

        Returns:
            (n, classes) probabilities, in the order of `classes`; with `with_scores`,
            (probabilities, (n,) scores).
        """
        resized = prepare_batch(list(pixels), self.info.image_size)
        views = views_for(tta)
        batches = [[self.runtime(VIEWS[view](resized[i:i + batch_size])) for view in views]
                   for i in range(0, len(resized), batch_size)]

        def gather(name, empty_shape):
            if not batches:
                return np.zeros(empty_shape, np.float32)
            return np.concatenate([np.mean([outputs[name] for outputs in batch], axis=0) for batch in batches])

        probabilities = gather("probabilities", (0, len(self.classes)))
        if not with_scores:
            return probabilities
        return probabilities, gather(SCORE, (0,)) if self.has_open_set else None

    def explainer(self):
        """A Grad-CAM `explain.Explainer` of this classifier (Keras models only)."""
        from catsdogs.inference.explain import Explainer

        if self.model is None:
            raise UnsupportedError(f"Grad-CAM needs the Keras model; this classifier runs a {self.runtime.format} "
                                   f"export: load its run directory or .keras file instead")
        return Explainer(self.model)


def load(path, format: str = None) -> Classifier:
    """Loads a classifier from a run directory, a .keras file or an export folder.

    Args:
        path: the run directory, model file or export folder (or the exported file in it).
        format: one of `config.choices.FORMATS` (keras, savedmodel, onnx, tflite), checked against what `path`
            holds; None: whatever it holds ("keras" on a run directory runs all of it in Keras, its backbone too).

    Returns:
        a `Classifier`; from a run directory (or a model file in one), it names the training photos
        most similar to a photo (`predict(similar=k)`) where the model keeps them.
    """
    runtime = runtimes.load(path, format)
    return Classifier(runtime, run_or_model=os.fspath(path) if runtime.format == "keras" else None)
