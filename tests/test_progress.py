"""Progress where the output goes: plain lines at least every interval when stderr is no terminal, or a callback."""

import logging
import os
import subprocess
import sys
import time

import numpy as np

from catsdogs.utils import progress
from conftest import ROOT, photo, real_dataset


def test_plain_lines_come_while_a_stage_runs_stalled_or_not_and_at_its_end(monkeypatch, caplog):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.2")
    monkeypatch.setattr(progress, "_interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="catsdogs.progress"):
        with progress.progress(10, "features (lite0)") as bar:
            bar.update(4)
            time.sleep(0.75)  # no update: the timer still says where it stands
            bar.update(6)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) >= 3 and all(line.startswith("features (lite0): 4/10 images (40.0%)") for line in lines[:-1])
    assert "left" in lines[0] and lines[-1].startswith("features (lite0): 10/10 images (100.0%)")
    assert "done in" in lines[-1]


def test_a_stage_over_before_its_first_line_prints_nothing(monkeypatch, caplog):
    monkeypatch.setattr(progress, "_interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="catsdogs.progress"):
        with progress.progress(1, "predict") as bar:
            bar.update()
    assert not caplog.records  # a command on one photo stays quiet


def test_a_callback_gets_every_update_instead_of_lines(monkeypatch, caplog):
    events = []
    with caplog.at_level(logging.INFO, logger="catsdogs.progress"), progress.report_to(events.append):
        with progress.progress(None, "scan", unit="files") as bar:
            bar.update(2)
            bar.set_postfix(skipped=1)
            bar.update()
    assert [(e.done, e.total, e.finished) for e in events] == [(2, None, False), (3, None, False), (3, None, True)]
    assert events[-1].postfix == "skipped=1" and events[-1].line().startswith("scan: 3 files")
    assert not caplog.records  # the caller shows progress its own way


def test_the_event_says_rate_and_time_left():
    event = progress.ProgressEvent("fine-tune", done=2, total=8, unit="epochs", elapsed=100.0)
    assert event.rate == 0.02 and event.seconds_left == 300
    assert event.line() == "fine-tune: 2/8 epochs (25.0%), 50.0 s per epoch, 5 min 00 s left"


def test_a_heartbeat_of_work_that_counts_nothing_says_its_time():
    event = progress.ProgressEvent("export (onnx): converting", done=0, total=None, unit="steps", elapsed=45.0)
    assert event.line() == "export (onnx): converting: 45 s so far"


def test_the_library_takes_a_callback_for_extraction(tmp_path):
    import catsdogs
    from catsdogs.inference.pipeline import run_on_files

    events = []
    with catsdogs.report_progress_to(events.append):
        run_on_files(lambda images: np.zeros((len(images), 2), np.float32),
                     [photo("test", "cats", n) for n in range(4001, 4006)], 32, batch_size=2, desc="features")
    assert [(e.desc, e.done, e.total, e.finished) for e in events] == [
        ("features", 2, 5, False), ("features", 4, 5, False), ("features", 5, 5, False), ("features", 5, 5, True)]
    assert isinstance(events[0], catsdogs.ProgressEvent)


# `catsdogs train` in a child process whose stderr is a file, with its logging stamped with the
# time, and the scan and the decoding of every photo slowed so that each stage lasts seconds.
SLOWED_TRAIN = r'''
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(relativeCreated)d %(name)s: %(message)s")
from catsdogs.cli import main
from catsdogs.data import scan
from catsdogs.inference import pipeline

def slowly(function, seconds):
    def slowed(*args):
        time.sleep(seconds)
        return function(*args)
    return slowed

scan._scan_file = slowly(scan._scan_file, 1.0)  # 8 threads: 3 s for 24 files
pipeline.ImagePipeline.prepare = slowly(pipeline.ImagePipeline.prepare, 0.3)  # 2 threads: 7 photos/s
sys.exit(main(sys.argv[1:]))
'''


def test_a_train_whose_output_is_a_file_says_where_it_stands_at_least_every_interval(tmp_path):
    data = real_dataset(tmp_path / "data", train_per_class=8, test_per_class=4)
    log = tmp_path / "train.log"
    with open(log, "w") as stderr:
        subprocess.run([sys.executable, "-c", SLOWED_TRAIN, "train", str(data), "--backbone", "efficientnet_lite0",
                        "--image-size", "96", "--runtime", "keras", "--precision", "float32", "--open-set", "none",
                        "--no-calibrate", "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")],
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src"), progress.INTERVAL_ENV: "0.5"},
                       stdout=subprocess.DEVNULL, stderr=stderr, timeout=300, check=True)
    stages, running = [], {}  # each stage's lines, as (seconds, what it says), in the order the stages end
    for line in log.read_text().splitlines():
        stamp, _, rest = line.partition(" catsdogs.progress: ")
        if rest:
            desc, _, state = rest.partition(": ")
            running.setdefault(desc, []).append((int(stamp) / 1000, state))
            if "done in" in state:
                stages.append((desc, running.pop(desc)))
    assert not running, running  # every stage that printed says when it ended
    # The scan, then the training photos' features, then the validation and test photos'.
    assert [desc for desc, _ in stages][:3] == ["scan", *["features (efficientnet_lite0)"] * 2], stages
    for desc, lines in stages:
        assert len(lines) >= 3, (desc, lines)
        assert np.diff([stamp for stamp, _ in lines]).max() < 0.5 + 1.0, (desc, lines)  # the interval, and a busy machine's delay


def test_a_fine_tuning_epoch_says_where_it_stands_within_the_epoch(monkeypatch, caplog):
    import keras

    from catsdogs.models.heads import EpochHistory

    class SlowSteps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(0.2)

    monkeypatch.setenv(progress.INTERVAL_ENV, "0.3")
    monkeypatch.setattr(progress, "_interactive", lambda: False)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    history = EpochHistory(2, "fine-tune", steps=True)
    with caplog.at_level(logging.INFO, logger="catsdogs.progress"):
        model.fit(np.zeros((16, 4)), np.zeros((16, 2)), batch_size=2, epochs=2, verbose=0,
                  validation_data=(np.zeros((4, 4)), np.zeros((4, 2))), callbacks=[SlowSteps(), history])
    lines = [record.getMessage() for record in caplog.records]
    within = [line for line in lines if line.startswith("fine-tune epoch 2/2: ") and "/8 steps" in line]
    assert len(within) >= 3 and "done in" in within[-1], lines  # 8 steps of 0.2 s: lines at 0.3, 0.6, 0.9 s...
    assert any(line.startswith("fine-tune: 1/2 epochs (50.0%)") and "val_loss=" in line for line in lines), lines
    assert [row["epoch"] for row in history.rows] == [1, 2]
