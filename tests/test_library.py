"""catsdogs as a Python library: the README's snippet, the notebook, and what importing it does."""

import os
import re
import subprocess
import sys

import pytest

import catsdogs
from conftest import ROOT, link_photos, photo, real_dataset

NOTEBOOK = ROOT / "examples" / "cats-vs-dogs.ipynb"


def readme_python_block():
    """The code block of the README's "Use it from Python" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use it from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_runs_as_written(tmp_path, monkeypatch):
    # The snippet's paths, made real: a slice of the shared data, a photo and a folder of photos.
    real_dataset(tmp_path / "data" / "cats-and-dogs", train_per_class=20, test_per_class=10)
    (tmp_path / "cat.jpg").symlink_to(photo("test", "cats", 4500))
    link_photos(tmp_path / "photos", "test", "dogs", [4500, 4501])
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(readme_python_block(), namespace)

    run, clf, ev = namespace["run"], namespace["clf"], namespace["ev"]
    assert isinstance(run, catsdogs.Run) and run.metrics["images"] == 20 and os.path.isdir(run.run_dir)
    assert isinstance(clf, catsdogs.Classifier) and clf.classes == ["cats", "dogs"]
    predictions = namespace["predictions"]
    assert [os.path.basename(p.path) for p in predictions] == ["cat.jpg", "dog.4500.jpg", "dog.4501.jpg", "notes.txt"]
    assert [p.label in (*clf.classes, "unknown") for p in predictions] == [True, True, True, False]
    assert "not an image" in predictions[-1].error and predictions[0].probabilities.keys() == {"cats", "dogs"}
    probabilities = namespace["probabilities"]
    assert probabilities.shape == (1, 2) and abs(probabilities[0, 0] - predictions[0].probabilities["cats"]) < 1e-4
    assert isinstance(ev, catsdogs.Evaluation) and ev.metrics["accuracy"] == pytest.approx(run.metrics["accuracy"])
    assert (tmp_path / "grid.png").stat().st_size > 10_000
    assert {"metrics.json", "predictions.csv", "report.html", "grid.png"} <= set(os.listdir(tmp_path / "evaluation"))


def test_a_run_in_memory_writes_nothing_and_evaluation_figures_are_returned(tmp_path, monkeypatch):
    import matplotlib.figure

    monkeypatch.chdir(tmp_path)
    data = real_dataset(tmp_path / "data", train_per_class=12, test_per_class=6)
    before = set(os.listdir(tmp_path))
    run = catsdogs.train(data, backbone="efficientnet_lite0", image_size=160, runs_dir=None)
    assert run.run_dir is None and set(os.listdir(tmp_path)) == before
    ev = run.evaluation
    for figure in (ev.plot_grid(), ev.plot_confusion(), ev.plot_top_losses(k=4), ev.plot_reliability()):
        assert isinstance(figure, matplotlib.figure.Figure)
    fig = matplotlib.figure.Figure()
    ax = fig.subplots()
    assert ev.plot_confusion(ax=ax) is fig and ax.get_title() == "Confusion matrix (test)"
    assert all(m["predicted"] != m["true"] for m in ev.mistakes())
    losses = [m["loss"] for m in ev.mistakes()]
    assert losses == sorted(losses, reverse=True)


def test_settings_are_checked_before_any_image_is_read(tmp_path, monkeypatch):
    from catsdogs.engine import train as training

    def no_scan(*args, **kwargs):
        raise AssertionError("the images were read before the settings were checked")

    monkeypatch.setattr(training, "scan_dataset", no_scan)
    root = real_dataset(tmp_path / "data", train_per_class=2, test_per_class=1)
    for settings, message in (({"target": "precision:dgos=0.99"}, "CLASS one of ['cats', 'dogs']"),
                              ({"backbone": "resnet51"}, "unknown backbone"),
                              ({"head": "deep"}, "unknown head"),
                              ({"extract_batch_size": 0}, "extract_batch_size 0"),
                              ({"val_fraction": 1.5}, "val_fraction"),
                              ({"exclude": str(tmp_path / "none.txt")}, "exclude file"),
                              ({"learning_rte": 0.1}, "unknown settings ['learning_rte']")):
        with pytest.raises(catsdogs.ConfigError, match=re.escape(message)):
            catsdogs.train(root, runs_dir=str(tmp_path / "runs"), **settings)
    assert not (tmp_path / "runs").exists()


def test_importing_catsdogs_is_light_and_leaves_matplotlib_as_it_was():
    script = """
import importlib, pkgutil, sys, matplotlib
matplotlib.use("svg")
import catsdogs
light = not any(name in sys.modules for name in ("tensorflow", "keras", "sklearn", "matplotlib.pyplot"))
for module in pkgutil.walk_packages(catsdogs.__path__, "catsdogs."):  # every module imports, none sets a backend
    importlib.import_module(module.name)
print(light, matplotlib.get_backend())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # TensorFlow itself imports pyplot, which is why the backend is checked, not pyplot's absence.
    assert result.stdout.split() == ["True", "svg"]


def test_the_cli_shows_a_traceback_for_bugs_and_a_message_for_user_errors(monkeypatch, capsys):
    from catsdogs import cli
    from catsdogs.engine import train as training

    def bug(*args, **kwargs):
        raise ZeroDivisionError("an internal bug")

    assert cli.main(["train", "anywhere", "--backbone", "nope"]) == 2
    assert "unknown backbone 'nope'" in capsys.readouterr().err
    monkeypatch.setattr(training, "prepare", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["train", "anywhere"])


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_on_a_slice_of_the_data(tmp_path, monkeypatch):
    import nbclient
    import nbformat

    data = real_dataset(tmp_path / "data", train_per_class=30, test_per_class=15)
    monkeypatch.setenv("CATSDOGS_EXAMPLE_DATA", str(data))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # committed clean
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    images = [sum("image/png" in output.get("data", {}) for output in cell.outputs)
              for cell in notebook.cells if cell.cell_type == "code"]
    grid_cell = next(i for i, cell in enumerate(c for c in notebook.cells if c.cell_type == "code")
                     if "plot_grid()" in cell.source)
    assert images[grid_cell] == 1  # the study's grid, shown inline once
    assert sum(images) >= 5  # the grid, top losses, Grad-CAM, confusion with reliability, open-set scores
