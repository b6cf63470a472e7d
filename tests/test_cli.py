"""The `catsdogs` command as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from catsdogs.cli import main
from catsdogs.utils.csvfiles import read_csv
from conftest import photo, run_bounded


def test_console_script_lists_backbones():
    result = subprocess.run([sys.executable, "-m", "catsdogs.cli", "backbones"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "resnet50" in result.stdout and "efficientnet_lite0" in result.stdout


def test_train_on_a_missing_folder_fails_clearly(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nowhere"), "--runs-dir", str(tmp_path)]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_train_on_a_folder_without_classes_fails_clearly(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert main(["train", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "no class subfolders" in capsys.readouterr().err


def test_predict_table_csv_and_json(lite0_run, tmp_path, capsys):
    run_dir = lite0_run[0]
    cat, dog = photo("test", "cats", 4200), photo("test", "dogs", 4200)
    assert main(["predict", str(run_dir), str(cat), str(dog)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[-2:][0] == "cats" and table[2].split()[-2] == "dogs"

    assert main(["predict", str(run_dir), str(cat), str(tmp_path / "missing.jpg"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["label"] == "cats" and set(rows[0]["probabilities"]) == {"cats", "dogs"}
    assert "cannot read file" in rows[1]["error"]

    out = tmp_path / "out.csv"
    assert main(["predict", str(run_dir), str(dog), "--csv", str(out)]) == 0
    row = read_csv(out)[0]
    assert row["label"] == "dogs" and float(row["p_dogs"]) > 0.5


PREDICT = """
import sys
from catsdogs.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_predict_skips_fifos_and_devices_by_name_and_stays_small(lite0_run, tmp_path):
    """At c87dfbb a FIFO among the photos hung `catsdogs predict` for ever, and a link to /dev/zero
    grew it to 23 GB: here it runs in a subprocess with a timeout and 4 GB of data memory at most."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "cat.jpg").symlink_to(photo("test", "cats", 4001))
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    result = run_bounded(PREDICT, "predict", lite0_run[0], folder, "--json", timeout=300, memory_bytes=4 << 30)
    assert result.returncode == 0, result.stderr
    rows = {os.path.basename(row["path"]): row for row in json.loads(result.stdout)}
    assert rows["cat.jpg"]["label"] == "cats"
    assert rows["pipe.jpg"]["error"] == "not a regular file (a FIFO)"
    assert rows["zero.jpg"]["error"] == "not a regular file (a character device)"


def test_evaluate_writes_metrics_and_report(lite0_run, tmp_path, capsys):
    run_dir, metrics, data = lite0_run
    out = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--data", str(data), "--output", str(out), "--tta"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "macro avg" in printed and "test-time augmentation" in printed
    evaluated = json.loads((out / "metrics.json").read_text())
    assert evaluated["images"] == 200 and evaluated["tta"]["images"] == 200
    assert set(evaluated["tta"]) <= set(evaluated)
    assert abs(evaluated["accuracy"] - metrics["accuracy"]) <= 0.005  # same model, end to end
    assert (out / "report.html").exists() and (out / "grid.png").exists()


def command_parser(command):
    from catsdogs.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices[command]


@pytest.mark.parametrize("command, settings", [("train", "TrainConfig"), ("serve", "ServeSettings"),
                                               ("serve", "ReplicaSettings")])
def test_every_setting_is_an_option_with_the_default_and_help_its_field_declares(command, settings, capsys):
    import dataclasses

    from catsdogs.config import serve, train
    from catsdogs.config.fields import flag_of

    settings = getattr(train if settings == "TrainConfig" else serve, settings)
    options = {action.dest: action for action in command_parser(command)._actions}
    for field in dataclasses.fields(settings):
        if not field.metadata["option"]:
            continue
        action = options[field.name]
        assert action.option_strings[0] == flag_of(field)
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        given = tuple(action.default) if isinstance(action.default, list) else action.default  # a repeated option
        assert given == default and action.help.startswith(field.metadata["help"])
        assert action.choices == field.metadata["choices"]
    with pytest.raises(SystemExit):
        main([command, "-h"])
    shown = capsys.readouterr().out
    for field in dataclasses.fields(settings):
        assert not field.metadata["option"] or flag_of(field) in shown


def test_the_flags_users_know_are_kept():
    options = {action.dest: action for action in command_parser("serve")._actions}
    assert options["header_timeout_s"].option_strings == ["--header-timeout"]
    assert options["header_timeout_s"].metavar == "HEADER_TIMEOUT"
    options = {action.dest: action for action in command_parser("train")._actions}
    assert options["ray_address"].option_strings == ["--address"] and options["fine_tune"].option_strings == [
        "--fine-tune", "--no-fine-tune"]


def test_train_without_options_is_train_config_with_its_defaults(monkeypatch, tmp_path):
    from catsdogs import cli
    from catsdogs.config.train import TrainConfig

    monkeypatch.setenv("CATSDOGS_CACHE", str(tmp_path))
    args = cli.build_parser().parse_args(["train", "photos"])
    assert cli.settings_from(args, TrainConfig) == TrainConfig(data_dir="photos")
    args = cli.build_parser().parse_args(["train", "photos", "--labels", "a.csv", "--labels", "b.csv",
                                          "--hidden-units", "64,32", "--no-calibrate", "--workers", "2"])
    config = cli.settings_from(args, TrainConfig)
    assert (config.labels, config.hidden_units, config.calibrate, config.ray_workers) == (
        ("a.csv", "b.csv"), (64, 32), False, 2)


def test_a_models_format_is_format_and_the_old_runtime_spelling_says_so(capsys):
    for command in (["predict", "runs/x", "photo.jpg"], ["serve", "runs/x"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--runtime", "onnx"])
        assert exit_.value.code == 2
        assert "the model's format is --format" in capsys.readouterr().err
    args = command_parser("predict").parse_args(["runs/x", "photo.jpg", "--format", "onnx"])
    assert args.format == "onnx"


def test_serve_settings_from_the_command_line(monkeypatch):
    from catsdogs import cli
    from catsdogs.config.serve import ServeSettings
    from catsdogs.utils import extras

    given = []
    monkeypatch.setattr(extras, "require", lambda *args: None)
    monkeypatch.setattr("catsdogs.apps.serve.app.serve",
                        lambda model, host, port, settings, name=None, format=None: given.append(settings))
    monkeypatch.delenv("CATSDOGS_API_KEY", raising=False)
    assert cli.main(["serve", "runs/x"]) == 0
    monkeypatch.setenv("CATSDOGS_API_KEY", "from-env")
    assert cli.main(["serve", "runs/x", "--header-timeout", "3", "--max-images", "4"]) == 0
    assert cli.main(["serve", "runs/x", "--api-key", "given"]) == 0
    assert cli.main(["serve", "runs/x", "--allowed-host", "a.lan", "--allowed-host", "B.lan"]) == 0
    assert given[0] == ServeSettings()
    assert given[1] == ServeSettings(header_timeout_s=3.0, max_images=4, api_key="from-env")
    assert given[2].api_key == "given"
    assert given[3].allowed_hosts == ("a.lan", "b.lan")



@pytest.mark.parametrize("arguments, message", [
    (["--top-k", "0"], "--top-k 0: expected at least 1"),
    (["--engine", "ray", "--output", "out", "--top-k", "3"],
     "--top-k and --coverage are for predictions printed or written here"),
])
def test_predict_refuses_a_top_k_it_cannot_give(lite0_run, capsys, arguments, message):
    assert main(["predict", str(lite0_run[0]), str(photo("test", "cats", 4001)), *arguments]) == 2
    assert message in capsys.readouterr().err
