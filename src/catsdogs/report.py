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
    ax.set_title(title, color=color, fontsize=11)
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


def plot_errors(mistakes, path, count=16):
    """The first `count` mistakes (most confident first), marking those whose label looks wrong."""
    mistakes = mistakes[:count]
    columns = 4
    lines = max(1, -(-len(mistakes) // columns))
    fig, axes = plt.subplots(lines, columns, figsize=(2.8 * columns, 3.0 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, mistakes):
        suspect = " (label looks wrong)" if row["label_looks_wrong"] else ""
        title = f"{row['predicted']} {row['probability']:.2f}, true {row['true']}\n{os.path.basename(row['path'])}{suspect}"
        _show(ax, row["path"], title, WRONG)
    if not mistakes:
        axes[0, 0].text(0, 0.5, "no mistakes", fontsize=14)
    fig.suptitle("Most confident mistakes (predicted, probability, true label)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_gradcam(mistakes, model, path, columns=4):
    """Grad-CAM of mistakes: where the model saw the class it wrongly predicted.

    Args:
        mistakes: prediction rows, most confident mistakes first.
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
    """Loss and accuracy per epoch, training and validation, from history.csv rows (all stages)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = range(1, len(history) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            ax.plot(epochs, [float(r[prefix + metric]) for r in history], marker=".", label=label)
        stages = [r["stage"] for r in history]
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                ax.axvline(i + 0.5, color="grey", linestyle="--")
                ax.text(i + 0.6, ax.get_ylim()[1], f" {stages[i].replace('_', '-')}", va="top", color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_reliability(curves, y_true, path, bins=15):
    """Reliability diagram: accuracy against confidence per bin, marker area by image count."""
    from catsdogs.calibration import expected_calibration_error, reliability

    fig, ax = plt.subplots(figsize=(5.5, 5))
    chance = 1 / next(iter(curves.values())).shape[1]
    ax.plot([chance, 1], [chance, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for label, probs in curves.items():
        confidence, accuracy, count = reliability(probs, y_true, bins)
        ece = expected_calibration_error(probs, y_true, bins)
        line, = ax.plot(confidence, accuracy, alpha=0.6, label=f"{label} (ECE {ece:.4f})")
        ax.scatter(confidence, accuracy, s=15 + 300 * count / count.sum(), color=line.get_color())
    ax.set_xlim(chance - 0.02, 1.02)
    ax.set_ylim(chance - 0.02, 1.02)
    ax.set_xlabel("confidence (top probability), marker area: images")
    ax.set_ylabel("accuracy")
    ax.set_title("Is a printed 0.9 right nine times in ten?")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
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
