"""Progress of long work, shown where the output goes.

- On a terminal or in a notebook: a tqdm bar (tqdm.auto: a widget in Jupyter).
- Anywhere else (a log file, CI, a service's log): a plain line on the "catsdogs.progress" logger
  once the stage has run FIRST_LINE_SECONDS, then at least every `interval()` seconds while it runs
  (from a timer, so a stalled stage still says so) and at its end: "features (efficientnet_lite0):
  512/4000 images (12.8%), 104.2 images/s, 34 s left". A stage over sooner prints nothing, so that
  a command on one photo stays quiet.
- A caller's own callback instead of either (`report_to`), e.g. a service showing progress its own way.

Every stage longer than a few seconds reports through `progress`: the scan, feature extraction,
fine-tuning (epochs and steps within them), Ray scoring and export.
"""

import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time

log = logging.getLogger("catsdogs.progress")

INTERVAL_ENV = "CATSDOGS_PROGRESS_SECONDS"
# Plain lines come at least this often: under 30 s even when an update arrives just after a line.
DEFAULT_INTERVAL = 20.0
# The first plain line comes this long after a stage starts (or after `interval()`, if shorter).
FIRST_LINE_SECONDS = 2.0

_callback = None


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """Where a stage of work stands.

    Attributes:
        desc: what is being done, e.g. "features (efficientnet_lite0)".
        done: units done so far.
        total: units in all, or None where unknown.
        unit: what a unit is ("images", "epochs", "steps").
        elapsed: seconds since the stage started.
        finished: whether the stage has ended.
        postfix: short "name=value" notes (a validation loss, say).
    """

    desc: str
    done: int
    total: int | None
    unit: str
    elapsed: float
    finished: bool = False
    postfix: str = ""

    @property
    def rate(self):
        """Units per second so far, or None before any."""
        return self.done / self.elapsed if self.done and self.elapsed > 0 else None

    @property
    def seconds_left(self):
        """Estimated seconds to the end at the rate so far, or None where it cannot be said."""
        if self.total is None or not self.rate:
            return None
        return max(self.total - self.done, 0) / self.rate

    def line(self):
        """One plain line: done/total, share, rate, time left (or the time taken, once finished)."""
        parts = []
        if self.total or self.done:  # else a heartbeat of work that counts nothing: its time alone
            count = f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"
            parts.append(count + (f" ({self.done / self.total:.1%})" if self.total else ""))
        if self.rate:
            singular = self.unit[:-1] if self.unit.endswith("s") else self.unit
            parts.append(f"{self.rate:.1f} {self.unit}/s" if self.rate >= 1 else f"{1 / self.rate:.1f} s per {singular}")
        if self.finished:
            parts.append(f"done in {_duration(self.elapsed)}")
        elif self.seconds_left is not None:
            parts.append(f"{_duration(self.seconds_left)} left")
        else:
            parts.append(f"{_duration(self.elapsed)} so far")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts)


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def interval():
    """Seconds between plain progress lines: $CATSDOGS_PROGRESS_SECONDS, else DEFAULT_INTERVAL."""
    try:
        return max(float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)), 0.01)
    except ValueError:
        return DEFAULT_INTERVAL


def _interactive():
    """Whether a bar can be drawn: stderr is a terminal, or this runs in a Jupyter kernel."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def show_lines():
    """Makes the plain lines reach stderr in a process whose logging is not set up (a Ray worker's),
    where Python would drop them (the "catsdogs.progress" logger writes at INFO)."""
    if not (log.handlers or logging.getLogger().handlers):
        log.addHandler(logging.StreamHandler(sys.stderr))
        log.setLevel(logging.INFO)


@contextlib.contextmanager
def report_to(callback):
    """Sends every `ProgressEvent` to `callback` instead of a bar or log lines, within the block.

    Args:
        callback: called with a `ProgressEvent` on every update and at the end of each stage.
    """
    global _callback
    previous, _callback = _callback, callback
    try:
        yield
    finally:
        _callback = previous


class Progress:
    """Progress of one stage (see the module). Use as a context manager, or call `close` at the end."""

    def __init__(self, total, desc, unit="images"):
        """Args:
            total: units in all (None where unknown).
            desc: what is being done.
            unit: what a unit is, plural ("images", "epochs", "steps").
        """
        self.total, self.desc, self.unit = total, desc, unit
        self.done, self.postfix = 0, ""
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._closed = False
        self._callback = _callback
        self._bar = None
        self._timer = None
        self._lines = 0
        if self._callback is None and _interactive():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit.rstrip("s") or unit, leave=False)
        elif self._callback is None:
            self._schedule(min(FIRST_LINE_SECONDS, interval()))

    def event(self, finished=False):
        return ProgressEvent(self.desc, self.done, self.total, self.unit, time.monotonic() - self._start, finished,
                             self.postfix)

    def update(self, count=1):
        """Adds `count` units done."""
        with self._lock:
            self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self._callback is not None:
            self._callback(self.event())

    def set_postfix(self, **values):
        """Short notes shown after the counts, e.g. set_postfix(val_loss="0.0123")."""
        self.postfix = ", ".join(f"{name}={value}" for name, value in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values)

    def close(self):
        """Ends the stage: the bar closes, or a last line (where there were lines) or event says how long it took."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._bar is not None:
            self._bar.close()
        elif self._callback is not None:
            self._callback(self.event(finished=True))
        elif self._lines:
            self._emit(finished=True)

    def _emit(self, finished=False):
        self._lines += 1
        log.info("%s", self.event(finished).line())

    def _schedule(self, seconds=None):
        self._timer = threading.Timer(interval() if seconds is None else seconds, self._tick)
        self._timer.daemon = True
        self._timer.start()

    def _tick(self):
        if self._closed:
            return
        self._emit()
        self._schedule()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def progress(total, desc, unit="images"):
    """A `Progress` of one stage: `with progress(len(paths), "features") as bar: ... bar.update(n)`."""
    return Progress(total, desc, unit)


@contextlib.contextmanager
def polled(bar, count):
    """Within the block, brings `bar` up to `count()` (units done so far, read from elsewhere: rows
    another process wrote, say) every half `interval()`, from a thread, and once more at the end."""
    stop = threading.Event()

    def poll():
        while not stop.wait(interval() / 2):
            bar.update(count() - bar.done)

    thread = threading.Thread(target=poll, name="catsdogs-progress-poll", daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()
    bar.update(count() - bar.done)
