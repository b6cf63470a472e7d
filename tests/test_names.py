"""Names are data (issue 23): class and file names that read as spreadsheet formulas, mathtext or HTML
train like any other, land in every file of the run as they are, and are read back as they were."""

import csv
import os
import pathlib

import numpy as np
import pytest

from catsdogs.apps.review.photos import read_run_photos
from catsdogs.cli import main
from catsdogs.config.train import TrainConfig
from catsdogs.data.corrections import append_decision, read_corrections
from catsdogs.engine.train import prepare
from catsdogs.evaluation import figures as report
from catsdogs.store.run_dir import CURVES, FIGURES, LEARNING_CURVE, NEAR_DUPLICATES, PRECISION_RECALL
from catsdogs.utils.csvfiles import read_csv
from conftest import photo

HTML_NAME = "<img src=x onerror=alert(1)>"
# class -> (the real photos' class, their numbers); a spreadsheet formula, mathtext (one that matplotlib
# cannot even parse), and HTML.
ODD_CLASSES = {"=1+1": ("cats", range(1, 21)), "$x$": ("dogs", range(1, 21)),
               r"$\frac{}$": ("cats", range(21, 41)), HTML_NAME: ("dogs", range(21, 41))}
ODD_FILES = {1: "@SUM(A1).jpg", 2: "-cmd.jpg", 3: "+1.jpg", 4: r"$\frac{}$.jpg"}  # in the class =1+1
FORMULA_STARTS = ("=", "+", "-", "@")


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """A real efficientnet_lite0 run (96 px) on 4 classes of 20 photos with the names above.

    Returns:
        (the `Run`, its run directory, the data folder).
    """
    import catsdogs

    data = tmp_path_factory.mktemp("odd") / "data"
    for name, (cls, numbers) in ODD_CLASSES.items():
        (data / name).mkdir(parents=True)
        for number in numbers:
            source = photo("train", cls, number)
            file_name = ODD_FILES.get(number, source.name) if name == "=1+1" else source.name
            (data / name / file_name).symlink_to(source)
    run = catsdogs.train(data, backbone="efficientnet_lite0", image_size=96,
                         runs_dir=str(tmp_path_factory.mktemp("runs")), name="odd")
    return run, pathlib.Path(run.run_dir), data


def drawn_as_written(figure, texts, strings):
    """Whether matplotlib draws each Text of `texts` exactly as its string of `strings`: the same size
    as the string drawn with mathtext off."""
    twins = [figure.text(0, 0, string, parse_math=False, fontproperties=text.get_fontproperties(),
                         linespacing=text.get_linespacing()) for text, string in zip(texts, strings)]
    figure.draw_without_rendering()
    return [np.allclose(text.get_window_extent().size, twin.get_window_extent().size)
            for text, twin in zip(texts, twins)]


def test_names_are_drawn_as_written_not_as_mathtext(tmp_path):
    names = ["$x$", r"$\frac{}$", "a\\b $1", HTML_NAME]
    fig = report.plot_confusion(np.eye(len(names), dtype=int), names)
    report.save_figure(fig, tmp_path / "confusion.png")  # raised for $\frac{}$ at c87dfbb
    ax = fig.axes[0]
    assert drawn_as_written(fig, ax.get_xticklabels() + ax.get_yticklabels(), names * 2) == [True] * 8
    row = {"path": str(tmp_path / "$y$.jpg"), "true": "$x$", "predicted": r"$\frac{}$", "probability": 0.9,
           "label_looks_wrong": False}
    fig = report.plot_top_losses([row])
    report.save_figure(fig, tmp_path / "errors.png")
    assert drawn_as_written(fig, [fig.axes[0].title], ["$\\frac{}$ 0.90, true $x$\n$y$.jpg"]) == [True]


def test_odd_names_train_to_a_complete_run_with_every_figure_and_the_report(odd_run):
    """At c87dfbb matplotlib raised on `$\\frac{}$` when the figures were drawn, and the run was deleted."""
    run, run_dir, _ = odd_run
    assert run.classifier.classes == sorted(ODD_CLASSES)
    # The linear head has no epochs to plot; the others belong to multi-label runs, --learning-curve and
    # near-duplicates across the folders' splits.
    every_figure = set(FIGURES) - {CURVES, PRECISION_RECALL, LEARNING_CURVE, NEAR_DUPLICATES}
    assert {name for name in every_figure if (run_dir / name).exists()} == every_figure
    html = (run_dir / "report.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img src=x" not in html
    assert "$x$" in html and r"$\frac{}$" in html and "=1+1" in html


def spreadsheet_formulas(path):
    """The cells of a CSV file that a spreadsheet would take for a formula: text (not a number)
    starting with = + - @."""
    with open(path, newline="", encoding="utf-8") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    formulas = []
    for cell in cells:
        try:
            float(cell)
        except ValueError:
            if cell.startswith(FORMULA_STARTS):
                formulas.append(cell)
    return formulas


def test_odd_names_are_never_formulas_in_csv_files_and_read_back_as_written(odd_run, tmp_path, monkeypatch):
    run, run_dir, data = odd_run
    splits = read_csv(run_dir / "splits.csv")
    odd_photo = next(row for row in splits if row["path"] == "=1+1/@SUM(A1).jpg")
    corrections = run_dir / "corrections.csv"
    append_decision(corrections, odd_photo["path"], odd_photo["split"], "=1+1", "relabel", run.classifier.classes,
                    "$x$")
    predicted = tmp_path / "predicted.csv"
    monkeypatch.chdir(data / "=1+1")  # so that the paths written are the file names
    assert main(["predict", str(run_dir), "@SUM(A1).jpg", "+1.jpg", "--csv", str(predicted), "--top-k", "2"]) == 0
    written = [run_dir / name for name in ("predictions.csv", "splits.csv", "review.csv")]
    for path in [*written, corrections, predicted]:
        assert spreadsheet_formulas(path) == [], path

    # Read back: the run's own photos and labels, with the relabel; the review's photos; the predictions.
    expected = {name: sorted((os.path.relpath(s.path, data), run.classifier.classes[s.label]) for s in samples)
                for name, samples in run.splits.items()}
    assert {name: sorted((row["path"], row["label"]) for row in splits if row["split"] == name)
            for name in expected} == expected
    again = prepare(TrainConfig(data_dir=str(data), labels=(str(run_dir / "splits.csv"), str(corrections)),
                                backbone="efficientnet_lite0", image_size=96))
    relabelled = {(os.path.relpath(s.path, data), again.class_names[s.label])
                  for samples in again.splits.values() for s in samples}
    assert ("=1+1/@SUM(A1).jpg", "$x$") in relabelled and ("=1+1/-cmd.jpg", "=1+1") in relabelled
    assert {path for path, _ in relabelled} == {path for paths in expected.values() for path, _ in paths}
    assert read_corrections(corrections)["=1+1/@SUM(A1).jpg"].label == "$x$"
    photos = read_run_photos(run_dir, mistakes=1000).photos
    assert photos and all((data / p.path).is_file() and p.given_label in ODD_CLASSES for p in photos)
    rows = read_csv(predicted)
    assert [row["path"] for row in rows] == ["@SUM(A1).jpg", "+1.jpg"]
    assert all(row["label"] in ODD_CLASSES and not row["error"] for row in rows)
    assert {row["true"] for row in read_csv(run_dir / "predictions.csv")} == set(ODD_CLASSES)
