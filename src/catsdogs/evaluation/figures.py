"""Figures and the one-page HTML report of a run or an evaluation.

Every `plot_*` function returns a matplotlib Figure and leaves no figure open in pyplot, so a
notebook shows it once where it is returned and a script can save it (`save_figure`). Nothing
here chooses matplotlib's backend: saving to a file works with any of them. Class and file names
are shown as they are (`plain`): matplotlib would read `$...$` in them as mathtext, and fail on
some (`$\frac{}$`) when the figure is drawn.
"""

import os

import numpy as np

from catsdogs.errors import ImageError
from catsdogs.inference.preprocess import DISPLAY_SIZE, load_photo

RIGHT, WRONG = "#1a7f37", "#cf222e"


def plain(name):
    """A class or file name as matplotlib text that shows it as it is, never as mathtext.

    Matplotlib parses text with an even number of unescaped `$` as mathtext; with every `$`
    escaped it parses none, shows `\\$` as `$` and everything else (backslashes included) as
    written.
    """
    return str(name).replace("$", r"\$")


def new_figure(rows=1, columns=1, figsize=None):
    """A figure and its grid of axes (always 2-D), not left open in pyplot."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, columns, figsize=figsize, squeeze=False)
    plt.close(fig)  # pyplot forgets it: shown once where returned, never piled up in a long run
    return fig, axes


def _figure_and_ax(ax, figsize):
    """The axes to draw on: `ax` if given, else one new figure's."""
    if ax is not None:
        return ax.figure, ax
    fig, axes = new_figure(figsize=figsize)
    return fig, axes[0, 0]


def save_figure(fig, path, dpi=90):
    """Lays the figure out and writes it to a file (format from the extension)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def _show(ax, path, title, color, image_size, pixels=None):
    """Shows a photo (`pixels`, else the file at `path` decoded near `image_size`) with its title."""
    try:
        ax.imshow(load_photo(path, image_size) if pixels is None else pixels)
    except ImageError:
        ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
    ax.set_title(title, color=color, fontsize=10)
    ax.axis("off")


def _photo_grid(count, columns, title):
    lines = max(1, -(-count // columns))
    fig, axes = new_figure(lines, columns, figsize=(2.8 * columns, 3.0 * lines))
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title)
    return fig, axes


def _short(name, width=18):
    """A name in at most `width` characters, as matplotlib text (`plain`): its start and its end
    around "…", so that names that differ only at the end (class_01, class_02) stay apart. An empty
    one is a multi-label photo's empty set of labels: "no label"."""
    name = name or "no label"
    if len(name) > width:
        tail = (width - 1) // 2
        name = name[:width - 1 - tail] + "…" + name[-tail:]
    return plain(name)


def plot_grid(rows, seed=0, side=5, image_size=DISPLAY_SIZE):
    """The study's figure: a side x side grid of random test images with their predictions.

    `image_size`, here and in the other figures of photos: the side they are decoded near (see
    `preprocess.load_photo`), the model's input size where it is known.
    """
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(rows), size=min(side * side, len(rows)), replace=False)
    fig, axes = new_figure(side, side, figsize=(2.4 * side, 2.6 * side))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, chosen):
        row = rows[i]
        right = row["predicted"] == row["true"]
        title = f"{_short(row['predicted'])} {row['probability']:.2f}" + ("" if right else f"\n(true: {_short(row['true'])})")
        _show(ax, row["path"], title, RIGHT if right else WRONG, image_size)
    fig.suptitle("Random test images: predicted class and probability (mistakes in red)")
    return fig


def plot_top_losses(mistakes, k=16, columns=4, image_size=DISPLAY_SIZE):
    """The first `k` mistakes (most confident first), marking those whose label looks wrong."""
    mistakes = mistakes[:k]
    fig, axes = _photo_grid(len(mistakes), columns, "Most confident mistakes (predicted, probability, true label)")
    for ax, row in zip(axes.flat, mistakes):
        suspect = " (label looks wrong)" if row["label_looks_wrong"] else ""
        title = (f"{_short(row['predicted'])} {row['probability']:.2f}, true {_short(row['true'])}\n"
                 f"{_short(os.path.basename(row['path']), 28)}{suspect}")
        _show(ax, row["path"], title, WRONG, image_size)
    if not mistakes:
        axes[0, 0].text(0, 0.5, "no mistakes", fontsize=14)
    return fig


def plot_gradcam(mistakes, explainer, columns=4):
    """Grad-CAM of mistakes: where the model saw the class it wrongly predicted.

    Args:
        mistakes: prediction rows, most confident mistakes first.
        explainer: an `explain.Explainer` of the model that made them.
        columns: photos per line.
    """
    from catsdogs.inference.explain import overlay

    photos, shown = [], []
    for row in mistakes:
        try:
            photos.append(load_photo(row["path"], explainer.info.image_size))
            shown.append(row)
        except ImageError:
            continue  # gone since the evaluation; the other figures say so
    fig, axes = _photo_grid(len(shown), columns,
                            "Grad-CAM of the most confident mistakes: evidence for the predicted class")
    if not shown:
        axes[0, 0].text(0, 0.5, "no mistakes", fontsize=14)
        return fig
    batch = np.stack([explainer.prepare(pixels) for pixels in photos])
    heatmaps = explainer.heatmaps(batch, [explainer.class_names.index(row["predicted"]) for row in shown])
    for ax, row, pixels, heatmap in zip(axes.flat, shown, photos, heatmaps):
        title = (f"{_short(row['predicted'])} {row['probability']:.2f}, true {_short(row['true'])}\n"
                 f"{_short(os.path.basename(row['path']), 28)}")
        _show(ax, row["path"], title, WRONG, explainer.info.image_size, pixels=overlay(pixels, heatmap))
    return fig


def plot_confusion(confusion, class_names, ax=None):
    """The confusion matrix (rows: true class, columns: predicted), each row normalised to the
    share of its class's photos, so that a small class reads as well as a large one.

    The shares are written in the cells up to 12 classes; beyond, the colours carry them and the
    cells stay legible (the most confused pairs are listed in metrics.json and the report).
    """
    from sklearn.metrics import ConfusionMatrixDisplay

    confusion = np.asarray(confusion)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    many = len(class_names) > 12
    side = 1.5 + (0.3 if many else 0.9) * len(class_names)
    fig, ax = _figure_and_ax(ax, (side + 1.5, side))
    labels = [plain(name) for name in class_names]  # in full: the ends tell them apart
    ConfusionMatrixDisplay(shares, display_labels=labels).plot(
        ax=ax, cmap="Blues", values_format=".2f", include_values=not many, colorbar=True,
        xticks_rotation=90 if many else 45 if len(class_names) > 4 else "horizontal", im_kw={"vmin": 0, "vmax": 1})
    if many:
        ax.tick_params(labelsize=7)
    ax.images[-1].colorbar.set_label("share of the true class's photos")
    ax.set_title("Confusion matrix (test)")
    return fig


def plot_precision_recall(y_true, probabilities, class_names, thresholds, ax=None):
    """A multi-label model's precision-recall curve of each label (test), a dot where its threshold is.

    Args:
        y_true: (n, labels) 0 or 1.
        probabilities: (n, labels) each label's probability.
        class_names: the labels.
        thresholds: each label's decision threshold.
        ax: axes to draw on (a new figure if None).
    """
    from sklearn.metrics import PrecisionRecallDisplay, precision_score, recall_score

    y_true, probabilities = np.asarray(y_true), np.asarray(probabilities)
    fig, ax = _figure_and_ax(ax, (6, 5))
    for k, name in enumerate(class_names):
        if not y_true[:, k].any():
            continue  # no photo has the label: no curve
        display = PrecisionRecallDisplay.from_predictions(y_true[:, k], probabilities[:, k], ax=ax, name=plain(name))
        chosen = probabilities[:, k] >= thresholds[k]
        ax.scatter(recall_score(y_true[:, k], chosen, zero_division=0),
                   precision_score(y_true[:, k], chosen, zero_division=0), color=display.line_.get_color(), zorder=3)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Each label's precision and recall (test); dots: at its threshold")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return fig


def plot_curves(history):
    """Loss and accuracy per epoch, training and validation, across training stages.

    Args:
        history: rows with stage, loss, accuracy, val_loss, val_accuracy (as in history.csv).
    """
    fig, axes = new_figure(1, 2, figsize=(11, 4))
    epochs = range(1, len(history) + 1)
    for ax, metric in zip(axes.flat, ("loss", "accuracy")):
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
    return fig


def plot_reliability(curves, y_true, bins=15, ax=None):
    """Reliability diagram: accuracy against confidence per bin, marker area by image count.

    Args:
        curves: label -> (n, classes) probabilities, one line each.
        y_true: true class indices.
        bins: equal-width confidence bins.
        ax: axes to draw on (a new figure if None).
    """
    from catsdogs.models.calibration import expected_calibration_error, reliability

    fig, ax = _figure_and_ax(ax, (5.5, 5))
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
    return fig


def plot_scores(groups, threshold, ax=None):
    """Histograms of in-distribution scores per group of photos, with the reject threshold.

    Args:
        groups: label -> scores in [0, 1].
        threshold: photos below it are rejected.
        ax: axes to draw on (a new figure if None).
    """
    fig, ax = _figure_and_ax(ax, (8, 4.5))
    bins = np.linspace(0, 1, 41)
    for label, scores in groups.items():
        rejected = float((np.asarray(scores) < threshold).mean())
        ax.hist(scores, bins=bins, alpha=0.5, density=True, label=f"{label}: {len(scores)}, {rejected:.1%} rejected")
    ax.axvline(threshold, color=WRONG, linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("in-distribution score: share of training photos that look less typical")
    ax.set_ylabel("density")
    ax.set_title("Which photos are answered \"unknown\" (left of the threshold)")
    ax.legend(loc="upper left")
    return fig


def plot_rejections(rows, k=8, columns=4, image_size=DISPLAY_SIZE):
    """The `k` most confident rejections (lowest scores) and the `k` least confident (nearest the threshold).

    Args:
        rows: rejected photos, lowest score first: dicts with path, group ("test" or "unknown"), score.
    """
    chosen = rows[:k] + rows[k:][-k:]
    fig, axes = _photo_grid(len(chosen), columns,
                            f"Rejected as none of the classes: the {min(k, len(rows))} most confident, "
                            f"then the {len(chosen) - min(k, len(rows))} least confident")
    for ax, row in zip(axes.flat, chosen):
        color = WRONG if row["group"] == "test" else RIGHT  # a rejected known photo is a mistake
        _show(ax, row["path"], f"{row['group']}, score {row['score']:.3f}\n"
                               f"{_short(os.path.basename(row['path']), 28)}", color, image_size)
    if not chosen:
        axes[0, 0].text(0, 0.5, "no photo rejected", fontsize=14)
    return fig


def plot_learning_curve(curve):
    """Test accuracy and log-loss against training photos per class, from `evaluation.learning_curve`.

    Each share's mean is a line with its spread over the draws as a band (one standard deviation);
    the recall of the smallest classes is drawn against their own photo counts; the fitted power law
    continues, dashed, to twice the photos.
    """
    from catsdogs.evaluation.learning_curve import power_law_error

    points = curve["points"]
    n = np.array([p["photos_per_class"] for p in points])
    fig, axes = new_figure(1, 2, figsize=(11, 4.2))
    for ax, metric, label in ((axes[0, 0], "accuracy", "test accuracy"), (axes[0, 1], "log_loss", "test log-loss")):
        mean = np.array([p[metric]["mean"] for p in points])
        std = np.array([p[metric]["std"] for p in points])
        line, = ax.plot(n, mean, marker="o", label=f"{label} (mean of {curve['repeats']} draws)")
        ax.fill_between(n, mean - std, mean + std, color=line.get_color(), alpha=0.2, label="± 1 standard deviation")
        ax.set_xscale("log")
        ax.set_xlabel("training photos per class")
        ax.set_title(label)
        ax.grid(alpha=0.3, which="both")
    if len(curve["smallest_classes"]) < len(points[0]["photos"]):  # else the classes' recalls are the whole story
        for name in curve["smallest_classes"]:
            axes[0, 0].plot([p["photos"][name] for p in points], [p["recall"][name]["mean"] for p in points],
                            linestyle=":", marker=".", label=f"recall of {_short(name)} (a smallest class)")
    if curve["power_law"]:
        extended = np.geomspace(n[0], 2 * n[-1], 50)
        axes[0, 0].plot(extended, 1 - power_law_error(extended, **curve["power_law"]), color="grey", linestyle="--",
                        label="power law fitted to the error, extrapolated")
    axes[0, 0].legend(loc="lower right", fontsize=8)
    axes[0, 1].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"Learning curve ({curve['head']} head fitted on shares of the training photos)")
    return fig


def plot_near_duplicates(pairs, total=None, image_size=DISPLAY_SIZE, columns=2, title="Near-duplicates in different splits"):
    """Pairs of near-duplicate photos (in different splits), side by side.

    Args:
        pairs: dicts with "paths" and "splits" (two each), "found_by", and "distance" (bits of the
            perceptual hash) or "similarity" (of the features).
        total: how many pairs there are in all, if more than shown.
        image_size: the side photos are decoded near.
        columns: pairs per line.
        title: the figure's, before the count of pairs.
    """
    shown = f"{len(pairs)} pair" + ("" if len(pairs) == 1 else "s") + (f" of {total}" if total and total > len(pairs) else "")
    fig, axes = _photo_grid(2 * len(pairs), 2 * max(1, min(columns, len(pairs))), f"{title}: {shown}")
    for number, pair in enumerate(pairs):
        found = (f"hash, {pair['distance']} bits apart" if "distance" in pair
                 else f"features, similarity {pair['similarity']:.3f}")
        for side, (path, split) in enumerate(zip(pair["paths"], pair["splits"])):
            ax = axes.flat[2 * number + side]
            title = f"{split}: {_short(os.path.basename(path), 24)}" + (f"\n{found}" if side == 0 else "\n")
            _show(ax, path, title, WRONG if split == "test" else "black", image_size)
    return fig


def plot_similar(mistakes, image_size=DISPLAY_SIZE):
    """Mistakes, each beside the training photos most similar to it: which photos the model thinks it resembles.

    A training photo's title is green where its label is the mistake's true class, red where it is the
    class wrongly predicted; one whose file is not reachable from here is named instead of shown.

    Args:
        mistakes: prediction rows, most confident mistakes first, each with "similar": its
            `inference.similar.SimilarPhoto`s, most similar first.
        image_size: the side photos are decoded near.
    """
    columns = 1 + max((len(row["similar"]) for row in mistakes), default=0)
    fig, axes = new_figure(max(1, len(mistakes)), columns, figsize=(2.4 * columns, 2.7 * max(1, len(mistakes))))
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Most confident mistakes (left) and the training photos most similar to each\n"
                 "(label and cosine similarity of features; green: the true class, red: the class predicted)")
    for line, row in zip(axes, mistakes):
        _show(line[0], row["path"], f"{_short(row['predicted'])} {row['probability']:.2f}, true {_short(row['true'])}\n"
                                    f"{_short(os.path.basename(row['path']), 28)}", WRONG, image_size)
        for ax, photo in zip(line[1:], row["similar"]):
            color = RIGHT if photo.label == row["true"] else WRONG if photo.label == row["predicted"] else "black"
            title = f"{_short(photo.label)} {photo.similarity:.2f}\n{_short(os.path.basename(photo.path), 28)}"
            if photo.file is None:
                ax.text(0.5, 0.5, "not reachable\nfrom here", ha="center", va="center")
                ax.set_title(title, color=color, fontsize=10)
            else:
                _show(ax, photo.file, title, color, image_size)
    if not mistakes:
        axes[0, 0].text(0, 0.5, "no mistakes", fontsize=14)
    return fig


def plot_cluster(paths, number, shown=36, columns=6, image_size=DISPLAY_SIZE):
    """A montage of a cluster of `catsdogs discover`: up to `shown` of its photos, spread over the list.

    Args:
        paths: the cluster's photos.
        number: the cluster's number, for the title.
        shown: the most photos drawn.
        columns: photos per line.
        image_size: the side the photos are decoded near.
    """
    from catsdogs.data.splits import spread

    chosen = spread(list(paths), shown)
    fig, axes = _photo_grid(len(chosen), columns, f"Cluster {number}: {len(paths)} photos"
                            + (f" ({len(chosen)} shown)" if len(chosen) < len(paths) else ""))
    for ax, path in zip(axes.flat, chosen):
        _show(ax, path, _short(os.path.basename(path), 24), "black", image_size)
    return fig
