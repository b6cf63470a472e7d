"""Metrics of predicted probabilities against true labels, and the `Evaluation` of a classifier.

`evaluate(classifier, data_dir)` predicts a labelled folder and returns an `Evaluation`: its
metrics, its mistakes, figures as matplotlib Figures (in the manner of fastai's
`ClassificationInterpretation` and scikit-learn's `*Display` objects) and `save(folder)`,
which writes the files of a run directory: metrics.json, predictions.csv, integrity.json, the
figures and report.html.
"""

import dataclasses
import functools
import os

import numpy as np
from sklearn import metrics as skm

from catsdogs.config.choices import INFERENCE_BATCH_SIZE, SIMILAR_SHOWN
from catsdogs.data import dataset as data
from catsdogs.data.scan import scan_dataset
from catsdogs.errors import DataError, UnsupportedError
from catsdogs.evaluation import figures as report
from catsdogs.evaluation.coverage import set_metrics
from catsdogs.evaluation.metrics import compute_metrics, format_metrics, label_issues, stage_summary
from catsdogs.evaluation.report import prediction_rows, write_html
from catsdogs.evaluation.statistics import wilson_interval
from catsdogs.inference.preprocess import DISPLAY_SIZE
from catsdogs.models import calibration, conformal
from catsdogs.models.model import SCORE, SIMILAR_ROWS, SIMILARITIES, predicted_classes
from catsdogs.models.multilabel import predicted_labels
from catsdogs.store import run_dir

GRADCAM_MISTAKES = 8  # Grad-CAM needs a forward and a backward pass per photo: keep it to a handful
TOP_LOSSES = 16
REPORT_MISTAKES = 100
NEAR_DUPLICATE_PAIRS = 12  # pairs shown side by side (all are listed in integrity.json and the report)


def near_duplicate_pairs(crossing):
    """The pairs of near-duplicates that lie in different splits, from `ScanReport.near_duplicates_across_splits()`:
    dicts with paths, splits, found_by and distance or similarity."""
    pairs = []
    for group in crossing:
        split_of = {photo["path"]: photo["split"] for photo in group["photos"]}
        pairs += [{**pair, "splits": [split_of.get(p) for p in pair["paths"]]} for pair in group["pairs"]
                  if len({split_of.get(p) for p in pair["paths"]}) > 1]
    return pairs


@dataclasses.dataclass
class OpenSetResults:
    """In-distribution scores of the evaluated photos, and of photos of no trained class if given.

    Attributes:
        methods: the methods of the score.
        threshold: photos scoring below it are rejected as "unknown".
        keep: the share of training photos the threshold was set to keep (None if not known here).
        training_kept: the share of training photos it keeps (out-of-fold; None if not known here).
        validation_scores: of the validation photos, if known.
        test_scores: of the evaluated photos (`Evaluation.paths`).
        unknown_paths, unknown_scores: photos of no trained class, if given (never used to fit).
    """

    methods: tuple
    threshold: float
    keep: float = None
    training_kept: float = None
    validation_scores: np.ndarray = None
    test_scores: np.ndarray = None
    unknown_paths: list = None
    unknown_scores: np.ndarray = None

    def metrics(self, y_true, probabilities, class_names, threshold) -> dict:
        """Shares kept, accuracy on the accepted photos (multi-label: exact match, `threshold` one per label)
        and, with unknown photos, AUROC and false accepts; the accuracy and the share of unknown photos
        accepted with their 95% Wilson intervals (NAME_ci)."""
        accepted = self.test_scores >= self.threshold
        if np.ndim(y_true) == 2:  # multi-label: the whole label set right
            correct = (predicted_labels(probabilities, threshold) == y_true).all(axis=1)
        else:
            correct = predicted_classes(probabilities, threshold) == y_true
        right = int(correct[accepted].sum())
        result = {"methods": list(self.methods), "threshold": self.threshold, "keep": self.keep,
                  "training_kept": self.training_kept, "test_kept": float(accepted.mean()),
                  "test_accepted": int(accepted.sum()),
                  "test_accuracy_accepted": float(right / accepted.sum()) if accepted.any() else None,
                  "test_accuracy_accepted_ci": wilson_interval(right, accepted.sum())}
        if self.validation_scores is not None:
            result["validation_kept"] = float((self.validation_scores >= self.threshold).mean())
        if self.unknown_scores is not None and len(self.unknown_scores):
            known, unknown = self.test_scores, self.unknown_scores
            result["unknown"] = {
                "photos": len(unknown),
                "accepted": float((unknown >= self.threshold).mean()),
                "accepted_ci": wilson_interval((unknown >= self.threshold).sum(), len(unknown)),
                "auroc": float(skm.roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))],
                                                 np.r_[known, unknown])),
                **{f"false_accepts_at_{int(keep * 100)}": float(
                    (unknown >= np.quantile(known, 1 - keep, method="lower")).mean()) for keep in (0.95, 0.99)},
            }
        return result

    def rejected_rows(self, paths):
        """Rejected photos (known ones given by `paths`, then unknown ones), lowest score first."""
        groups = [("test", paths, self.test_scores), ("unknown", self.unknown_paths or [], self.unknown_scores)]
        rows = [{"path": path, "group": group, "score": float(score)}
                for group, group_paths, scores in groups if scores is not None
                for path, score in zip(group_paths, scores) if score < self.threshold]
        return sorted(rows, key=lambda row: row["score"])


def unknown_scores(classifier, folder, batch_size=INFERENCE_BATCH_SIZE):
    """In-distribution scores of every photo below a folder of no trained class.

    Returns:
        (paths of the photos that decoded, their scores); files that are not images are left out.
    """
    paths = data.list_files(folder)
    outputs = classifier.outputs_of_files(paths, batch_size=batch_size, desc="unknown")
    if not outputs.ok.any():
        raise DataError(f"{folder}: no photo could be read")
    return [p for p, ok in zip(paths, outputs.ok) if ok], outputs.values[SCORE][0, outputs.ok]


@dataclasses.dataclass
class Evaluation:
    """A classifier's predictions on labelled photos, and what can be said about them.

    Attributes:
        paths: the photos that were predicted (absolute paths).
        y_true: their true class indices.
        probabilities: (n, classes) what the model output.
        class_names: in label order.
        threshold: the decision threshold (two classes).
        data_dir: the dataset folder; saved paths are relative to it.
        uncalibrated: probabilities before temperature scaling, if known.
        tta_probabilities: averaged over test-time augmentation views, if computed.
        validation, validation_tta: metrics on the validation split, if known.
        temperature: the calibration temperature, if known.
        stages: summaries of the training stages, if known.
        integrity: `data.scan.ScanReport.to_json()` of the photos.
        history: epoch rows of the training stages (stage, epoch, loss, ...), if any.
        title: the report's title.
        config: settings shown in the report, if any.
        classifier: the `Classifier` evaluated (for Grad-CAM), if known.
        open_set: `OpenSetResults` where the model has an in-distribution score.
        learning_curve: `evaluation.learning_curve.learning_curve`'s result, where training drew it.
        similar: for each photo, the training photos most similar to it (`inference.similar.SimilarPhoto`s,
            most similar first), where the classifier names them (`Classifier.check_similar`).
        coverage: the coverage of the prediction sets to measure (`models.conformal`; needs the classifier), if any.
    """

    paths: list
    y_true: np.ndarray
    probabilities: np.ndarray
    class_names: list
    threshold: float = 0.5
    data_dir: str = None
    uncalibrated: np.ndarray = None
    tta_probabilities: np.ndarray = None
    validation: dict = None
    validation_tta: dict = None
    temperature: float = None
    stages: dict = None
    integrity: dict = dataclasses.field(default_factory=dict)
    history: list = None
    title: str = "catsdogs evaluation"
    config: dict = None
    classifier: object = dataclasses.field(default=None, repr=False)
    open_set: OpenSetResults = None
    learning_curve: dict = None
    similar: list = dataclasses.field(default=None, repr=False)
    coverage: float = None

    @classmethod
    def from_outputs(cls, paths, y_true, class_names, *, logits=None, probabilities=None, temperature=None,
                     threshold: float = 0.5, validation=None, **attributes):
        """An `Evaluation` from a model's outputs per view, in the manner of scikit-learn's
        `RocCurveDisplay.from_predictions`: the one place the probabilities and metrics derive from them.

        Give either `logits` (a head's, calibrated here with `temperature`: training) or
        `probabilities` (a saved model's, calibrated already: evaluating). With several views
        (the photo and its mirror image), test-time augmentation is their average.

        Args:
            paths: the photos predicted.
            y_true: their true class indices.
            class_names: in label order.
            logits: (views, n, 1 or classes) of the head (one logit for two classes).
            probabilities: (views, n, classes) of the model.
            temperature: the calibration temperature of `logits` (None: 1, and not reported).
            threshold: the decision threshold (two classes).
            validation: (true class indices, the same kind of outputs per view) of the validation split.
            **attributes: the other fields of `Evaluation` (data_dir, integrity, title, classifier, ...).

        Returns:
            an `Evaluation` whose probabilities are the first view's, uncalibrated probabilities
            with `logits`, and tta_probabilities and validation metrics where known.
        """
        if (logits is None) == (probabilities is None):
            raise ValueError("give either logits or probabilities")

        def per_view(outputs):
            if logits is None:
                return np.asarray(outputs)
            return np.stack([cls.probabilities_of(v, class_names, temperature) for v in outputs])

        views = per_view(logits if probabilities is None else probabilities)
        tta = len(views) > 1
        if validation is not None:
            val_true, val_views = validation[0], per_view(validation[1])
            attributes["validation"] = cls.metrics_of(val_true, val_views[0], class_names, threshold)
            if tta:
                attributes["validation_tta"] = cls.metrics_of(val_true, val_views.mean(axis=0), class_names,
                                                              threshold)
        return cls(paths=paths, y_true=y_true, probabilities=views[0], class_names=class_names, threshold=threshold,
                   uncalibrated=None if logits is None else cls.probabilities_of(logits[0], class_names),
                   tta_probabilities=views.mean(axis=0) if tta else None, temperature=temperature, **attributes)

    # What a kind of evaluation computes its own way (`evaluation.multilabel.MultiLabelEvaluation` has
    # independent labels): probabilities from a head's logits, metrics, calibration error, rows.
    @staticmethod
    def probabilities_of(logits, class_names, temperature=None):
        """Probabilities of a head's logits exactly as the saved model computes them (temperature None: 1)."""
        return calibration.probabilities(logits, class_names, 1.0 if temperature is None else temperature)

    @staticmethod
    def metrics_of(y_true, probabilities, class_names, threshold=0.5) -> dict:
        """The metrics of predictions (`metrics.compute_metrics`)."""
        return compute_metrics(y_true, probabilities, class_names, threshold)

    @staticmethod
    def calibration_pairs(probabilities, y_true):
        """What calibration is measured on: (probabilities, true labels), here as they are."""
        return probabilities, y_true

    def calibration_error(self, probabilities, y_true) -> float:
        """The expected calibration error of predictions (`calibration_pairs`)."""
        return calibration.expected_calibration_error(*self.calibration_pairs(probabilities, y_true))

    @classmethod
    def stage_summary(cls, val, test, class_names, seconds) -> dict:
        """Loss and accuracy of a training stage's head (`metrics.stage_summary`), computed as this kind of
        evaluation computes them."""
        return stage_summary(val, test, class_names, seconds, cls.probabilities_of, cls.metrics_of)

    def rows_of(self, paths, y_true, probabilities) -> list:
        """One dict per photo (`report.prediction_rows`), by this evaluation's decision rule."""
        return prediction_rows(paths, y_true, probabilities, predicted_classes(probabilities, self.threshold),
                               self.class_names, label_issues(y_true, probabilities))

    @functools.cached_property
    def metrics(self) -> dict:
        """Test metrics at the top level (`compute_metrics`), then "tta", "validation",
        "validation_tta", "stages", "learning_curve" and "calibration" where known."""
        metrics = self.metrics_of(self.y_true, self.probabilities, self.class_names, self.threshold)
        if self.tta_probabilities is not None:
            metrics["tta"] = self.metrics_of(self.y_true, self.tta_probabilities, self.class_names, self.threshold)
        for key in ("validation", "validation_tta", "stages", "learning_curve"):
            if getattr(self, key) is not None:
                metrics[key] = getattr(self, key)
        if self.open_set is not None:
            metrics["open_set"] = self.open_set.metrics(self.y_true, self.probabilities, self.class_names,
                                                        self.threshold)
        if self.prediction_sets is not None:
            members, threshold = self.prediction_sets
            metrics["prediction_sets"] = set_metrics(members, self.y_true, self.coverage, threshold, len(
                self.classifier.info.conformal["true_class_probabilities"]))
        if self.temperature is not None:  # multi-label: one per label
            metrics["calibration"] = {"temperature": np.asarray(self.temperature).tolist(),
                                      "test_ece_after": metrics["ece"]}
            if self.uncalibrated is not None:
                metrics["calibration"]["test_ece_before"] = self.calibration_error(self.uncalibrated, self.y_true)
        return metrics

    @functools.cached_property
    def prediction_sets(self):
        """(which classes are in each photo's set (n, classes), the threshold) at `coverage`, photos the open-set
        score rejects given the empty set as the model answers them (`models.conformal`); None without a coverage."""
        if self.coverage is None:
            return None
        info = self.classifier.info
        accepted, reject_threshold = None, None
        if self.open_set is not None:
            reject_threshold = self.open_set.threshold
            accepted = self.open_set.test_scores >= reject_threshold
        threshold = conformal.record_threshold(info.conformal, self.coverage, reject_threshold)
        predicted = predicted_classes(self.probabilities, self.threshold)
        return conformal.prediction_sets(self.probabilities, threshold, predicted, accepted), threshold

    @functools.cached_property
    def rows(self) -> list:
        """One dict per photo: path, true, predicted, probability, loss, label_looks_wrong, p_CLASS...,
        in_distribution_score and accepted where the model has an open-set score, and prediction_set
        ("cats;dogs", "" for the empty set) with a coverage."""
        rows = self.rows_of(self.paths, self.y_true, self.probabilities)
        if self.open_set is not None:
            for row, score in zip(rows, self.open_set.test_scores):
                row.update(in_distribution_score=float(score), accepted=bool(score >= self.open_set.threshold))
        if self.prediction_sets is not None:
            for row, members in zip(rows, self.prediction_sets[0]):
                row["prediction_set"] = conformal.SET_SEPARATOR.join(np.asarray(self.class_names)[members])
        return rows

    def mistakes(self, k: int = None) -> list:
        """The wrongly predicted photos, highest loss (most confident mistake) first; the first `k` if given.
        Each row holds "similar": its most similar training photos, where known (`similar`)."""
        similar = dict(zip(self.paths, self.similar)) if self.similar is not None else {}
        wrong = sorted(({**row, "similar": similar.get(row["path"], ())} for row in self.rows
                        if row["predicted"] != row["true"]), key=lambda row: -row["loss"])
        return wrong if k is None else wrong[:k]

    def __str__(self):
        return format_metrics(self.metrics)

    @property
    def _photo_size(self) -> int:
        """The side the figures decode photos near: the model's input size where the classifier is known."""
        return self.classifier.info.image_size if self.classifier is not None else DISPLAY_SIZE

    def plot_grid(self, seed: int = 0, side: int = 5):
        """The study's figure: side x side random photos with their predictions, mistakes in red."""
        return report.plot_grid(self.rows, seed, side, self._photo_size)

    def plot_confusion(self, ax=None):
        """The confusion matrix; draws on `ax` if given."""
        return report.plot_confusion(self.metrics["confusion_matrix"], self.class_names, ax)

    def plot_top_losses(self, k: int = TOP_LOSSES):
        """The `k` most confident mistakes, marking those whose label looks wrong."""
        return report.plot_top_losses(self.mistakes(), k, image_size=self._photo_size)

    def plot_reliability(self, ax=None):
        """Reliability diagram (before and after calibration where known); draws on `ax` if given."""
        curves = {"calibrated" if self.uncalibrated is not None else "model": self.probabilities}
        if self.uncalibrated is not None:
            curves = {"before calibration": self.uncalibrated, **curves}
        pairs = {name: self.calibration_pairs(probabilities, self.y_true)[0] for name, probabilities in curves.items()}
        return report.plot_reliability(pairs, self.calibration_pairs(self.probabilities, self.y_true)[1], ax=ax)

    def plot_gradcam(self, k: int = GRADCAM_MISTAKES):
        """Grad-CAM of the `k` most confident mistakes: where the model saw the class it chose."""
        if self.classifier is None:
            raise UnsupportedError("this evaluation has no classifier to explain: evaluate one with catsdogs.evaluate")
        return report.plot_gradcam(self.mistakes(k), self.classifier.explainer())

    def plot_similar(self, k: int = GRADCAM_MISTAKES):
        """The `k` most confident mistakes, each beside the training photos most similar to it."""
        if self.similar is None:
            raise UnsupportedError("this evaluation does not know the training photos similar to its photos: "
                                   "evaluate a run directory whose model has a kNN open-set score (the default)")
        return report.plot_similar(self.mistakes(k), self._photo_size)

    def _require_open_set(self):
        if self.open_set is None:
            raise UnsupportedError("this model has no in-distribution score (trained with open_set='none' or "
                                   "before catsdogs had one)")

    def plot_open_set(self, ax=None):
        """Histograms of the in-distribution scores (validation, test, unknown photos) and the threshold."""
        self._require_open_set()
        groups = {"validation (known)": self.open_set.validation_scores, "test (known)": self.open_set.test_scores,
                  "unknown photos": self.open_set.unknown_scores}
        return report.plot_scores({k: v for k, v in groups.items() if v is not None}, self.open_set.threshold, ax)

    def plot_rejections(self, k: int = 8):
        """The `k` most and `k` least confident rejections among the test and unknown photos."""
        self._require_open_set()
        return report.plot_rejections(self.open_set.rejected_rows(self.paths), k, image_size=self._photo_size)

    def plot_learning_curve(self):
        """Test accuracy (and recall of the smallest classes) and log-loss against training photos per class."""
        if self.learning_curve is None:
            raise UnsupportedError("this evaluation has no learning curve: train with learning_curve=True "
                                   "(--learning-curve)")
        return report.plot_learning_curve(self.learning_curve)

    def plot_near_duplicates(self, k: int = NEAR_DUPLICATE_PAIRS):
        """The first `k` pairs of near-duplicates in different splits, side by side; None when there are none."""
        pairs = near_duplicate_pairs(self.integrity.get("near_duplicates_across_splits", []))
        return report.plot_near_duplicates(pairs[:k], len(pairs), self._photo_size) if pairs else None

    def plot_curves(self):
        """Loss and accuracy per epoch (dense head and fine-tuning); None when training had no epochs."""
        return report.plot_curves(self.history) if self.history else None

    def save(self, folder) -> dict:
        """Writes metrics.json, predictions.csv, integrity.json, the figures and report.html.

        Args:
            folder: where to write them (created if missing).

        Returns:
            the metrics dict.
        """
        writer = run_dir.RunWriter(folder)
        metrics = self.metrics
        writer.write_json(run_dir.METRICS, metrics)
        writer.write_csv(run_dir.PREDICTIONS, [{**row, "path": self._saved_path(row["path"])} for row in self.rows])
        writer.write_json(run_dir.INTEGRITY, self.integrity)
        for name, plot in self.figures().items():
            figure = plot()
            if figure is not None:
                with writer.atomic(name) as partial:
                    report.save_figure(figure, partial)
        write_html(writer, self.title, metrics, self.mistakes(REPORT_MISTAKES), self.integrity, self.config)
        return metrics

    def figures(self) -> dict:
        """The figures `save` writes: file name (`store.run_dir`) -> the method that draws it."""
        figures = {run_dir.GRID: self.plot_grid, run_dir.CONFUSION: self.plot_confusion,
                   run_dir.ERRORS: self.plot_top_losses, run_dir.RELIABILITY: self.plot_reliability,
                   run_dir.CURVES: self.plot_curves}
        if self.classifier is not None and self.classifier.model is not None and self.mistakes():
            figures[run_dir.GRADCAM] = self.plot_gradcam
        if self.similar is not None and self.mistakes():
            figures[run_dir.SIMILAR_FIGURE] = self.plot_similar
        if self.open_set is not None:
            figures.update({run_dir.OPEN_SET: self.plot_open_set, run_dir.REJECTIONS: self.plot_rejections})
        if self.learning_curve is not None:
            figures[run_dir.LEARNING_CURVE] = self.plot_learning_curve
        figures[run_dir.NEAR_DUPLICATES] = self.plot_near_duplicates
        return figures

    def _saved_path(self, path):
        """A photo's path as saved: relative to the data folder when it lies inside, else absolute."""
        if self.data_dir:
            relative = os.path.relpath(path, self.data_dir)
            if not relative.startswith(os.pardir):
                return relative
        return os.path.abspath(path)


def similar_shown(classifier, k=SIMILAR_SHOWN) -> int:
    """How many similar training photos an evaluation shows of each photo: `k` (fewer where the model keeps
    fewer), or 0 where the classifier cannot name them (`Classifier.check_similar` says why)."""
    try:
        classifier.check_similar(1)
    except (UnsupportedError, DataError):
        return 0
    return min(k, classifier.runtime.bank_size)


def evaluate(classifier, data_dir, tta: bool = False, batch_size: int = INFERENCE_BATCH_SIZE,
             unknown_data=None, labels=(), columns=None, coverage=None) -> Evaluation:
    """Evaluates a classifier on labelled photos.

    Args:
        classifier: a `Classifier` (`catsdogs.load`), or a path that `catsdogs.load` accepts.
        data_dir: a dataset with a test split (its test photos are used), or one folder of class folders.
        tta: also evaluate test-time augmentation (photo and mirror image averaged).
        batch_size: images per forward pass.
        unknown_data: a folder of photos of no trained class: how many the open-set score
            rejects, its AUROC and false-accept rates (models with an open-set score).
        labels: a labels table instead of class folders (its test rows, or all rows without a
            split column) and corrections tables, as `train` takes them (labels.py).
        columns: the labels table's column names (`labels.Columns`).
        coverage: measure the prediction sets at this coverage (None: the model's default, if it has one; 0: none).

    Returns:
        an `Evaluation`; `.save(folder)` writes its files.
    """
    from catsdogs.data.corrections import apply_listed
    from catsdogs.data.labels import Columns, load_dataset
    from catsdogs.inference.classifier import Classifier, load, set_coverage

    if not isinstance(classifier, Classifier):
        classifier = load(classifier)
    coverage = set_coverage(classifier.info, coverage)
    class_names, info = classifier.classes, classifier.info
    separator = info.label_separator if info.multi_label else None  # a multi-label model reads label sets
    dataset, corrections = load_dataset(data_dir, labels, columns or Columns(), separator)
    split = "test" if "test" in dataset.splits else "all"
    if split not in dataset.splits:
        raise DataError(f"{data_dir}: no test folder (or test rows), and not a folder of class folders")
    for source in corrections:  # the evaluated photos count as test photos: relabelled, never excluded
        dataset.splits[split] = apply_listed({"test": dataset.splits[split]}, dataset.class_names,
                                             os.path.abspath(data_dir), source, label_separator=separator)["test"]
    unknown = sorted(set(dataset.class_names) - set(class_names))
    if unknown:
        raise DataError(f"{data_dir}: classes {unknown} are unknown to the model, which knows {class_names}")
    scan = scan_dataset(dataclasses.replace(dataset, splits={split: dataset.splits[split]}))
    samples = [s for s in dataset.splits[split] if s.path in scan.hashes]
    outputs = classifier.outputs_of_files([s.path for s in samples], tta, batch_size, desc="evaluate",
                                          similar=similar_shown(classifier))
    for path, reason in outputs.errors.items():
        scan.add_problem(path, reason)
    kept = [s for s, ok in zip(samples, outputs.ok) if ok]
    if not kept:
        raise DataError(f"{data_dir}: none of the {len(dataset.splits[split])} photos could be read")
    values = {name: v[:, outputs.ok] for name, v in outputs.values.items()}
    similar = None
    if SIMILAR_ROWS in values:  # of the photo as it is (the first view)
        similar = [classifier.training_photos.similar(rows, similarities)
                   for rows, similarities in zip(values[SIMILAR_ROWS][0], values[SIMILARITIES][0])]
    open_set = None
    if classifier.has_open_set:
        open_set = OpenSetResults(classifier.info.open_set, classifier.info.reject_threshold,
                                  test_scores=values[SCORE][0])
        if unknown_data:
            open_set.unknown_paths, open_set.unknown_scores = unknown_scores(classifier, unknown_data, batch_size)
    elif unknown_data:
        raise DataError(f"{unknown_data}: this model has no open-set score to measure on unknown photos; "
                        f"train it again with this version of catsdogs")
    # The dataset's class indices as the model's.
    model_labels = [[class_names.index(dataset.class_names[label]) for label in s.labels] for s in kept]
    if info.multi_label:
        from catsdogs.evaluation.multilabel import MultiLabelEvaluation  # it builds on this module
        from catsdogs.models.multilabel import indicator_matrix

        kind, y_true, threshold = MultiLabelEvaluation, indicator_matrix(model_labels, len(class_names)), info.thresholds
        attributes = {"label_separator": info.label_separator}
    else:
        kind, y_true, threshold, attributes = Evaluation, np.array([indices[0] for indices in model_labels]), \
            info.threshold, {}
    return kind.from_outputs(
        [os.path.abspath(s.path) for s in kept], y_true, class_names, probabilities=values["probabilities"],
        threshold=threshold, data_dir=os.path.abspath(data_dir), integrity=scan.to_json(),
        title=f"catsdogs evaluation of {info.backbone} on {data_dir}", classifier=classifier,
        open_set=open_set, similar=similar, coverage=coverage, **attributes)
