"""Figures and the one-page HTML report of a run or an evaluation."""

import csv
import os
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from catsdogs import explain  # noqa: E402
from catsdogs.images import ImageError, load_image  # noqa: E402

RIGHT, WRONG = "#1a7f37", "#cf222e"


def prediction_rows(paths, y_true, probabilities, y_pred, class_names):
    """One dict per image: path, true and predicted class, their probabilities, and the loss."""
    rows = []
    for path, true, probs, pred in zip(paths, y_true, probabilities, y_pred):
        row = {"path": path, "true": class_names[true], "predicted": class_names[pred],
               "probability": float(probs[pred]), "loss": float(-np.log(max(probs[true], 1e-12)))}
        row.update({f"p_{name}": float(p) for name, p in zip(class_names, probs)})
        rows.append(row)
    return rows


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["path"])
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _show(ax, path, title, color):
    try:
        ax.imshow(load_image(path))
    except ImageError:
        ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
    ax.set_title(title, color=color, fontsize=9)
    ax.axis("off")


def plot_grid(rows, path, seed=0, side=5):
    """The study's figure: a side x side grid of random test images with their predictions."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(rows), size=min(side * side, len(rows)), replace=False)
    fig, axes = plt.subplots(side, side, figsize=(2.4 * side, 2.6 * side))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, chosen):
        row = rows[i]
        right = row["predicted"] == row["true"]
        title = f"{row['predicted']} {row['probability']:.2f}" + ("" if right else f"\n(true: {row['true']})")
        _show(ax, row["path"], title, RIGHT if right else WRONG)
    fig.suptitle("Random test images: predicted class and probability (mistakes in red)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_errors(rows, path, count=16):
    """The most confident mistakes, worst first. Returns the rows shown."""
    mistakes = sorted((r for r in rows if r["predicted"] != r["true"]), key=lambda r: -r["loss"])[:count]
    columns = 4
    lines = max(1, -(-len(mistakes) // columns))
    fig, axes = plt.subplots(lines, columns, figsize=(2.8 * columns, 3.0 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, mistakes):
        title = f"{row['predicted']} {row['probability']:.2f}, true {row['true']}\n{os.path.basename(row['path'])}"
        _show(ax, row["path"], title, WRONG)
    if not mistakes:
        axes[0, 0].text(0, 0.5, "no mistakes", fontsize=14)
    fig.suptitle("Most confident mistakes (predicted, probability, true label)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return mistakes


def plot_gradcam(mistakes, model, path, columns=4):
    """Grad-CAM of mistakes: where the model saw the class it wrongly predicted.

    Args:
        mistakes: prediction rows, e.g. the most confident mistakes from `plot_errors`.
        model: the catsdogs model that made them.
        path: the figure file.
        columns: photos per line.
    """
    explainer = explain.Explainer(model)
    photos, shown = [], []
    for row in mistakes:
        try:
            photos.append(load_image(row["path"]))
            shown.append(row)
        except ImageError:
            continue  # gone since the evaluation; the other figures say so
    if not shown:
        return
    batch = np.stack([explainer.prepare(pixels) for pixels in photos])
    heatmaps = explainer.heatmaps(batch, [explainer.class_names.index(row["predicted"]) for row in shown])
    lines = -(-len(shown) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(2.8 * columns, 3.0 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row, pixels, heatmap in zip(axes.flat, shown, photos, heatmaps):
        ax.imshow(explain.overlay(pixels, heatmap))
        ax.set_title(f"{row['predicted']} {row['probability']:.2f}, true {row['true']}\n{os.path.basename(row['path'])}",
                     color=WRONG, fontsize=9)
    fig.suptitle("Grad-CAM of the most confident mistakes: evidence for the predicted class")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_confusion(confusion, class_names, path):
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(class_names), 1.2 + 1.2 * len(class_names)))
    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=class_names).plot(
        ax=ax, cmap="Blues", values_format="d", colorbar=False)
    ax.set_title("Confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history, path):
    """Loss and accuracy per epoch, training and validation, from history.csv rows."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = [float(r[prefix + metric]) for r in history if r.get(prefix + metric) not in (None, "")]
            ax.plot(range(1, len(values) + 1), values, marker=".", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    best = int(np.argmin([float(r["val_loss"]) for r in history])) + 1 if history else None
    if best:
        for ax in axes:
            ax.axvline(best, color="grey", linestyle=":", label="best epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_html(folder, title, sections, metrics, mistakes, integrity, config=None):
    """report.html: metrics, figures, mistakes, integrity findings and settings on one page.

    Args:
        folder: where report.html and the figures are.
        title: page title.
        sections: list of (heading, figure file name) shown in order if the file exists.
        metrics: from `evaluate.compute_metrics`.
        mistakes: rows of the mistakes to list.
        integrity: `ScanReport.to_json()`.
        config: dict of settings, if any.
    """
    env = Environment(loader=PackageLoader("catsdogs"), autoescape=select_autoescape())
    page = env.get_template("report.html").render(
        title=title, metrics=metrics, mistakes=mistakes, integrity=integrity, config=config,
        figures=[(h, f) for h, f in sections if os.path.exists(os.path.join(folder, f))],
        file_url=lambda p: pathlib.Path(p).resolve().as_uri(),
    )
    with open(os.path.join(folder, "report.html"), "w") as f:
        f.write(page)
