"""The run directory and the export folder have one owner each (`store.run_dir`, `store.export_dir`):
staged and atomic writes, readers whose errors name the file, paths from a hostile folder confined,
and the docs' table of a run's files listing exactly the files the code names."""

import itertools
import json
import os
import re

import pytest

from catsdogs.errors import DataError
from catsdogs.store import export_dir, run_dir
from catsdogs.store.run_dir import RunDirectory, RunWriter, staged_run
from catsdogs.utils.csvfiles import write_csv
from conftest import ROOT

# The page with the table of a run's files (the README links to it and keeps no copy: test_readme_promises.py).
DOC_WITH_THE_TABLE = ROOT / "docs" / "run-directory.md"
TABLE_HEADER = "| file | what |"


def test_a_staged_run_is_renamed_into_place_only_when_complete(tmp_path):
    runs = tmp_path / "runs"
    with staged_run(runs, "lite0") as writer:
        writer.write_json(run_dir.CONFIG, {"data_dir": "data"})
        assert writer.final == str(runs / "lite0") and not os.path.exists(writer.final)
        staging, = os.listdir(runs)  # hidden, and named so that `catsdogs runs` calls it unfinished
        assert staging.startswith(run_dir.STAGING_PREFIX) and writer.folder == str(runs / staging)
    assert os.listdir(runs) == ["lite0"] and RunDirectory(runs / "lite0").config() == {"data_dir": "data"}


def test_a_staged_run_that_fails_leaves_nothing_but_the_runs_folder(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match="stopped"), staged_run(runs, "lite0") as writer:
        writer.write_json(run_dir.CONFIG, {})
        raise ValueError("stopped half way")
    assert os.listdir(runs) == []


def test_a_run_never_overwrites_an_earlier_one_of_the_same_name(tmp_path):
    runs = tmp_path / "runs"
    (runs / "lite0").mkdir(parents=True)
    finals = []
    for _ in range(2):
        with staged_run(runs, "lite0") as writer:
            writer.write_json(run_dir.CONFIG, {})
        finals.append(os.path.basename(writer.final))
    assert finals == ["lite0-2", "lite0-3"] and sorted(os.listdir(runs)) == ["lite0", "lite0-2", "lite0-3"]


@pytest.mark.parametrize("write, read", [
    (lambda writer, value: writer.write_json(run_dir.METRICS, value), lambda run: run.metrics()),
    (lambda writer, value: writer.write_csv(run_dir.HISTORY, [value]), lambda run: run.rows(run_dir.HISTORY)[0]),
])
def test_files_are_replaced_whole_never_rewritten_in_place(tmp_path, write, read):
    """A reader that opened the old file reads the old file to its end: the new one is moved over it."""
    writer, run = RunWriter(tmp_path / "evaluation"), RunDirectory(tmp_path / "evaluation")
    write(writer, {"accuracy": "0.5"})
    name = os.listdir(writer.folder)[0]
    with open(writer.path(name)) as old:
        write(writer, {"accuracy": "0.99"})
        assert "0.5" in old.read()
    assert read(run) == {"accuracy": "0.99"} and os.listdir(writer.folder) == [name]  # no partial file left


def test_a_write_that_fails_leaves_the_file_as_it_was(tmp_path):
    writer = RunWriter(tmp_path)
    writer.write_json(run_dir.METRICS, {"accuracy": 0.5})
    with pytest.raises(RuntimeError), writer.atomic(run_dir.METRICS) as partial:
        with open(partial, "w") as f:
            f.write('{"accur')
        raise RuntimeError("killed mid-write")
    assert RunDirectory(tmp_path).metrics() == {"accuracy": 0.5} and os.listdir(tmp_path) == [run_dir.METRICS]


def test_copy_writes_the_file_under_its_name_in_the_run(tmp_path):
    source = tmp_path / "cache.onnx"
    source.write_bytes(b"onnx bytes")
    writer = RunWriter(tmp_path / "run")
    writer.copy(source, run_dir.BACKBONE)
    assert (tmp_path / "run" / run_dir.BACKBONE).read_bytes() == b"onnx bytes"


@pytest.mark.parametrize("content, problem", [
    (None, "not found"),
    ("{not json", "cannot be read as JSON"),
    ("[1, 2]", "expected a JSON object, found list"),
])
def test_reading_a_json_file_that_is_not_usable_names_the_file(tmp_path, content, problem):
    if content is not None:
        (tmp_path / run_dir.CONFIG).write_text(content)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / run_dir.CONFIG}: {problem}")):
        RunDirectory(tmp_path).config()


def test_readers_name_the_missing_file_or_the_data_folder_that_is_gone(tmp_path):
    run = RunDirectory(tmp_path)
    (tmp_path / run_dir.CONFIG).write_text(json.dumps({"data_dir": str(tmp_path / "gone")}))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: not a run directory: no {run_dir.METRICS}")):
        run.require(run_dir.CONFIG, run_dir.METRICS)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / run_dir.REVIEW}: not found")):
        run.rows(run_dir.REVIEW)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / run_dir.CONFIG}: the run's data folder "
                                                  f"{tmp_path / 'gone'} is not found from here")):
        run.data_dir()
    (tmp_path / run_dir.CONFIG).write_text("{}")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / run_dir.CONFIG}: no data_dir")):
        run.data_dir()


@pytest.fixture
def run_with_data(tmp_path):
    """(a run directory whose config.json names a data folder, that data folder)."""
    data, run = tmp_path / "data", tmp_path / "run"
    (data / "cats").mkdir(parents=True)
    run.mkdir()
    (run / run_dir.CONFIG).write_text(json.dumps({"data_dir": str(data)}))
    return RunDirectory(run), data


@pytest.mark.parametrize("outside", ["../../../etc/passwd", "/etc/passwd", "cats/../../secret.jpg"])
def test_photos_a_table_names_outside_the_data_folder_are_refused(run_with_data, outside):
    run, data = run_with_data
    rows = [{"path": "cats/cat.1.jpg", "split": "train", "label": "cats"},
            {"path": outside, "split": "test", "label": "cats"}, {"path": outside + "2", "split": "test", "label": "x"}]
    write_csv(rows, run.file(run_dir.SPLITS))
    with pytest.raises(DataError, match=re.escape(f"{run.file(run_dir.SPLITS)}: the photo {outside!r} lies outside "
                                                  f"the run's data folder {data} (and 1 more)")):
        run.photo_rows(run_dir.SPLITS, run_dir.SPLITS_COLUMNS)


def test_photos_inside_the_data_folder_are_read_as_written(run_with_data):
    run, _ = run_with_data
    rows = [{"path": "cats/cat.1.jpg", "split": "train", "label": "=1+1"},
            {"path": "cats/../cats/cat.2.jpg", "split": "test", "label": "cats"}]  # `..` that stays inside
    write_csv(rows, run.file(run_dir.SPLITS), run_dir.SPLITS_COLUMNS)
    assert run.photo_rows(run_dir.SPLITS, run_dir.SPLITS_COLUMNS) == rows
    with pytest.raises(DataError, match=re.escape(f"{run.file(run_dir.SPLITS)}: no column probability; it has "
                                                  f"path, split, label")):
        run.photo_rows(run_dir.SPLITS, ("path", "probability"))


# The export folder.

def _export(folder, **changes):
    """An export folder as `catsdogs export` writes one (the model file a stand-in), export.json changed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / export_dir.FILE_NAMES["onnx"]).write_bytes(b"onnx")
    metadata = {"format": "onnx", "file": export_dir.FILE_NAMES["onnx"], "model": {}, "source": None, **changes}
    export_dir.write_info(folder, metadata)
    return folder


def test_an_export_folder_is_written_and_read_back(tmp_path):
    model = tmp_path / "run" / run_dir.MODEL
    folder = export_dir.default_folder(model, "tflite", "int8")
    assert folder == str(tmp_path / "run" / run_dir.EXPORTS / "tflite-int8")
    assert export_dir.default_folder(model, "onnx") == str(tmp_path / "run" / run_dir.EXPORTS / "onnx")
    model.parent.mkdir()
    model.write_bytes(b"keras")
    _export(tmp_path / "run" / run_dir.EXPORTS / "onnx", source=str(model))
    export_dir.write_parity(tmp_path / "run" / run_dir.EXPORTS / "onnx", {"agreement": 1.0})
    info = export_dir.read_info(tmp_path / "run" / run_dir.EXPORTS / "onnx")
    assert (info.format, info.path) == ("onnx", export_dir.exported_file(info.folder, "onnx"))
    assert info.source == str(model)  # the run's own export: its source is believed
    assert run_dir.read_json(os.path.join(info.folder, export_dir.PARITY)) == {"agreement": 1.0}
    assert export_dir.export_folder_of(info.path) == info.folder == export_dir.export_folder_of(info.folder)
    assert export_dir.exports_of(tmp_path / "run", "onnx") == [info.folder]
    assert export_dir.exports_of(tmp_path / "run", "tflite") == []


@pytest.mark.parametrize("file", ["../../../../../../etc/passwd", "/etc/passwd", "link.onnx", None])
def test_an_export_json_naming_a_file_outside_its_folder_is_refused(tmp_path, file):
    elsewhere = tmp_path / "elsewhere.onnx"
    elsewhere.write_bytes(b"onnx")
    folder = _export(tmp_path / "export", file=file)
    (folder / "link.onnx").symlink_to(elsewhere)  # a link that leads out is refused too
    with pytest.raises(DataError, match=re.escape(f"{folder / export_dir.INFO}: its \"file\" ({file!r}) leads "
                                                  f"outside the export folder {folder}")):
        export_dir.read_info(folder)


def test_an_export_names_its_source_only_from_inside_that_models_folder(tmp_path):
    model = tmp_path / "run" / run_dir.MODEL
    model.parent.mkdir()
    model.write_bytes(b"keras")
    assert export_dir.read_info(_export(tmp_path / "moved", source=str(model))).source is None
    assert export_dir.read_info(_export(tmp_path / "run" / run_dir.EXPORTS / "gone", source=str(tmp_path / "run" / "x"))
                                ).source is None  # a source that is not there


def test_an_export_json_of_an_unknown_format_is_refused(tmp_path):
    folder = _export(tmp_path / "export", format="pickle")
    with pytest.raises(DataError, match=re.escape(f"{folder / export_dir.INFO}: format 'pickle' is none of")):
        export_dir.read_info(folder)


# The docs.

def table_of_run_files():
    """The names in the first column of the table of a run's files (`TABLE_HEADER`) in `DOC_WITH_THE_TABLE`,
    folders without their trailing `/`."""
    lines = DOC_WITH_THE_TABLE.read_text().splitlines()
    assert TABLE_HEADER in lines, f"{DOC_WITH_THE_TABLE} holds no table {TABLE_HEADER!r}"
    rows = itertools.takewhile(lambda line: line.startswith("|"), lines[lines.index(TABLE_HEADER) + 2:])
    return [name.rstrip("/") for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]


def test_the_docs_table_of_a_run_lists_every_file_the_code_names_once():
    listed = table_of_run_files()
    assert sorted(listed) == sorted(run_dir.FILES)
    assert len(set(run_dir.FILES)) == len(run_dir.FILES)  # no two files of one name
