"""The one-page HTML report of a run or an evaluation, and its table of predictions."""

import os
import pathlib

import numpy as np


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


def write_html(folder, title, sections, metrics, mistakes, integrity, config=None):
    """report.html: metrics, figures, mistakes, integrity findings and settings on one page.

    Args:
        folder: where report.html and the figures are.
        title: page title.
        sections: list of (heading, figure file name) shown in order if the file exists.
        metrics: from `evaluation.compute_metrics`.
        mistakes: rows of the mistakes to list.
        integrity: `ScanReport.to_json()`.
        config: dict of settings, if any.
    """
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("catsdogs.evaluation"), autoescape=select_autoescape())
    page = env.get_template("report.html").render(
        title=title, metrics=metrics, mistakes=mistakes, integrity=integrity, config=config,
        figures=[(h, f) for h, f in sections if os.path.exists(os.path.join(folder, f))],
        file_url=lambda p: pathlib.Path(p).resolve().as_uri(),
    )
    # backslashreplace: a file name that is not valid UTF-8 shows escaped rather than failing the report.
    with open(os.path.join(folder, "report.html"), "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(page)
