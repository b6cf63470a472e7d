"""Evaluating a multi-label classifier: a set of labels a photo, each label its own yes or no.

Metrics per label (average precision, precision, recall and F1 at the label's threshold) and
overall (mAP, micro and macro F1, the exact-match ratio, Hamming loss), as scikit-learn computes
them; `MultiLabelEvaluation` is the `Evaluation` of such a model, with the same files, report and
figures, the confusion matrix replaced by a precision-recall curve per label.

In metrics.json "accuracy" is the exact-match ratio (scikit-learn's `accuracy_score` of label sets:
the share of photos whose whole set is right) and "errors" the photos whose set is wrong, so that
`catsdogs runs` lists and compares multi-label runs as any other.
"""

import dataclasses

import numpy as np
from sklearn import metrics as skm

from catsdogs.config.choices import LABEL_SEPARATOR
from catsdogs.errors import UnsupportedError
from catsdogs.evaluation import figures as report
from catsdogs.evaluation.evaluate import Evaluation
from catsdogs.evaluation.metrics import SMALL_CLASS, _prf
from catsdogs.models import calibration
from catsdogs.models.multilabel import as_binary, label_probabilities, label_text, predicted_labels
from catsdogs.store import run_dir


def _average_precision(present, probabilities):
    """The area under one label's precision-recall curve, None where no photo has the label."""
    return float(skm.average_precision_score(present, probabilities)) if present.any() else None


def label_metrics(y_true, probabilities, class_names, thresholds=0.5) -> dict:
    """Per label: average precision, precision, recall, F1, its threshold and photos; overall: mAP (over the
    labels that some photo has), exact-match ratio, Hamming loss, micro, macro and weighted averages,
    log-loss and ECE of every (photo, label) pair, macro ROC-AUC; warnings about labels too rare to trust.

    Args:
        y_true: (n, labels) 0 or 1.
        probabilities: (n, labels) each label's probability.
        class_names: the labels, in order.
        thresholds: each label's, or one for all.

    Returns:
        a JSON-ready dict, "multi_label" true.
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, np.float64)
    thresholds = np.broadcast_to(np.asarray(thresholds, np.float64), (len(class_names),))
    predicted = predicted_labels(probabilities, thresholds).astype(int)
    table = skm.classification_report(y_true, predicted, labels=list(range(len(class_names))),
                                      target_names=class_names, output_dict=True, zero_division=0)
    precisions = [_average_precision(y_true[:, k], probabilities[:, k]) for k in range(len(class_names))]
    known = [ap for ap in precisions if ap is not None]
    exact = float(skm.accuracy_score(y_true, predicted))
    both = y_true.min(axis=0) < y_true.max(axis=0)  # labels that some photos have and others lack
    pairs, present = as_binary(probabilities, y_true)
    return {
        "multi_label": True,
        "images": int(len(y_true)),
        "mAP": float(np.mean(known)) if known else None,
        "accuracy": exact,
        "exact_match_ratio": exact,
        "hamming_loss": float(skm.hamming_loss(y_true, predicted)),
        "errors": int((predicted != y_true).any(axis=1).sum()),
        "per_class": {name: {**_prf(table[name]), "average_precision": precisions[k], "threshold": float(thresholds[k])}
                      for k, name in enumerate(class_names)},
        "micro_avg": _prf(table["micro avg"]),
        "macro_avg": _prf(table["macro avg"]),
        "weighted_avg": _prf(table["weighted avg"]),
        "log_loss": float(skm.log_loss(present, pairs, labels=[0, 1])),
        "ece": calibration.expected_calibration_error(pairs, present),
        "roc_auc": float(skm.roc_auc_score(y_true[:, both], probabilities[:, both], average="macro"))
        if both.any() else None,
        "class_names": list(class_names),
        "thresholds": thresholds.tolist(),
        "warnings": [f"label {name!r} is on {count} test photos: its recall moves by {1 / count:.0%} per photo"
                     for name, count in zip(class_names, y_true.sum(axis=0)) if 0 < count < SMALL_CLASS],
    }


def format_label_metrics(metrics) -> list:
    """The lines of a multi-label run's summary: per label and averaged, then the overall scores."""
    names = metrics["class_names"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'':>{width}} {'AP':>9} {'precision':>9} {'recall':>9} {'f1':>9} {'threshold':>9} {'support':>8}"]
    for name in names:
        row = metrics["per_class"][name]
        ap = f"{row['average_precision']:9.4f}" if row["average_precision"] is not None else f"{'n/a':>9}"
        lines.append(f"{name:>{width}} {ap} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} "
                     f"{row['threshold']:9.4f} {row['support']:8d}")
    for name in ("micro avg", "macro avg"):
        row = metrics[name.replace(" ", "_")]
        lines.append(f"{name:>{width}} {'':>9} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f}")
    lines.append("")
    errors = f"{metrics['errors']} photo" + ("" if metrics["errors"] == 1 else "s")
    mean_ap = f"{metrics['mAP']:.4f}" if metrics["mAP"] is not None else "n/a"
    lines.append(f"mAP {mean_ap}   exact match {metrics['exact_match_ratio']:.4f} ({errors} of {metrics['images']} "
                 f"with a wrong label set)   Hamming loss {metrics['hamming_loss']:.4f}")
    auc = f"{metrics['roc_auc']:.4f}" if metrics["roc_auc"] is not None else "n/a"
    lines.append(f"ROC-AUC {auc}   log-loss {metrics['log_loss']:.4f}   ECE {metrics['ece']:.4f} (per label)")
    return lines


def label_issues(y_true, probabilities):
    """Which photos' label sets look wrong, by confident learning (cleanlab's multi-label mode) on
    out-of-sample probabilities (as `metrics.label_issues`)."""
    from cleanlab.multilabel_classification.filter import find_label_issues

    y_true = np.asarray(y_true)
    if len(y_true) < 10 or (y_true.min(axis=0) == y_true.max(axis=0)).any():
        return np.zeros(len(y_true), bool)  # too few photos, or a label no photo (or every photo) has
    # n_jobs=1: as `metrics.label_issues`.
    return find_label_issues([list(np.flatnonzero(row)) for row in y_true], np.asarray(probabilities, np.float64),
                             n_jobs=1)


def label_rows(paths, y_true, probabilities, thresholds, class_names, separator, issues) -> list:
    """One dict per photo, with the columns of `report.prediction_rows`: path, true and predicted label
    sets (joined by `separator`; empty: none), probability (of the predicted set, the labels being
    independent), loss (cross-entropy of the true set: the sum of the labels'), label_looks_wrong, p_LABEL."""
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, np.float64)
    predicted = predicted_labels(probabilities, thresholds)
    clipped = np.clip(probabilities, 1e-12, 1 - 1e-12)
    rows = []
    for path, true, probs, chosen, issue, kept in zip(paths, y_true, probabilities, predicted, issues, clipped):
        row = {"path": path, "true": label_text(true, class_names, separator),
               "predicted": label_text(chosen, class_names, separator),
               "probability": float(np.prod(np.where(chosen, probs, 1 - probs))),
               "loss": float(-np.sum(np.where(true == 1, np.log(kept), np.log(1 - kept)))),
               "label_looks_wrong": bool(issue)}
        row.update({f"p_{name}": float(p) for name, p in zip(class_names, probs)})
        rows.append(row)
    return rows


@dataclasses.dataclass
class MultiLabelEvaluation(Evaluation):
    """The `Evaluation` of a multi-label classifier.

    `y_true` and the probabilities are (n, labels); `threshold` and `temperature` hold one value per
    label; the rows' true and predicted columns are label sets joined by `label_separator`.
    """

    label_separator: str = LABEL_SEPARATOR

    probabilities_of = staticmethod(label_probabilities)
    metrics_of = staticmethod(label_metrics)

    calibration_pairs = staticmethod(as_binary)  # every (photo, label) pair

    def rows_of(self, paths, y_true, probabilities) -> list:
        """One dict per photo (`label_rows`)."""
        return label_rows(paths, y_true, probabilities, self.threshold, self.class_names, self.label_separator,
                          label_issues(y_true, probabilities))

    def figures(self) -> dict:
        """The figures of any evaluation, with a precision-recall curve per label for the confusion matrix;
        no Grad-CAM of mistakes (a mistake may be a label missed, with no evidence to show)."""
        figures = {name: plot for name, plot in super().figures().items()
                   if name not in (run_dir.CONFUSION, run_dir.GRADCAM)}
        return {run_dir.PRECISION_RECALL: self.plot_precision_recall, **figures}

    def plot_confusion(self, ax=None):
        """None: labels are not confused with one another (`plot_precision_recall` shows each label)."""
        return None

    def plot_precision_recall(self, ax=None):
        """Each label's precision-recall curve, its threshold marked; draws on `ax` if given."""
        return report.plot_precision_recall(self.y_true, self.probabilities, self.class_names, self.threshold, ax)

    def plot_gradcam(self, k=None):
        raise UnsupportedError("the report has no Grad-CAM of a multi-label model's mistakes (a mistake may be a "
                               "label missed); explain a photo's labels one by one: catsdogs.load(run).explainer()"
                               ".explain(pixels, class_name=LABEL)")
