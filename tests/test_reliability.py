"""Issue 12, the command line, training and the feature cache: each finding proved by a test.

Every test here failed (or would have) at commit f1e2805, before the fixes; each docstring says how.
Run them with `pytest tests/test_reliability.py`; the bad-input corpus comes from `tests/corpus.py`.
"""

import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from catsdogs.cli import main
from catsdogs.errors import CatsdogsError
from catsdogs.store import feature_cache as features
from catsdogs.utils.csvfiles import read_csv
from conftest import ROOT, link_photos, photo
from corpus import build_corpus

SMALL = ["--backbone", "efficientnet_lite0", "--image-size", "96", "--open-set", "none", "--no-calibrate"]


def _one_line_error(captured):
    """The command failed with one line on stderr, never a traceback."""
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("catsdogs ")]
    assert len(errors) == 1, captured.err
    return errors[0]


def _non_utf8(folder, source):
    """A copy of a real photo under a name that is not valid UTF-8; returns the str path (surrogates)."""
    raw = os.path.join(os.fsencode(folder), b"bad\xff.jpg")
    with open(raw, "wb") as f:
        f.write(pathlib.Path(source).read_bytes())
    return os.fsdecode(raw)


def _small_dataset(root, per_class=12, first=1):
    """A plain folder of class folders: `per_class` real photos of each class (symlinks, nothing copied)."""
    for cls in ("cats", "dogs"):
        link_photos(root / cls, "train", cls, range(first, first + per_class))
    return root


# 1. The command line (`catsdogs predict` / `evaluate` / `train`).

def test_predict_csv_with_a_readme_first_is_complete(lite0_run, tmp_path, capsys):
    """At f1e2805 the CSV's columns came from the first row, an error row without p_cats/p_dogs:
    `dict contains fields not in fieldnames`, rc 2 and a truncated CSV."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "README.md").write_text("# not a photo\n")
    shutil.copy(photo("test", "cats", 4100), folder / "z-cat.jpg")
    out = tmp_path / "out.csv"
    assert main(["predict", str(lite0_run[0]), str(folder), "--csv", str(out)]) == 0
    rows = read_csv(out)
    assert [pathlib.Path(r["path"]).name for r in rows] == ["README.md", "z-cat.jpg"]
    assert "not an image" in rows[0]["error"] and rows[0]["p_cats"] == ""
    assert rows[1]["label"] == "cats" and float(rows[1]["p_cats"]) > 0.5 and rows[1]["error"] == ""


def test_predict_a_file_name_that_is_not_utf8(lite0_run, tmp_path, capsys):
    """At f1e2805 paths went to tf.data as strings: `Error converting unicode string` for every file."""
    bad = _non_utf8(tmp_path, photo("test", "dogs", 4100))
    cat = str(photo("test", "cats", 4100))
    assert main(["predict", str(lite0_run[0]), bad, cat]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and "bad\\udcff.jpg" in table[1] and table[1].split()[-2] == "dogs"

    assert main(["predict", str(lite0_run[0]), bad, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["label"] == "dogs" and "error" not in rows[0]

    out = tmp_path / "out.csv"
    assert main(["predict", str(lite0_run[0]), bad, "--csv", str(out)]) == 0
    row = read_csv(out)[0]
    assert os.fsencode(row["path"]).endswith(b"bad\xff.jpg") and row["label"] == "dogs"


@pytest.mark.parametrize("command", [
    ["predict", "RUN", "PHOTO", "--batch-size", "0"],
    ["evaluate", "RUN", "--data", "DATA", "--batch-size", "0"],
    ["train", "DATA", "--extract-batch-size", "0"],
    ["train", "DATA", "--batch-size", "0"],
])
def test_batch_size_zero_is_a_one_line_error(lite0_run, tmp_path, capsys, command):
    """At f1e2805 `--batch-size 0` reached tf.data: a TensorFlow traceback."""
    run_dir, _, data = lite0_run
    values = {"RUN": str(run_dir), "PHOTO": str(photo("test", "cats", 4100)), "DATA": str(data)}
    argv = [values.get(a, a) for a in command] + (["--runs-dir", str(tmp_path / "runs")] if command[0] == "train" else [])
    assert main(argv) == 2
    assert "at least 1" in _one_line_error(capsys.readouterr())
    assert not (tmp_path / "runs").exists()


def test_predict_fails_when_every_input_failed(lite0_run, tmp_path, capsys):
    """At f1e2805 predict exited 0 though no file could be read."""
    (tmp_path / "notes.jpg").write_text("not a photo")
    assert main(["predict", str(lite0_run[0]), str(tmp_path / "notes.jpg"), str(tmp_path / "missing.jpg")]) == 1
    out = capsys.readouterr().out
    assert "not an image" in out and "cannot read file" in out


def test_a_newline_in_a_file_name_keeps_one_line_per_file(lite0_run, tmp_path, capsys):
    """At f1e2805 the table printed names as they are: a newline split a file's row in two."""
    odd = tmp_path / "two\nlines.jpg"
    shutil.copy(photo("test", "cats", 4100), odd)
    assert main(["predict", str(lite0_run[0]), str(odd), str(photo("test", "dogs", 4100))]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and "two\\nlines.jpg" in table[1] and table[1].split()[-2] == "cats"


# 2. Training on bad datasets: a clear error naming the problem, and no run directory.

def _train_fails(argv, capsys, tmp_path):
    assert main(["train", *argv, *SMALL, "--runs-dir", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    line = _one_line_error(capsys.readouterr())
    assert "fits failed" not in line
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")
    return line


def test_train_refuses_an_empty_class_folder(tmp_path, capsys):
    """At f1e2805: a 26-line scikit-learn dump (`All the 30 fits failed`) and a half-written run."""
    data = _small_dataset(tmp_path / "data")
    shutil.rmtree(data / "dogs")
    (data / "dogs").mkdir()
    (data / "dogs" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    line = _train_fails([str(data)], capsys, tmp_path)
    assert "'dogs'" in line and "0 usable images" in line


def test_train_refuses_a_single_class_dataset(tmp_path, capsys):
    data = _small_dataset(tmp_path / "data")
    shutil.rmtree(data / "dogs")
    line = _train_fails([str(data)], capsys, tmp_path)
    assert "only the class ['cats']" in line and "at least two" in line


def test_train_refuses_a_class_with_one_photo(tmp_path, capsys):
    data = _small_dataset(tmp_path / "data")
    for extra in sorted((data / "dogs").iterdir())[1:]:
        extra.unlink()
    line = _train_fails([str(data)], capsys, tmp_path)
    assert "'dogs' has 1 usable images" in line and "at least 3 needed" in line


def test_train_refuses_a_class_whose_files_are_all_truncated(tmp_path, capsys):
    """Truncated JPEGs pass the header scan; the scan's thumbnail for near-duplicates fails to decode them,
    and without it the class is found empty after extraction. Either way the class is named."""
    data = _small_dataset(tmp_path / "data")
    for link in (data / "dogs").iterdir():
        jpeg = link.read_bytes()
        link.unlink()
        link.write_bytes(jpeg[:len(jpeg) // 3])
    line = _train_fails([str(data)], capsys, tmp_path)
    assert "'dogs' has 0 usable images" in line and "image file is truncated" in line
    line = _train_fails([str(data), "--no-near-duplicates"], capsys, tmp_path)
    assert "no usable" in line and "dogs" in line


def test_train_skips_hidden_files_macosx_readme_and_broken_links(tmp_path, capsys, caplog):
    """Junk among the photos is skipped or reported by name; the rest trains, and the run is complete.

    At f1e2805 a non-UTF-8 name crashed `train` (splits.csv could not be encoded).
    """
    data = _small_dataset(tmp_path / "data")
    (data / "__MACOSX" / "cats").mkdir(parents=True)
    (data / "__MACOSX" / "cats" / "._cat.1.jpg").write_bytes(b"\0\5\26\7 resource fork")
    (data / "cats" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "cats" / "._cat.1.jpg").write_bytes(b"\0\5\26\7")
    (data / "cats" / ".hidden").mkdir()
    (data / "cats" / ".hidden" / "x.jpg").write_bytes(b"x")
    (data / "dogs" / "README.md").write_text("photos from the shared data\n")
    (data / "dogs" / "loop.jpg").symlink_to(data / "dogs" / "loop.jpg")
    (data / "dogs" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    bad = _non_utf8(data / "cats", photo("train", "cats", 200))
    caplog.set_level(logging.INFO)
    runs = tmp_path / "runs"
    assert main(["train", str(data), *SMALL, "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache"),
                 "--name", "junk"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    integrity = json.loads((runs / "junk" / "integrity.json").read_text())
    skipped = {os.path.basename(s["path"]): s["problem"] for s in integrity["skipped"]}
    assert set(skipped) == {"README.md", "loop.jpg", "dangling.jpg"}
    assert "not an image" in skipped["README.md"] and "cannot read file" in skipped["dangling.jpg"]
    for name in skipped:
        assert f"skipped {data / 'dogs' / name}" in caplog.text
    listed = [row["path"] for row in read_csv(runs / "junk" / "splits.csv")]
    assert os.path.relpath(bad, data) in listed and not any("MACOSX" in p or "/." in p for p in listed)
    assert sorted(os.listdir(runs)) == ["junk"]


# 3. The bad-input corpus through train, predict (table, CSV, JSON) and evaluate.

@pytest.fixture(scope="module")
def corpus_dataset(tmp_path_factory):
    """12 real photos per class, the corpus in the cats folder; returns (folder, corpus entries)."""
    root = tmp_path_factory.mktemp("corpus-data")
    data = _small_dataset(root / "data", first=300)
    entries = build_corpus(data / "cats", photo=photo("train", "cats", 299))
    return data, entries


def _check_corpus_rows(rows, entries):
    """Each corpus file has one row: an error with a reason where expected, a label otherwise."""
    by_path = {os.fsencode(r["path"]): r for r in rows}
    for kind, path, expected in entries:
        row = by_path[os.fsencode(path)]
        if expected == "error":  # JSON leaves unset fields out, the CSV has them empty
            assert row.get("error") and not row.get("label"), kind
        else:
            assert not row.get("error") and row["label"] in ("cats", "dogs", "unknown"), (kind, row.get("error"))


def test_corpus_through_predict(lite0_run, corpus_dataset, tmp_path, capsys):
    data, entries = corpus_dataset
    run_dir = str(lite0_run[0])
    assert main(["predict", run_dir, str(data / "cats")]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    table = captured.out.splitlines()[1:]
    assert len(table) == len(list(pathlib.Path(data / "cats").iterdir()))
    for kind, path, expected in entries:
        line = next(line for line in table if line.startswith(str(path) if str(path).isprintable()
                                                              else ascii(str(path))[1:-1]))
        assert ("ERROR:" in line) == (expected == "error"), (kind, line)

    assert main(["predict", run_dir, str(data / "cats"), "--json"]) == 0
    _check_corpus_rows(json.loads(capsys.readouterr().out), entries)

    out = tmp_path / "corpus.csv"
    assert main(["predict", run_dir, str(data / "cats"), "--csv", str(out)]) == 0
    _check_corpus_rows(read_csv(out), entries)


def test_corpus_through_evaluate(lite0_run, corpus_dataset, tmp_path, capsys, caplog):
    data, entries = corpus_dataset
    caplog.set_level(logging.INFO)
    assert main(["evaluate", str(lite0_run[0]), "--data", str(data), "--output", str(tmp_path / "eval")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    skipped = {os.fsencode(s["path"]) for s in json.loads((tmp_path / "eval" / "integrity.json").read_text())["skipped"]}
    expected = {os.fsencode(p) for _, p, e in entries if e == "error"}
    assert skipped == expected
    ok = sum(e == "ok" for _, _, e in entries)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["images"] == 24 + ok
    assert caplog.text.count("skipped ") >= len(expected)


def test_corpus_through_train(corpus_dataset, tmp_path, capsys, caplog):
    data, entries = corpus_dataset
    caplog.set_level(logging.INFO)
    runs = tmp_path / "runs"
    assert main(["train", str(data), *SMALL, "--runs-dir", str(runs), "--name", "corpus",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    skipped = {os.fsencode(s["path"]): s["problem"]
               for s in json.loads((runs / "corpus" / "integrity.json").read_text())["skipped"]}
    assert set(skipped) == {os.fsencode(p) for _, p, e in entries if e == "error"}
    assert all(skipped.values())
    used = {os.fsencode(os.path.join(data, r["path"])) for r in read_csv(runs / "corpus" / "splits.csv")}
    assert {os.fsencode(p) for _, p, e in entries if e == "ok"} <= used


# 4. Crash safety of the feature cache and the run directory.

def test_cache_skips_unreadable_chunks_and_removes_stale_partials(tmp_path, caplog):
    """At f1e2805 the loader's glob matched a leftover `chunk-*.partial.npz`: `zipfile.BadZipFile`
    on every later run."""
    cache = features.FeatureCache(tmp_path, "key")
    cache.add(["a", "b"], np.ones((2, 4)))
    folder = pathlib.Path(cache.folder)
    good = pathlib.Path(features.__file__)  # any bytes that are not a zip archive
    (folder / "chunk-old.partial.npz").write_bytes(good.read_bytes()[:100])
    (folder / "chunk-corrupt.npz").write_bytes(b"PK\x03\x04 truncated")
    stale, fresh = folder / ".partial-0123-chunk-x.npz", folder / ".partial-4567-chunk-y.npz"
    stale.write_bytes(b"half"), fresh.write_bytes(b"half")
    old = time.time() - 2 * features.STALE_PARTIAL_SECONDS
    os.utime(stale, (old, old))
    caplog.set_level(logging.INFO)
    again = features.FeatureCache(tmp_path, "key")
    assert set(again.features) == {"a", "b"}
    assert "skipping unreadable chunk" in caplog.text and "chunk-corrupt.npz" in caplog.text
    assert not stale.exists() and fresh.exists() and not (folder / "chunk-old.partial.npz").exists()


def test_a_full_disk_is_a_clear_error_and_leaves_no_chunk(tmp_path, monkeypatch):
    cache = features.FeatureCache(tmp_path, "key")

    def full_disk(path, **arrays):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(CatsdogsError, match="no space left") as raised:
        cache.add(["a"], np.ones((1, 4)))
    assert cache.folder in str(raised.value)
    assert os.listdir(cache.folder) == [] and "a" not in cache


# `catsdogs train` in a child process that kills itself with SIGKILL at one point of its work: as
# `kill -9` from outside, it gets no chance to clean up (no finally, no atexit), but exactly there.
KILL_POINTS = r'''
import os, signal, sys
import numpy as np
from catsdogs.cli import main
from catsdogs.evaluation import evaluate as evaluation
from catsdogs.inference import features
from catsdogs.models import model as model_lib
from catsdogs.store import feature_cache
from catsdogs.utils.csvfiles import read_csv

point = os.environ.get("CATSDOGS_TEST_KILL_AT", "")
if os.environ.get("CATSDOGS_TEST_CHUNK_SIZE"):  # chunks of exactly this many features, however slow
    features.CHUNK_SIZE, features.CHUNK_SECONDS = int(os.environ["CATSDOGS_TEST_CHUNK_SIZE"]), float("inf")

def die():
    os.kill(os.getpid(), signal.SIGKILL)

passes = [0]  # extraction passes begun: 1, the training photos; 2, the validation and test photos
cached_features = features.cached_features
def counted_pass(*args, **kwargs):
    passes[0] += 1
    return cached_features(*args, **kwargs)
features.cached_features = counted_pass

add = feature_cache.FeatureCache.add
def add_then_die(self, ids, values):
    add(self, ids, values)
    if len(ids) and point == f"after a chunk of pass {passes[0]}":
        die()
feature_cache.FeatureCache.add = add_then_die

savez, write_chunk = np.savez, feature_cache.write_chunk
def half_then_die(path, **arrays):
    savez(path, **arrays)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    die()
def chunk_written_halfway(folder, ids, values):
    if len(ids) and point == "halfway through writing a chunk":
        np.savez = half_then_die
    return write_chunk(folder, ids, values)
feature_cache.write_chunk = chunk_written_halfway

save_model = model_lib.save
def save_model_then_die(model, path):
    save_model(model, path)
    if point == "after the model is written":
        die()
model_lib.save = save_model_then_die

save_evaluation = evaluation.Evaluation.save
def save_evaluation_then_die(self, folder):
    result = save_evaluation(self, folder)
    if point == "after everything is written, before the rename":
        die()
    return result
evaluation.Evaluation.save = save_evaluation_then_die

sys.exit(main(sys.argv[1:]))
'''


def _train_process(data, cache, runs, name, chunk_size=None, kill_at=None, log=None):
    """`catsdogs train` in a child process.

    Args:
        chunk_size: makes its feature cache write chunks of this many features.
        kill_at: one of the points of KILL_POINTS where it kills itself with SIGKILL.
        log: a file for its output (else pipes, for `communicate`).
    """
    argv = [sys.executable, "-c", KILL_POINTS, "train", str(data), *SMALL, "--extract-batch-size", "4",
            "--runs-dir", str(runs), "--cache-dir", str(cache), "--name", name]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CATSDOGS_TEST_KILL_AT": kill_at or ""}
    if chunk_size:
        env["CATSDOGS_TEST_CHUNK_SIZE"] = str(chunk_size)
    output = open(log, "w") if log else subprocess.PIPE
    try:
        return subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT if log else subprocess.PIPE,
                                text=True)
    finally:
        if log:
            output.close()


def _chunks(cache):
    return [p for p in pathlib.Path(cache).glob("features/*/chunk-*.npz")]


def _cached(cache):
    """chunk file -> {feature id: features} of every chunk in a cache."""
    found = {}
    for chunk in _chunks(cache):
        with np.load(chunk) as arrays:
            found[chunk] = dict(zip(arrays["hashes"].tolist(), arrays["features"]))
    return found


def _ids(cached):
    return {i for chunk in cached.values() for i in chunk}


def _finished_looking(runs):
    """What a killed run must never leave: entries of the runs folder that are not hidden."""
    return sorted(p for p in os.listdir(runs) if not p.startswith(".")) if os.path.isdir(runs) else []


def _killed(data, cache, runs, point, log, chunk_size=None):
    """Runs training until it kills itself at `point`; checks it died there and left no run directory."""
    process = _train_process(data, cache, runs, "killed", chunk_size, kill_at=point, log=log)
    process.wait(timeout=600)
    assert process.returncode == -signal.SIGKILL, f"not killed {point}:\n{pathlib.Path(log).read_text()[-3000:]}"
    assert _finished_looking(runs) == [], point


def _run(data, cache, runs, name):
    process = _train_process(data, cache, runs, name)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return runs / name


def _numbers_or_text(row):
    values = {}
    for key, value in row.items():
        try:
            values[key] = float(value)
        except ValueError:
            values[key] = value
    return values


def _assert_same_outputs(run_dir, reference):
    """A run's outputs equal an uninterrupted run's: metrics, predictions.csv, splits.csv, the model."""
    from catsdogs import load

    metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert (metrics["accuracy"], metrics["images"]) == (expected["accuracy"], expected["images"])
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["log_loss"] == pytest.approx(expected["log_loss"], abs=1e-6)
    assert (run_dir / "splits.csv").read_text() == (reference / "splits.csv").read_text()
    rows, expected_rows = read_csv(run_dir / "predictions.csv"), read_csv(reference / "predictions.csv")
    assert len(rows) == len(expected_rows) == expected["images"]
    for row, expected_row in zip(rows, expected_rows):
        assert _numbers_or_text(row) == pytest.approx(_numbers_or_text(expected_row), abs=1e-5)
    data_dir = json.loads((reference / "config.json").read_text())["data_dir"]
    photos = [os.path.join(data_dir, row["path"]) for row in expected_rows[:4]]
    got, want = ([p.to_dict() for p in load(d).predict(photos)] for d in (run_dir, reference))
    for row, expected_row in zip(got, want):
        assert row["label"] == expected_row["label"]
        assert row["probabilities"] == pytest.approx(expected_row["probabilities"], abs=1e-5)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A run never interrupted, on 30 + 30 photos: (data folder, its cache, its run directory)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    data = _small_dataset(root / "data", per_class=30, first=500)
    return data, root / "cache", _run(data, root / "cache", root / "runs", "uninterrupted")


@pytest.mark.slow
def test_killed_three_times_during_extraction_the_rerun_computes_only_the_rest_and_equals_an_uninterrupted_run(
        uninterrupted, tmp_path):
    """kill -9 after a chunk of the training photos, halfway through writing a chunk, and after a chunk
    of the validation and test photos: every chunk written is kept and read, the half-written one is
    never read, nothing is computed twice, and the outputs are an uninterrupted run's.

    At f1e2805 features were saved every 512 images: everything was lost. The test this replaces
    read the count of features computed from the log, which a changed log line made pass."""
    data, reference_cache, reference = uninterrupted
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    everything = _cached(reference_cache)
    total = len(_ids(everything))
    training = sum(row.split(",")[1] == "train" for row in (reference / "splits.csv").read_text().splitlines()[1:])
    assert total == 60 and 8 < training < total - 8

    _killed(data, cache, runs, "after a chunk of pass 1", tmp_path / "kill-1.log", chunk_size=8)
    first = _ids(_cached(cache))
    assert len(first) == 8  # one chunk of training photos, then death

    _killed(data, cache, runs, "halfway through writing a chunk", tmp_path / "kill-2.log", chunk_size=8)
    assert _ids(_cached(cache)) == first  # the half-written chunk is no chunk
    assert len(list(cache.glob("features/*/.partial-*"))) == 1  # it is there, under its hidden name

    _killed(data, cache, runs, "after a chunk of pass 2", tmp_path / "kill-3.log", chunk_size=8)
    before = _cached(cache)
    assert first < _ids(before) and len(_ids(before)) == training + 8  # the training photos, one chunk of the rest

    rerun = _run(data, cache, runs, "rerun")
    after = _cached(cache)
    assert all(after[chunk].keys() == ids.keys() for chunk, ids in before.items())  # every chunk kept
    new = [after[chunk] for chunk in set(after) - set(before)]
    new_ids = [i for chunk in new for i in chunk]
    assert sorted(new_ids) == sorted(_ids(everything) - _ids(before))  # only the rest, each once
    assert _finished_looking(runs) == ["rerun"]
    reference_features = {i: v for chunk in everything.values() for i, v in chunk.items()}
    for chunk in after.values():
        for i, values in chunk.items():
            np.testing.assert_allclose(values, reference_features[i], rtol=0, atol=1e-5)
    _assert_same_outputs(rerun, reference)


@pytest.mark.slow
def test_killed_while_the_run_directory_is_written_no_run_is_left_and_the_rerun_equals_an_uninterrupted_run(
        uninterrupted, tmp_path):
    """kill -9 after the model is written into the hidden run folder, and with everything written
    just before it is renamed into place: neither leaves a directory that looks finished, and the
    rerun (features all cached) takes the run's name and writes an uninterrupted run's outputs."""
    data, cache, reference = uninterrupted
    runs = tmp_path / "runs"
    chunks = sorted(_chunks(cache))

    _killed(data, cache, runs, "after the model is written", tmp_path / "kill-1.log")
    partial, = runs.glob(".partial-*")
    assert (partial / "model.keras").is_file() and not (partial / "metrics.json").exists()

    _killed(data, cache, runs, "after everything is written, before the rename", tmp_path / "kill-2.log")
    partial, = set(runs.glob(".partial-*")) - {partial}
    assert {"model.keras", "metrics.json", "predictions.csv", "splits.csv", "report.html"} <= set(os.listdir(partial))

    rerun = _run(data, cache, runs, "rerun")
    assert _finished_looking(runs) == ["rerun"]  # its own name: the killed runs took none
    assert sorted(_chunks(cache)) == chunks  # nothing computed again
    _assert_same_outputs(rerun, reference)


@pytest.mark.slow
def test_two_trainings_share_one_cache(tmp_path):
    """Two processes extracting into one cache both finish, each with a complete run."""
    data = _small_dataset(tmp_path / "data", per_class=12, first=700)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    processes = [_train_process(data, cache, runs, name, chunk_size=4) for name in ("one", "two")]
    results = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in results]
    one, two = (json.loads((runs / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert one["accuracy"] == pytest.approx(two["accuracy"]) and one["images"] == two["images"]
    assert features.FeatureCache(cache, os.path.basename(_chunks(cache)[0].parent)).features


def test_a_failed_run_leaves_no_finished_looking_directory(tmp_path, monkeypatch, capsys):
    """A stage that fails while the run is written leaves nothing in the runs folder.
    At f1e2805 each failed run left a run directory without a model."""
    from catsdogs.evaluation import evaluate as evaluation

    def broken(self, folder):
        raise OSError(errno.EIO, "Input/output error", folder)

    monkeypatch.setattr(evaluation.Evaluation, "save", broken)
    data = _small_dataset(tmp_path / "data", per_class=6, first=900)
    runs = tmp_path / "runs"
    with pytest.raises(OSError):
        main(["train", str(data), *SMALL, "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache")])
    assert os.listdir(runs) == []
