"""`catsdogs runs`: real runs listed and compared; MLflow logging read back from real local stores."""

import importlib.util
import json
import logging
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from catsdogs.cli import main
from conftest import real_dataset, unknown_photo

CARS = ("00029.jpg", "00055.jpg", "00084.jpg", "00193.jpg")
RUN_FILES = {"config.json", "metrics.json", "model.keras", "splits.csv", "predictions.csv", "report.html"}


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Two real runs in one runs folder: "linear" (the defaults, logged with mlflow=True to the local store),
    then "dense" (head dense, calibration off, photos of cars as unknown data), logged because
    MLFLOW_TRACKING_URI names another store.

    Returns:
        (the runs folder, the folder the test made everything in).
    """
    import catsdogs

    root = tmp_path_factory.mktemp("runs-compared")
    data = real_dataset(root / "data", train_per_class=20, test_per_class=10)
    unknown = root / "unknown"
    unknown.mkdir()
    for name in CARS:
        (unknown / name).symlink_to(unknown_photo("cars", name))
    runs = root / "runs"
    settings = dict(backbone="efficientnet_lite0", runtime="keras", runs_dir=str(runs))
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            patch.delenv(name, raising=False)
        catsdogs.train(data, name="linear", mlflow=True, **settings)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/elsewhere.db")
        patch.chdir(root)  # MLflow puts the artifacts of a store it is given in ./mlruns
        catsdogs.train(data, name="dense", head="dense", calibrate=False, unknown_data=str(unknown), **settings)
    return runs, root


def metrics_of(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def unknown_accepted(metrics):
    """The share of photos of no trained class that the run accepted."""
    return metrics["open_set"]["unknown"]["accepted"]


def cells(line):
    """The cells of a table line (cells are separated by two spaces or more)."""
    return re.split(r"\s{2,}", line.strip())


def test_runs_lists_each_run_with_its_settings_and_metrics(trained_runs, capsys, caplog):
    runs, _ = trained_runs
    linear, dense = metrics_of(runs / "linear"), metrics_of(runs / "dense")
    with caplog.at_level(logging.WARNING):
        assert main(["runs", str(runs)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert not caplog.records  # the MLflow store in runs/.mlflow is not taken for a run
    assert cells(header) == ["name", "backbone", "head", "size", "runtime", "options", "accuracy", "balanced",
                             "unknown accepted", "seconds", "date"]
    config = json.loads((runs / "linear" / "config.json").read_text())  # "auto" resolved as on this machine
    size, runtime = str(config["image_size"]), f"{config['runtime']} {config['precision']}"
    assert [cells(row)[:6] for row in rows] == [  # oldest first
        ["linear", "efficientnet_lite0", "linear", size, runtime, "-"],
        ["dense", "efficientnet_lite0", "dense", size, runtime, "calibrate=False"]]
    for row, metrics, unknown in ((rows[0], linear, "-"), (rows[1], dense, f"{unknown_accepted(dense):.1%}")):
        accuracy, balanced, accepted, seconds = cells(row)[6:10]
        assert accuracy == f"{metrics['accuracy']:.4f}"
        assert balanced == (f"{metrics['balanced_accuracy']:.4f}" if "balanced_accuracy" in metrics else "-")
        assert accepted == unknown
        assert float(seconds) == pytest.approx(sum(stage["seconds"] for stage in metrics["stages"].values()
                                                   if isinstance(stage, dict)), abs=0.05)

    assert main(["runs", str(runs), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [run["name"] for run in listed] == ["linear", "dense"]
    assert listed[1]["unknown_accepted"] == unknown_accepted(dense)
    assert listed[0]["unknown_accepted"] is None
    assert listed[0]["date"] <= listed[1]["date"]


def test_compare_names_every_setting_that_differs_and_the_metrics_side_by_side(trained_runs, capsys):
    runs, _ = trained_runs
    linear, dense = metrics_of(runs / "linear"), metrics_of(runs / "dense")
    # one run by name in DIR, the other by its path
    assert main(["runs", str(runs), "--compare", "linear", str(runs / "dense")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"A: {runs / 'linear'}  (") and lines[1].startswith(f"B: {runs / 'dense'}  (")
    assert ["head", "linear", "dense"] in [cells(line) for line in lines]
    assert ["calibrate", "True", "False"] in [cells(line) for line in lines]
    accuracy = next(cells(line) for line in lines if line.startswith("accuracy "))
    assert accuracy == ["accuracy", f"{linear['accuracy']:.4f}", f"{dense['accuracy']:.4f}",
                        f"{dense['accuracy'] - linear['accuracy']:+.4f}"]
    accepted = next(cells(line) for line in lines if line.startswith("open_set/unknown/accepted"))
    assert accepted == ["open_set/unknown/accepted", "-", f"{unknown_accepted(dense):.4f}", "-"]

    assert main(["runs", str(runs), "--json", "--compare", "linear", "dense"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    assert {row["setting"]: (row["a"], row["b"]) for row in comparison["settings"]} == {
        "head": ("linear", "dense"), "calibrate": (True, False), "mlflow": (True, False),
        "unknown_data": ("", str(trained_runs[1] / "unknown"))}
    metrics = {row["metric"]: row for row in comparison["metrics"]}
    for key in ("log_loss", "ece", "roc_auc"):
        assert metrics[key]["difference"] == pytest.approx(dense[key] - linear[key])
    for name in ("cats", "dogs"):
        assert metrics[f"per_class/{name}/recall"]["b"] == dense["per_class"][name]["recall"]


def test_compare_tests_the_difference_on_the_same_photos_and_lists_the_changed_ones(trained_runs, capsys):
    from scipy.stats import binomtest

    from catsdogs.utils.csvfiles import read_csv

    runs, _ = trained_runs
    linear, dense = ({row["path"]: row for row in read_csv(runs / name / "predictions.csv")}
                     for name in ("linear", "dense"))
    only_linear = sum(linear[p]["predicted"] == linear[p]["true"] != dense[p]["predicted"] for p in linear)
    only_dense = sum(dense[p]["predicted"] == dense[p]["true"] != linear[p]["predicted"] for p in linear)
    changed = sorted(p for p in linear if linear[p]["predicted"] != dense[p]["predicted"])

    assert main(["runs", str(runs), "--json", "--compare", "linear", "dense"]) == 0
    test = json.loads(capsys.readouterr().out)["test"]
    assert test["comparable"] is True and test["photos"] == len(linear) == 20
    assert (test["only_in_a"], test["only_in_b"], test["labels_differ"]) == (0, 0, 0)
    assert (test["mcnemar"]["only_a_right"], test["mcnemar"]["only_b_right"]) == (only_linear, only_dense)
    expected_p = binomtest(only_dense, only_linear + only_dense).pvalue if only_linear + only_dense else 1
    assert test["mcnemar"]["p_value"] == pytest.approx(expected_p)
    assert sorted(row["path"] for row in test["changed"]) == changed
    losses = [[float(rows[p]["loss"]) for p in linear] for rows in (linear, dense)]
    assert test["log_loss"]["difference"] == pytest.approx(np.mean(losses[1]) - np.mean(losses[0]))
    assert test["log_loss"]["ci"][0] <= test["log_loss"]["difference"] <= test["log_loss"]["ci"][1]
    assert test["log_loss"]["difference"] == pytest.approx(metrics_of(runs / "dense")["log_loss"]
                                                           - metrics_of(runs / "linear")["log_loss"], abs=1e-6)

    assert main(["runs", str(runs), "--compare", "linear", "dense"]) == 0
    text = capsys.readouterr().out
    assert "Same 20 test photos in both runs." in text
    assert f"p = {test['log_loss']['p_value']:.3g}" in text
    if only_linear + only_dense:
        assert f"McNemar's exact test: p = {expected_p:.3g}" in text
        assert f"Photos whose answer changed ({len(changed)}):" in text and all(path in text for path in changed)
    else:
        assert "A and B are right and wrong on the same photos, all 20 of them" in text


def test_runs_tested_on_different_photos_are_not_comparable(trained_runs, tmp_path, capsys):
    from catsdogs.utils.csvfiles import read_csv, write_csv

    runs, _ = trained_runs
    other = tmp_path / "fewer"  # the linear run as if tested on 17 of its photos, one of them labelled otherwise
    other.mkdir()
    for name in ("config.json", "metrics.json"):
        shutil.copy(runs / "linear" / name, other)
    rows = read_csv(runs / "linear" / "predictions.csv")[3:]
    rows[0]["true"] = "dogs" if rows[0]["true"] == "cats" else "cats"
    write_csv(rows, other / "predictions.csv")
    assert main(["runs", str(runs), "--compare", "dense", str(other)]) == 0  # a comparison, not an error
    text = capsys.readouterr().out
    assert ("not comparable: their test photos differ (3 only in A, 0 only in B, 1 labelled differently, 16 alike)"
            in text)
    assert "McNemar" not in text and "accuracy " in text  # the metrics still side by side
    assert main(["runs", str(runs), "--json", "--compare", "dense", str(other)]) == 0
    test = json.loads(capsys.readouterr().out)["test"]
    assert (test["comparable"], test["only_in_a"], test["only_in_b"], test["labels_differ"]) == (False, 3, 0, 1)
    assert "mcnemar" not in test and "changed" not in test


def test_the_verdict_says_plainly_whether_a_difference_is_beyond_chance():
    from catsdogs.engine.compare import verdict

    def test(only_a, only_b, p, loss=None):
        return {"photos": 2000, "mcnemar": {"only_a_right": only_a, "only_b_right": only_b, "p_value": p},
                "log_loss": loss}

    assert "distinguishable from chance at the 5% level: B is more accurate." in verdict(test(2, 14, 0.0042))
    assert "not distinguishable from chance at the 5% level" in verdict(test(5, 8, 0.58))
    better = {"difference": -0.012, "ci": [-0.02, -0.004], "p_value": 0.003}
    assert "B's probabilities are better, beyond chance." in verdict(test(5, 8, 0.58, better))


def test_compare_names_a_run_that_is_not_there(trained_runs, capsys):
    runs, _ = trained_runs
    assert main(["runs", str(runs), "--compare", "linear", "nosuchrun"]) == 2
    assert "run 'nosuchrun': no run directory" in capsys.readouterr().err


def test_unfinished_and_incomplete_folders_are_skipped_and_named(trained_runs, tmp_path):
    runs, _ = trained_runs
    folder = tmp_path / "runs"
    old = folder / "old"  # written before balanced accuracy and unknown data: still listed
    old.mkdir(parents=True)
    shutil.copy(runs / "linear" / "config.json", old)
    metrics = metrics_of(runs / "linear")
    metrics.pop("balanced_accuracy", None)
    (old / "metrics.json").write_text(json.dumps(metrics))
    for name, files in ((".partial-20261202-101500-4242", {"config.json": "{}"}),
                        ("no-metrics", {"config.json": "{}"}),
                        ("bad-json", {"config.json": "{}", "metrics.json": '{"accuracy": 0.9'}),
                        (".mlflow", {"mlflow.db": ""})):
        (folder / name).mkdir()
        for file, text in files.items():
            (folder / name / file).write_text(text)

    listing = subprocess.run([sys.executable, "-m", "catsdogs.cli", "runs", str(folder)], capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert [cells(row)[0] for row in rows] == ["old"]
    assert cells(rows[0])[6:9] == [f"{metrics['accuracy']:.4f}", "-", "-"]
    partial, bad_json, no_metrics = sorted(listing.stderr.splitlines())  # .mlflow is not a run: not named
    assert partial == (f"skipped {folder / '.partial-20261202-101500-4242'}: unfinished (a training is still "
                       f"writing it, or stopped before the end)")
    assert bad_json.startswith(f"skipped {folder / 'bad-json' / 'metrics.json'}: cannot be read as JSON (")
    assert no_metrics == f"skipped {folder / 'no-metrics'}: not a run directory: no metrics.json"


def test_importing_runs_compare_and_tracking_loads_neither_tensorflow_nor_mlflow():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, catsdogs.store.runs, catsdogs.engine.compare, catsdogs.engine.tracking; "
                               "print(sorted({'tensorflow', 'keras', 'mlflow'} & set(sys.modules)))"],
        capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"


def logged_runs(uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("catsdogs")
    return client, client.search_runs([experiment.experiment_id])


def test_mlflow_logs_to_a_local_store_in_the_runs_folder(trained_runs):
    runs, _ = trained_runs
    metrics = metrics_of(runs / "linear")
    client, logged = logged_runs(f"sqlite:///{runs}/.mlflow/mlflow.db")
    assert [run.info.run_name for run in logged] == ["linear"]  # "dense" went to MLFLOW_TRACKING_URI
    run = logged[0]
    assert run.info.status == "FINISHED"
    config = json.loads((runs / "linear" / "config.json").read_text())
    assert run.data.params == {key: value if isinstance(value, str) else json.dumps(value)
                               for key, value in config.items()}
    assert run.data.metrics["accuracy"] == metrics["accuracy"]
    assert run.data.metrics["log_loss"] == metrics["log_loss"]
    assert run.data.metrics["per_class/dogs/recall"] == metrics["per_class"]["dogs"]["recall"]
    assert run.data.metrics["open_set/test_kept"] == metrics["open_set"]["test_kept"]
    assert run.data.tags["catsdogs.run_dir"] == str(runs / "linear")
    assert RUN_FILES <= {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert run.info.artifact_uri.startswith((runs / ".mlflow" / "artifacts").as_uri())
    assert (pathlib.Path(run.info.artifact_uri.removeprefix("file://")) / "model.keras").is_file()


def test_mlflow_tracking_uri_turns_logging_on_and_chooses_the_store(trained_runs):
    runs, root = trained_runs
    metrics = metrics_of(runs / "dense")
    client, logged = logged_runs(f"sqlite:///{root}/elsewhere.db")
    assert [run.info.run_name for run in logged] == ["dense"]
    run = logged[0]
    assert run.data.params["head"] == "dense" and run.data.params["mlflow"] == "false"
    assert run.data.metrics["open_set/unknown/accepted"] == unknown_accepted(metrics)
    assert run.data.metrics["open_set/unknown/auroc"] == metrics["open_set"]["unknown"]["auroc"]
    assert RUN_FILES <= {artifact.path for artifact in client.list_artifacts(run.info.run_id)}


def test_a_failure_of_mlflow_only_warns(trained_runs, monkeypatch, caplog):
    from catsdogs.config.train import TrainConfig
    from catsdogs.engine.tracking import log_run

    runs, _ = trained_runs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchstore://here")
    config = TrainConfig.load(runs / "linear" / "config.json")
    with caplog.at_level(logging.WARNING, "catsdogs.engine.tracking"):
        assert log_run(str(runs / "linear"), config, metrics_of(runs / "linear")) is None
    [warning] = [record.getMessage() for record in caplog.records if record.name == "catsdogs.engine.tracking"]
    assert warning.startswith(f"run {runs / 'linear'} not logged to MLflow: ")
    assert "nosuchstore" in warning and "(the run directory is complete)" in warning


@pytest.fixture
def without_mlflow(monkeypatch):
    """mlflow looks uninstalled to `catsdogs.utils.extras.require`."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args, **kwargs: None if name == "mlflow" else find_spec(name, *args, **kwargs))


def test_mlflow_asked_for_but_not_installed_fails_before_training(without_mlflow, tmp_path, capsys):
    data = real_dataset(tmp_path / "data", train_per_class=5, test_per_class=2)
    runs = tmp_path / "runs"
    assert main(["train", str(data), "--backbone", "efficientnet_lite0", "--runs-dir", str(runs), "--mlflow"]) == 2
    error = capsys.readouterr().err
    assert "--mlflow needs mlflow, which is not installed" in error
    assert 'pip install "catsdogs[mlflow]"' in error
    assert not runs.exists()


def test_tracking_uri_without_mlflow_installed_warns_and_logs_nothing(trained_runs, without_mlflow, monkeypatch,
                                                                      caplog):
    from catsdogs.config.train import TrainConfig
    from catsdogs.engine.tracking import log_run

    runs, root = trained_runs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/never.db")
    config = TrainConfig.load(runs / "dense" / "config.json")
    with caplog.at_level(logging.WARNING, "catsdogs.engine.tracking"):
        assert log_run(str(runs / "dense"), config, metrics_of(runs / "dense")) is None
    assert 'pip install "catsdogs[mlflow]"' in caplog.text
    assert not (root / "never.db").exists()
