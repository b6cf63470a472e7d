"""Metrics of predicted probabilities against true labels, and the evaluation files of a run."""

import dataclasses
import datetime
import json
import logging
import os

import numpy as np
from sklearn import metrics as skm

from catsdogs import calibration, data, features, report
from catsdogs import model as model_lib
from catsdogs.config import INFERENCE_BATCH_SIZE
from catsdogs.model import predicted_classes

log = logging.getLogger(__name__)

FIGURES = (
    ("The study's grid: 25 random test images", "grid.png"),
    ("Learning curves", "curves.png"),
    ("Confusion matrix", "confusion.png"),
    ("Most confident mistakes", "errors.png"),
    ("Grad-CAM of the most confident mistakes", "gradcam.png"),
    ("Reliability of the probabilities (test)", "reliability.png"),
)
GRADCAM_MISTAKES = 8  # Grad-CAM needs a forward and a backward pass per photo: keep it to a handful


def compute_metrics(y_true, probabilities, class_names, threshold=0.5):
    """Accuracy, per-class and averaged precision/recall/F1, ROC-AUC, log-loss, ECE, confusion matrix.

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
    result = {
        "images": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "errors": int((y_true != y_pred).sum()),
        "per_class": {name: _prf(table[name]) for name in class_names},
        "macro_avg": _prf(table["macro avg"]),
        "weighted_avg": _prf(table["weighted avg"]),
        # float32 outputs sum to 1 only within float32 rounding, which log_loss warns about.
        "log_loss": float(skm.log_loss(y_true, probabilities / probabilities.sum(axis=1, keepdims=True),
                                       labels=labels)),
        "ece": calibration.expected_calibration_error(probabilities, y_true),
        "roc_auc": None,
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
        "threshold": float(threshold),
    }
    if len(np.unique(y_true)) == len(class_names):
        scores = probabilities[:, 1] if len(class_names) == 2 else probabilities
        result["roc_auc"] = float(skm.roc_auc_score(y_true, scores, multi_class="ovr", labels=labels))
    return result


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


def format_metrics(metrics):
    """A classification_report-style table followed by the threshold-free scores."""
    names = metrics["class_names"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    rows = [(n, metrics["per_class"][n]) for n in names]
    rows += [("macro avg", metrics["macro_avg"]), ("weighted avg", metrics["weighted_avg"])]
    for name, row in rows:
        lines.append(f"{name:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:8d}")
    lines.append("")
    lines.append(f"accuracy {metrics['accuracy']:.4f} ({metrics['errors']} errors in {metrics['images']} images)")
    auc = f"{metrics['roc_auc']:.4f}" if metrics["roc_auc"] is not None else "n/a"
    lines.append(f"ROC-AUC {auc}   log-loss {metrics['log_loss']:.4f}   ECE {metrics['ece']:.4f}")
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
class Results:
    """Predictions on a test split and what the report says about them."""

    paths: list
    y_true: np.ndarray
    probabilities: np.ndarray  # what the model outputs
    class_names: list
    threshold: float
    uncalibrated: np.ndarray = None  # before temperature scaling, if known
    tta_probabilities: np.ndarray = None  # averaged over test-time augmentation views
    validation: dict = None
    validation_tta: dict = None
    temperature: float = None
    stages: dict = None


def write_evaluation(folder, results, integrity, title, config=None, model=None):
    """Writes metrics.json, predictions.csv, integrity.json, the figures and report.html.

    Args:
        folder: output folder (a run directory or an evaluation folder).
        results: a `Results`.
        integrity: `ScanReport.to_json()` of the data.
        title: report title.
        config: settings to show in the report, if any.
        model: the model evaluated; with it, the report shows Grad-CAM of the top mistakes.

    Returns:
        the metrics dict: test metrics at the top level, then "tta", "validation",
        "calibration" and "stages" where known.
    """
    r = results
    metrics = compute_metrics(r.y_true, r.probabilities, r.class_names, r.threshold)
    if r.tta_probabilities is not None:
        metrics["tta"] = compute_metrics(r.y_true, r.tta_probabilities, r.class_names, r.threshold)
    for key, value in (("validation", r.validation), ("validation_tta", r.validation_tta), ("stages", r.stages)):
        if value is not None:
            metrics[key] = value
    if r.temperature is not None:
        metrics["calibration"] = {"temperature": r.temperature, "test_ece_after": metrics["ece"]}
        if r.uncalibrated is not None:
            metrics["calibration"]["test_ece_before"] = calibration.expected_calibration_error(r.uncalibrated, r.y_true)
    y_pred = predicted_classes(r.probabilities, r.threshold)
    rows = report.prediction_rows(r.paths, r.y_true, r.probabilities, y_pred, r.class_names,
                                  label_issues(r.y_true, r.probabilities))
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    report.write_csv(rows, os.path.join(folder, "predictions.csv"))
    with open(os.path.join(folder, "integrity.json"), "w") as f:
        json.dump(integrity, f, indent=2)
    report.plot_grid(rows, os.path.join(folder, "grid.png"))
    report.plot_confusion(metrics["confusion_matrix"], r.class_names, os.path.join(folder, "confusion.png"))
    mistakes = sorted((row for row in rows if row["predicted"] != row["true"]), key=lambda row: -row["loss"])
    report.plot_errors(mistakes, os.path.join(folder, "errors.png"))
    if model is not None and mistakes:
        report.plot_gradcam(mistakes[:GRADCAM_MISTAKES], model, os.path.join(folder, "gradcam.png"))
    curves = {"calibrated" if r.uncalibrated is not None else "model": r.probabilities}
    if r.uncalibrated is not None:
        curves = {"before calibration": r.uncalibrated, **curves}
    report.plot_reliability(curves, r.y_true, os.path.join(folder, "reliability.png"))
    report.write_html(folder, title, FIGURES, metrics, mistakes[:100], integrity, config)
    return metrics


def evaluate_model(run_or_model, data_dir, output_dir=None, batch_size=INFERENCE_BATCH_SIZE, tta=False):
    """Evaluates a saved model on labelled images and writes the evaluation files.

    Args:
        run_or_model: a run directory or .keras file.
        data_dir: a dataset with a test split, or one folder of class folders.
        output_dir: where metrics, predictions, figures and report.html go; by default an
            `eval-<time>` folder beside the model.
        batch_size: images per forward pass.
        tta: also report test-time augmentation (original and flipped views averaged).

    Returns:
        (output folder, metrics dict).
    """
    model_path = model_lib.resolve_model_path(run_or_model)
    model = model_lib.load(model_path)
    info = model_lib.describe(model)
    dataset = data.discover(data_dir)
    split = "test" if "test" in dataset.splits else "all"
    if split not in dataset.splits:
        raise data.DataError(f"{data_dir}: no test folder, and not a folder of class folders")
    unknown = sorted(set(dataset.class_names) - set(info.class_names))
    if unknown:
        raise data.DataError(f"{data_dir}: classes {unknown} are unknown to the model, which knows {info.class_names}")
    scan = data.scan(data.Dataset(dataset.root, dataset.class_names, {split: dataset.splits[split]}))
    samples = [s for s in dataset.splits[split] if s.path in scan.hashes]
    paths = [s.path for s in samples]
    y_true = np.array([info.class_names.index(dataset.class_names[s.label]) for s in samples])
    views = features.TTA_VIEWS if tta else ("original",)
    errors = {}
    probabilities = np.full((len(views), len(paths), len(info.class_names)), np.nan)
    for indices, outputs in features.run_on_files(model, paths, info.image_size, batch_size, errors, views,
                                                  desc="evaluate"):
        probabilities[:, indices] = outputs
    for path, reason in errors.items():
        scan.add_problem(path, reason)
    ok = ~np.isnan(probabilities).any(axis=(0, 2))
    output_dir = output_dir or os.path.join(os.path.dirname(model_path), f"eval-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.makedirs(output_dir, exist_ok=True)
    results = Results([p for p, k in zip(paths, ok) if k], y_true[ok], probabilities[0, ok], info.class_names,
                      info.threshold, tta_probabilities=probabilities[:, ok].mean(axis=0) if tta else None)
    metrics = write_evaluation(output_dir, results, scan.to_json(), f"catsdogs evaluation of {model_path} on {data_dir}",
                               model=model)
    return output_dir, metrics
