"""Metrics of predicted probabilities against true labels, and the `Evaluation` of a classifier.

`evaluate(classifier, data_dir)` predicts a labelled folder and returns an `Evaluation`: its
metrics, its mistakes, figures as matplotlib Figures (in the manner of fastai's
`ClassificationInterpretation` and scikit-learn's `*Display` objects) and `save(folder)`,
which writes the files of a run directory: metrics.json, predictions.csv, integrity.json, the
figures and report.html.
"""

import dataclasses
import functools
import json
import logging
import os

import numpy as np
from sklearn import metrics as skm

from catsdogs import calibration, data, report
from catsdogs.csvfiles import write_csv
from catsdogs.errors import UnsupportedError
from catsdogs.files import timestamp, write_text
from catsdogs.model import SCORE, predicted_classes
from catsdogs.options import INFERENCE_BATCH_SIZE

log = logging.getLogger(__name__)

FIGURES = (
    ("The study's grid: 25 random test images", "grid.png"),
    ("Learning curves", "curves.png"),
    ("Confusion matrix", "confusion.png"),
    ("Most confident mistakes", "errors.png"),
    ("Grad-CAM of the most confident mistakes", "gradcam.png"),
    ("Reliability of the probabilities (test)", "reliability.png"),
    ("Open set: in-distribution scores of known and unknown photos", "open_set.png"),
    ("Open set: photos rejected as none of the classes", "rejections.png"),
)
TOP_K = (3, 5)  # top-k accuracies reported where there are more than k classes
CONFUSED_PAIRS = 10  # the most confused (true, predicted) pairs listed
# Fewer test photos of a class than this and its recall moves by more than 3 points per photo: warned.
SMALL_CLASS = 30
GRADCAM_MISTAKES = 8  # Grad-CAM needs a forward and a backward pass per photo: keep it to a handful
TOP_LOSSES = 16
REPORT_MISTAKES = 100


def compute_metrics(y_true, probabilities, class_names, threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, per-class and averaged precision/recall/F1 and PR-AUC, the
    smallest class and its recall, top-k accuracy (more than 3 classes), ROC-AUC, log-loss, ECE,
    the confusion matrix and its most confused pairs, and warnings about classes too small to trust.

    Args:
        y_true: true class indices.
        probabilities: (n, classes) predicted probabilities.
        class_names: in label order.
        threshold: decision threshold for two classes.

    Returns:
        a JSON-ready dict.
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, np.float64)
    y_pred = predicted_classes(probabilities, threshold)
    labels = list(range(len(class_names)))
    table = skm.classification_report(y_true, y_pred, labels=labels, target_names=class_names,
                                      output_dict=True, zero_division=0)
    confusion = skm.confusion_matrix(y_true, y_pred, labels=labels)
    present = np.isin(labels, y_true)
    result = {
        "images": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        # The mean of the per-class recalls of the classes present: what accuracy would be with balanced classes.
        "balanced_accuracy": float(np.mean(np.diag(confusion)[present] / confusion.sum(axis=1)[present])),
        "errors": int((y_true != y_pred).sum()),
        "per_class": {name: {**_prf(table[name]), "pr_auc": _average_precision(y_true == label, probabilities[:, label])}
                      for label, name in enumerate(class_names)},
        "macro_avg": _prf(table["macro avg"]),
        "weighted_avg": _prf(table["weighted avg"]),
        # float32 outputs sum to 1 only within float32 rounding, which log_loss warns about.
        "log_loss": float(skm.log_loss(y_true, probabilities / probabilities.sum(axis=1, keepdims=True),
                                       labels=labels)),
        "ece": calibration.expected_calibration_error(probabilities, y_true),
        "roc_auc": None,
        "confusion_matrix": confusion.tolist(),
        "most_confused": most_confused(confusion, class_names),
        "class_names": list(class_names),
        "threshold": float(threshold),
        "warnings": [f"class {name!r} has {count} test photos: its recall moves by {1 / count:.0%} per photo"
                     for name, count in zip(class_names, confusion.sum(axis=1)) if 0 < count < SMALL_CLASS],
    }
    counts = confusion.sum(axis=1)
    smallest = int(np.argmin(counts))
    result["smallest_class"] = {"name": class_names[smallest], "photos": int(counts[smallest]),
                                "recall": result["per_class"][class_names[smallest]]["recall"],
                                # under half the photos of the mean class: accuracy hides it
                                "unbalanced": bool(counts[smallest] * 2 < counts.mean())}
    if len(class_names) > min(TOP_K):
        result["top_k_accuracy"] = {str(k): float(skm.top_k_accuracy_score(y_true, probabilities, k=k, labels=labels))
                                    for k in TOP_K if k < len(class_names)}
    if len(np.unique(y_true)) == len(class_names):
        scores = probabilities[:, 1] if len(class_names) == 2 else probabilities
        result["roc_auc"] = float(skm.roc_auc_score(y_true, scores, multi_class="ovr", labels=labels))
    return result


def _average_precision(is_class, scores):
    """The area under the precision-recall curve of one class, None where the class has no photo."""
    return float(skm.average_precision_score(is_class, scores)) if is_class.any() else None


def most_confused(confusion, class_names, count=CONFUSED_PAIRS):
    """The off-diagonal cells of a confusion matrix with the most photos, as dicts, most first."""
    confusion = np.asarray(confusion)
    off = confusion * (1 - np.eye(len(confusion), dtype=confusion.dtype))
    order = np.argsort(-off, axis=None, kind="stable")[:count]
    return [{"true": class_names[t], "predicted": class_names[p], "photos": int(off[t, p])}
            for t, p in zip(*np.unravel_index(order, off.shape)) if off[t, p]]


def _prf(row):
    return {"precision": row["precision"], "recall": row["recall"], "f1": row["f1-score"],
            "support": int(row["support"])}


def stage_summary(val, test, class_names, seconds):
    """Loss and accuracy of a training stage's model (uncalibrated, threshold 0.5).

    Args:
        val: (labels, logits) of the validation images: what stages are compared on.
        test: (labels, logits) of the test images, for the record only.
        class_names: in label order.
        seconds: how long the stage took.
    """
    summary = {"seconds": round(seconds, 1)}
    for split, (y_true, logits) in (("val", val), ("test", test)):
        scores = compute_metrics(y_true, calibration.probabilities(logits, class_names), class_names)
        summary.update({f"{split}_loss": scores["log_loss"], f"{split}_accuracy": scores["accuracy"]})
    return summary


def format_metrics(metrics: dict) -> str:
    """A classification_report-style table followed by the threshold-free scores."""
    names = metrics["class_names"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    rows = [(n, metrics["per_class"][n]) for n in names]
    rows += [("macro avg", metrics["macro_avg"]), ("weighted avg", metrics["weighted_avg"])]
    for name, row in rows:
        lines.append(f"{name:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:8d}")
    lines.append("")
    errors = f"{metrics['errors']} error" + ("" if metrics["errors"] == 1 else "s")
    lines.append(f"accuracy {metrics['accuracy']:.4f} ({errors} in {metrics['images']} images)   "
                 f"balanced accuracy {metrics['balanced_accuracy']:.4f}")
    smallest = metrics["smallest_class"]
    if smallest["unbalanced"]:
        lines.append(f"smallest class {smallest['name']!r}: {smallest['photos']} photos, recall {smallest['recall']:.4f}")
    if metrics.get("top_k_accuracy"):
        lines.append("   ".join(f"top-{k} accuracy {v:.4f}" for k, v in metrics["top_k_accuracy"].items()))
    auc = f"{metrics['roc_auc']:.4f}" if metrics["roc_auc"] is not None else "n/a"
    lines.append(f"ROC-AUC {auc}   log-loss {metrics['log_loss']:.4f}   ECE {metrics['ece']:.4f}")
    if len(names) > 2 and metrics.get("most_confused"):
        lines.append("most confused: " + "; ".join(f"{pair['true']} as {pair['predicted']} ({pair['photos']})"
                                                   for pair in metrics["most_confused"][:5]))
    lines += [f"warning: {warning}" for warning in metrics.get("warnings", ())]
    if metrics.get("open_set"):
        o = metrics["open_set"]
        lines.append(f"open set ({'+'.join(o['methods'])}): threshold {o['threshold']:.4f} keeps {o['test_kept']:.2%} "
                     f"of the test photos" + (f" (accuracy on them {o['test_accuracy_accepted']:.4f})"
                                              if o["test_accuracy_accepted"] is not None else ""))
        if o.get("unknown"):
            u = o["unknown"]
            lines.append(f"unknown photos: {u['photos']}, {u['accepted']:.1%} wrongly accepted; AUROC {u['auroc']:.4f}; "
                         f"false accepts at 99%/95% of test kept: {u['false_accepts_at_99']:.1%}/"
                         f"{u['false_accepts_at_95']:.1%}")
    if metrics.get("tta"):
        tta = metrics["tta"]
        lines.append(f"with test-time augmentation: accuracy {tta['accuracy']:.4f} ({tta['errors']} errors), "
                     f"log-loss {tta['log_loss']:.4f}")
    return "\n".join(lines)


def label_issues(y_true, probabilities):
    """Which images look mislabelled, by confident learning (cleanlab) on out-of-sample probabilities."""
    from cleanlab.filter import find_label_issues

    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < probabilities.shape[1] or len(y_true) < 10:
        return np.zeros(len(y_true), bool)  # too few images for per-class confidence thresholds
    # n_jobs=1: cleanlab's worker processes rely on module globals that a spawned process lacks
    # (it failed inside a spawned benchmark process), and forking a process running TensorFlow is
    # unsafe; for thousands of images one process takes milliseconds.
    return find_label_issues(y_true, np.asarray(probabilities, np.float64), n_jobs=1)


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
        """Shares kept, accuracy on the accepted photos and, with unknown photos, AUROC and false accepts."""
        accepted = self.test_scores >= self.threshold
        result = {"methods": list(self.methods), "threshold": self.threshold, "keep": self.keep,
                  "training_kept": self.training_kept, "test_kept": float(accepted.mean()),
                  "test_accepted": int(accepted.sum()),
                  "test_accuracy_accepted": float((predicted_classes(probabilities[accepted], threshold)
                                                   == y_true[accepted]).mean()) if accepted.any() else None}
        if self.validation_scores is not None:
            result["validation_kept"] = float((self.validation_scores >= self.threshold).mean())
        if self.unknown_scores is not None and len(self.unknown_scores):
            known, unknown = self.test_scores, self.unknown_scores
            result["unknown"] = {
                "photos": len(unknown),
                "accepted": float((unknown >= self.threshold).mean()),
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
        raise data.DataError(f"{folder}: no photo could be read")
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
        integrity: `data.ScanReport.to_json()` of the photos.
        history: epoch rows of the training stages (stage, epoch, loss, ...), if any.
        title: the report's title.
        config: settings shown in the report, if any.
        classifier: the `Classifier` evaluated (for Grad-CAM), if known.
        open_set: `OpenSetResults` where the model has an in-distribution score.
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
            return np.stack([calibration.probabilities(v, class_names, temperature or 1.0) for v in outputs])

        views = per_view(logits if probabilities is None else probabilities)
        tta = len(views) > 1
        if validation is not None:
            val_true, val_views = validation[0], per_view(validation[1])
            attributes["validation"] = compute_metrics(val_true, val_views[0], class_names, threshold)
            if tta:
                attributes["validation_tta"] = compute_metrics(val_true, val_views.mean(axis=0), class_names,
                                                               threshold)
        return cls(paths=paths, y_true=y_true, probabilities=views[0], class_names=class_names, threshold=threshold,
                   uncalibrated=None if logits is None else calibration.probabilities(logits[0], class_names),
                   tta_probabilities=views.mean(axis=0) if tta else None, temperature=temperature, **attributes)

    @functools.cached_property
    def metrics(self) -> dict:
        """Test metrics at the top level (`compute_metrics`), then "tta", "validation",
        "validation_tta", "stages" and "calibration" where known."""
        metrics = compute_metrics(self.y_true, self.probabilities, self.class_names, self.threshold)
        if self.tta_probabilities is not None:
            metrics["tta"] = compute_metrics(self.y_true, self.tta_probabilities, self.class_names, self.threshold)
        for key in ("validation", "validation_tta", "stages"):
            if getattr(self, key) is not None:
                metrics[key] = getattr(self, key)
        if self.open_set is not None:
            metrics["open_set"] = self.open_set.metrics(self.y_true, self.probabilities, self.class_names,
                                                        self.threshold)
        if self.temperature is not None:
            metrics["calibration"] = {"temperature": self.temperature, "test_ece_after": metrics["ece"]}
            if self.uncalibrated is not None:
                metrics["calibration"]["test_ece_before"] = calibration.expected_calibration_error(
                    self.uncalibrated, self.y_true)
        return metrics

    @functools.cached_property
    def rows(self) -> list:
        """One dict per photo: path, true, predicted, probability, loss, label_looks_wrong, p_CLASS...,
        and in_distribution_score and accepted where the model has an open-set score."""
        y_pred = predicted_classes(self.probabilities, self.threshold)
        rows = report.prediction_rows(self.paths, self.y_true, self.probabilities, y_pred, self.class_names,
                                      label_issues(self.y_true, self.probabilities))
        if self.open_set is not None:
            for row, score in zip(rows, self.open_set.test_scores):
                row.update(in_distribution_score=float(score), accepted=bool(score >= self.open_set.threshold))
        return rows

    def mistakes(self, k: int = None) -> list:
        """The wrongly predicted photos, highest loss (most confident mistake) first; the first `k` if given."""
        wrong = sorted((row for row in self.rows if row["predicted"] != row["true"]), key=lambda row: -row["loss"])
        return wrong if k is None else wrong[:k]

    def __str__(self):
        return format_metrics(self.metrics)

    def plot_grid(self, seed: int = 0, side: int = 5):
        """The study's figure: side x side random photos with their predictions, mistakes in red."""
        return report.plot_grid(self.rows, seed, side)

    def plot_confusion(self, ax=None):
        """The confusion matrix; draws on `ax` if given."""
        return report.plot_confusion(self.metrics["confusion_matrix"], self.class_names, ax)

    def plot_top_losses(self, k: int = TOP_LOSSES):
        """The `k` most confident mistakes, marking those whose label looks wrong."""
        return report.plot_top_losses(self.mistakes(), k)

    def plot_reliability(self, ax=None):
        """Reliability diagram (before and after calibration where known); draws on `ax` if given."""
        curves = {"calibrated" if self.uncalibrated is not None else "model": self.probabilities}
        if self.uncalibrated is not None:
            curves = {"before calibration": self.uncalibrated, **curves}
        return report.plot_reliability(curves, self.y_true, ax=ax)

    def plot_gradcam(self, k: int = GRADCAM_MISTAKES):
        """Grad-CAM of the `k` most confident mistakes: where the model saw the class it chose."""
        if self.classifier is None:
            raise UnsupportedError("this evaluation has no classifier to explain: evaluate one with catsdogs.evaluate")
        return report.plot_gradcam(self.mistakes(k), self.classifier.explainer())

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
        return report.plot_rejections(self.open_set.rejected_rows(self.paths), k)

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
        os.makedirs(folder, exist_ok=True)
        metrics = self.metrics
        write_text(os.path.join(folder, "metrics.json"), json.dumps(metrics, indent=2))
        write_csv([{**row, "path": self._saved_path(row["path"])} for row in self.rows],
                  os.path.join(folder, "predictions.csv"))
        write_text(os.path.join(folder, "integrity.json"), json.dumps(self.integrity, indent=2))
        figures = {"grid.png": self.plot_grid, "confusion.png": self.plot_confusion,
                   "errors.png": self.plot_top_losses, "reliability.png": self.plot_reliability,
                   "curves.png": self.plot_curves}
        if self.classifier is not None and self.classifier.model is not None and self.mistakes():
            figures["gradcam.png"] = self.plot_gradcam
        if self.open_set is not None:
            figures.update({"open_set.png": self.plot_open_set, "rejections.png": self.plot_rejections})
        for name, plot in figures.items():
            figure = plot()
            if figure is not None:
                report.save_figure(figure, os.path.join(folder, name))
        report.write_html(folder, self.title, FIGURES, metrics, self.mistakes(REPORT_MISTAKES), self.integrity,
                          self.config)
        return metrics

    def _saved_path(self, path):
        """A photo's path as saved: relative to the data folder when it lies inside, else absolute."""
        if self.data_dir:
            relative = os.path.relpath(path, self.data_dir)
            if not relative.startswith(os.pardir):
                return relative
        return os.path.abspath(path)


def evaluate(classifier, data_dir, tta: bool = False, batch_size: int = INFERENCE_BATCH_SIZE,
             unknown_data=None, labels=(), columns=None) -> Evaluation:
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

    Returns:
        an `Evaluation`; `.save(folder)` writes its files.
    """
    from catsdogs.classifier import Classifier, load
    from catsdogs.labels import Columns, apply_corrections, load_dataset

    if not isinstance(classifier, Classifier):
        classifier = load(classifier)
    class_names = classifier.classes
    dataset, corrections = load_dataset(data_dir, labels, columns or Columns())
    split = "test" if "test" in dataset.splits else "all"
    if split not in dataset.splits:
        raise data.DataError(f"{data_dir}: no test folder (or test rows), and not a folder of class folders")
    for source in corrections:  # the evaluated photos count as test photos: relabelled, never excluded
        dataset.splits[split] = apply_corrections({"test": dataset.splits[split]}, dataset.class_names,
                                                  os.path.abspath(data_dir), source)["test"]
    unknown = sorted(set(dataset.class_names) - set(class_names))
    if unknown:
        raise data.DataError(f"{data_dir}: classes {unknown} are unknown to the model, which knows {class_names}")
    scan = data.scan(dataclasses.replace(dataset, splits={split: dataset.splits[split]}))
    samples = [s for s in dataset.splits[split] if s.path in scan.hashes]
    outputs = classifier.outputs_of_files([s.path for s in samples], tta, batch_size, desc="evaluate")
    for path, reason in outputs.errors.items():
        scan.add_problem(path, reason)
    kept = [s for s, ok in zip(samples, outputs.ok) if ok]
    if not kept:
        raise data.DataError(f"{data_dir}: none of the {len(dataset.splits[split])} photos could be read")
    values = {name: v[:, outputs.ok] for name, v in outputs.values.items()}
    open_set = None
    if classifier.has_open_set:
        open_set = OpenSetResults(classifier.info.open_set, classifier.info.reject_threshold,
                                  test_scores=values[SCORE][0])
        if unknown_data:
            open_set.unknown_paths, open_set.unknown_scores = unknown_scores(classifier, unknown_data, batch_size)
    elif unknown_data:
        raise data.DataError(f"{unknown_data}: this model has no open-set score to measure on unknown photos; "
                             f"train it again with this version of catsdogs")
    y_true = np.array([class_names.index(dataset.class_names[s.label]) for s in kept])
    return Evaluation.from_outputs(
        [os.path.abspath(s.path) for s in kept], y_true, class_names, probabilities=values["probabilities"],
        threshold=classifier.info.threshold, data_dir=os.path.abspath(data_dir), integrity=scan.to_json(),
        title=f"catsdogs evaluation of {classifier.info.backbone} on {data_dir}", classifier=classifier,
        open_set=open_set)


def default_output_dir(run_or_model):
    """Where `catsdogs evaluate` writes by default: an eval-<time> folder beside the model."""
    folder = run_or_model if os.path.isdir(run_or_model) else os.path.dirname(os.path.abspath(run_or_model))
    return os.path.join(folder, f"eval-{timestamp()}")
