"""The one-page HTML report of a run or an evaluation, and its table of predictions."""

import os
import pathlib

import numpy as np

from catsdogs.store import run_dir


def prediction_rows(paths, y_true, probabilities, y_pred, class_names, label_issues):
    """One dict per image: path, true and predicted class, probabilities, loss, label suspicion."""
    rows = []
    for path, true, probs, pred, issue in zip(paths, y_true, probabilities, y_pred, label_issues):
        row = {"path": path, "true": class_names[true], "predicted": class_names[pred],
               "probability": float(probs[pred]), "loss": float(-np.log(max(probs[true], 1e-12))),
               "label_looks_wrong": bool(issue)}
        row.update({f"p_{name}": float(p) for name, p in zip(class_names, probs)})
        rows.append(row)
    return rows


def write_html(writer, title, metrics, mistakes, integrity, config=None):
    """report.html: metrics, figures, mistakes, integrity findings and settings on one page.

    Args:
        writer: the `run_dir.RunWriter` of the folder where the figures are and report.html goes.
        title: page title.
        metrics: from `evaluation.metrics.compute_metrics`.
        mistakes: rows of the mistakes to list.
        integrity: `ScanReport.to_json()`.
        config: dict of settings, if any.
    """
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("catsdogs.evaluation"), autoescape=select_autoescape())
    page = env.get_template(run_dir.REPORT).render(  # templates/ holds it under the name of the file it makes
        title=title, metrics=metrics, mistakes=mistakes, integrity=integrity, config=config,
        figures=[(heading, name) for name, heading in run_dir.FIGURES.items() if os.path.exists(writer.path(name))],
        file_url=lambda p: pathlib.Path(p).resolve().as_uri(),
    )
    # backslashreplace: a file name that is not valid UTF-8 shows escaped rather than failing the report.
    with writer.atomic(run_dir.REPORT) as partial, open(partial, "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(page)
