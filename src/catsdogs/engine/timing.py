"""Timing a model inside this process: steady-state images/s of a forward pass and from files, peak memory.

`catsdogs bench` and `catsdogs export` (the export's speed in parity.json) both measure with these.
"""

import platform
import resource
import time

import numpy as np


def median_seconds(call, repeats=5):
    """Median wall time of `call()` over `repeats` timed calls, after two warm-up calls.

    The warm-up calls absorb tracing, compilation and buffer allocation.
    """
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def forward_rate(forward, images, repeats=5):
    """Steady-state images/s of a forward pass over one batch of images (see `median_seconds`)."""
    return len(images) / median_seconds(lambda: np.asarray(forward(images)), repeats)


def files_rate(model, paths, image_size, batch_size):
    """Images/s of `inference.pipeline.iter_batches` over the paths, in steady state and in total.

    Returns:
        dict: steady (from the end of the first batch to the end of the last), total (from the
        call to the end of the iteration, start-up and tear-down included), images.
    """
    from catsdogs.inference.pipeline import iter_batches

    start = time.perf_counter()
    finished = []  # (time, images done) after each batch
    done = 0
    for indices, _, _ in iter_batches(model, paths, image_size, batch_size, desc="bench"):
        done += len(indices)
        finished.append((time.perf_counter(), done))
    end = time.perf_counter()
    (first_time, first_done), (last_time, last_done) = finished[0], finished[-1]
    steady = (last_done - first_done) / (last_time - first_time) if len(finished) > 1 else done / (end - start)
    return {"steady": steady, "total": done / (end - start), "images": done}


def peak_rss_mb():
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
