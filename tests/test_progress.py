"""Progress where the output goes: plain lines at least every interval when stderr is no terminal, or a callback."""

import logging
import time

from catsdogs.utils import progress


def test_plain_lines_come_at_the_start_while_a_stage_stalls_and_at_the_end(monkeypatch, caplog):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.2")
    monkeypatch.setattr(progress, "_interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="catsdogs.progress"):
        with progress.progress(10, "features (lite0)") as bar:
            bar.update(4)
            time.sleep(0.75)  # no update: the timer still says where it stands
            bar.update(6)
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith("features (lite0): 0/10 images (0.0%)")
    assert sum(line.startswith("features (lite0): 4/10 images (40.0%)") for line in lines) >= 2
    assert "left" in lines[2] and lines[-1].startswith("features (lite0): 10/10 images (100.0%)")
    assert "done in" in lines[-1]


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
