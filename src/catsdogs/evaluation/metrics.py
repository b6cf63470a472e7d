"""Metrics of predicted probabilities against true labels, and their text summary."""

import numpy as np
from sklearn import metrics as skm

from catsdogs.evaluation.coverage import format_set_metrics
from catsdogs.evaluation.statistics import add_intervals
from catsdogs.models import calibration
from catsdogs.models.model import predicted_classes

TOP_K = (3, 5)  # top-k accuracies reported where there are more than k classes
CONFUSED_PAIRS = 10  # the most confused (true, predicted) pairs listed
# Fewer test photos of a class than this and its recall moves by more than 3 points per photo: warned.
SMALL_CLASS = 30


def compute_metrics(y_true, probabilities, class_names, threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, per-class and averaged precision/recall/F1 and PR-AUC, the
    smallest class and its recall, top-k accuracy (more than 3 classes), ROC-AUC, log-loss, ECE,
    the confusion matrix and its most confused pairs, and warnings about classes too small to trust;
    each accuracy-like metric with its 95% interval beside it, NAME_ci (`statistics.add_intervals`).

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
    add_intervals(result, confusion, {k: round(value * len(y_true))
                                      for k, value in result.get("top_k_accuracy", {}).items()})
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


def stage_summary(val, test, class_names, seconds, probabilities_of=calibration.probabilities,
                  metrics_of=compute_metrics):
    """Loss and accuracy of a training stage's model (uncalibrated, threshold 0.5).

    Args:
        val: (labels, logits) of the validation images: what stages are compared on.
        test: (labels, logits) of the test images, for the record only.
        class_names: in label order.
        seconds: how long the stage took.
        probabilities_of, metrics_of: how logits become probabilities and probabilities metrics (a
            multi-label model's own: `evaluate.Evaluation.stage_summary`).
    """
    summary = {"seconds": round(seconds, 1)}
    for split, (y_true, logits) in (("val", val), ("test", test)):
        scores = metrics_of(y_true, probabilities_of(logits, class_names), class_names)
        summary.update({f"{split}_loss": scores["log_loss"], f"{split}_accuracy": scores["accuracy"]})
    return summary


def _interval(interval):
    """" [low, high]" of a 95% interval, or nothing (metrics written before catsdogs had them)."""
    return f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""


def format_metrics(metrics: dict) -> str:
    """A classification_report-style table followed by the threshold-free scores (a multi-label run's:
    `multilabel.format_label_metrics`), then warnings, the open set and test-time augmentation; accuracy,
    balanced accuracy and the smallest class's recall with their 95% intervals in brackets."""
    if metrics.get("multi_label"):
        from catsdogs.evaluation.multilabel import format_label_metrics  # it builds on this module

        lines = format_label_metrics(metrics)
    else:
        lines = _class_lines(metrics)
    lines += [f"warning: {warning}" for warning in metrics.get("warnings", ())]
    if metrics.get("open_set"):
        o = metrics["open_set"]
        lines.append(f"open set ({'+'.join(o['methods'])}): threshold {o['threshold']:.4f} keeps {o['test_kept']:.2%} "
                     f"of the test photos" + (f" (accuracy on them {o['test_accuracy_accepted']:.4f}"
                                              f"{_interval(o.get('test_accuracy_accepted_ci'))})"
                                              if o["test_accuracy_accepted"] is not None else ""))
        if o.get("unknown"):
            u = o["unknown"]
            accepted = u.get("accepted_ci")
            lines.append(f"unknown photos: {u['photos']}, {u['accepted']:.1%} wrongly accepted"
                         + (f" [{accepted[0]:.1%}, {accepted[1]:.1%}]" if accepted else "")
                         + f"; AUROC {u['auroc']:.4f}; "
                         f"false accepts at 99%/95% of test kept: {u['false_accepts_at_99']:.1%}/"
                         f"{u['false_accepts_at_95']:.1%}")
    if metrics.get("prediction_sets"):
        lines.append(format_set_metrics(metrics["prediction_sets"]))
    if metrics.get("learning_curve"):
        curve = metrics["learning_curve"]
        lines.append("learning curve (test accuracy, mean ± std): " + ", ".join(
            f"{point['photos_per_class']:.0f}/class {point['accuracy']['mean']:.2%} ± {point['accuracy']['std']:.2%}"
            for point in curve["points"]))
        lines.append(curve["statement"])
    if metrics.get("tta"):
        tta = metrics["tta"]
        lines.append(f"with test-time augmentation: accuracy {tta['accuracy']:.4f}{_interval(tta.get('accuracy_ci'))} "
                     f"({tta['errors']} errors), log-loss {tta['log_loss']:.4f}")
    if metrics.get("intervals"):
        intervals = metrics["intervals"]
        lines.append(f"[low, high]: {intervals['level']:.0%} intervals ({intervals['proportions']}; balanced "
                     f"accuracy: {intervals['means_of_proportions']})")
    return "\n".join(lines)


def _class_lines(metrics):
    """The lines of a single-label run's summary: its classification report and scores."""
    names = metrics["class_names"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    rows = [(n, metrics["per_class"][n]) for n in names]
    rows += [("macro avg", metrics["macro_avg"]), ("weighted avg", metrics["weighted_avg"])]
    for name, row in rows:
        lines.append(f"{name:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:8d}")
    lines.append("")
    errors = f"{metrics['errors']} error" + ("" if metrics["errors"] == 1 else "s")
    lines.append(f"accuracy {metrics['accuracy']:.4f}{_interval(metrics.get('accuracy_ci'))} ({errors} in "
                 f"{metrics['images']} images)   balanced accuracy {metrics['balanced_accuracy']:.4f}"
                 f"{_interval(metrics.get('balanced_accuracy_ci'))}")
    smallest = metrics["smallest_class"]
    if smallest["unbalanced"]:
        lines.append(f"smallest class {smallest['name']!r}: {smallest['photos']} photos, recall "
                     f"{smallest['recall']:.4f}{_interval(smallest.get('recall_ci'))}")
    if metrics.get("top_k_accuracy"):
        lines.append("   ".join(f"top-{k} accuracy {v:.4f}" for k, v in metrics["top_k_accuracy"].items()))
    auc = f"{metrics['roc_auc']:.4f}" if metrics["roc_auc"] is not None else "n/a"
    lines.append(f"ROC-AUC {auc}   log-loss {metrics['log_loss']:.4f}   ECE {metrics['ece']:.4f}")
    if len(names) > 2 and metrics.get("most_confused"):
        lines.append("most confused: " + "; ".join(f"{pair['true']} as {pair['predicted']} ({pair['photos']})"
                                                   for pair in metrics["most_confused"][:5]))
    return lines


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
