"""`catsdogs predict`: class probabilities for image files and folders."""

import os

import numpy as np

from catsdogs import features
from catsdogs import model as model_lib
from catsdogs.config import INFERENCE_BATCH_SIZE
from catsdogs.runtimes import ExportedModel


def expand_inputs(inputs):
    """Files as given and every non-hidden file below the given folders, in a stable order."""
    paths = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                paths += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
        else:
            paths.append(item)
    return paths


def predict_files(model, inputs, batch_size=INFERENCE_BATCH_SIZE, tta=False):
    """Predicts every image among the inputs; an unreadable one gets an error, not an exception.

    Args:
        model: a loaded catsdogs Keras model, or an exported one (`runtimes.load`).
        inputs: files and folders.
        batch_size: images per forward pass.
        tta: average the probabilities of the photo and its mirror image.

    Returns:
        one dict per file, in order: path, label, probability (of that label) and probabilities
        per class; or path and error.
    """
    info = model.info if isinstance(model, ExportedModel) else model_lib.describe(model)
    paths = expand_inputs(inputs)
    errors = {}
    probabilities = np.full((len(paths), len(info.class_names)), np.nan)
    views = features.TTA_VIEWS if tta else ("original",)
    for indices, outputs in features.run_on_files(model, paths, info.image_size, batch_size, errors, views,
                                                  desc="predict"):
        probabilities[indices] = outputs.mean(axis=0)
    labels = model_lib.predicted_classes(np.nan_to_num(probabilities), info.threshold)
    rows = []
    for path, probs, label in zip(paths, probabilities, labels):
        if path in errors or np.isnan(probs).any():
            rows.append({"path": path, "error": errors.get(path, "not predicted")})
        else:
            rows.append({"path": path, "label": info.class_names[label], "probability": float(probs[label]),
                         "probabilities": dict(zip(info.class_names, map(float, probs)))})
    return rows


def format_table(rows):
    """A plain table: path, label, probability; errors on their own line."""
    width = max([len(r["path"]) for r in rows] + [4])
    lines = [f"{'file':<{width}}  {'label':<12} probability"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['path']:<{width}}  ERROR: {row['error']}")
        else:
            lines.append(f"{row['path']:<{width}}  {row['label']:<12} {row['probability']:.4f}")
    return "\n".join(lines)
