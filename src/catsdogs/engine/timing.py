"""Timing a model inside this process: steady-state images/s of a forward pass and from files, peak memory.

`catsdogs bench` and `catsdogs export` (the export's speed in parity.json) both measure with these.
"""

import platform
import resource
import tempfile
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


def files_rate(forward, paths, image_size, batch_size):
    """Images/s of feature extraction from files, as `catsdogs train` extracts: the very function it
    runs (`inference.features.compute_features`), into a throwaway feature cache.

    Returns:
        dict: steady (from the end of the first batch to the end of the last), total (from the
        call to the last chunk written, start-up included), images.
    """
    from catsdogs.inference import features
    from catsdogs.store.feature_cache import FeatureCache

    ids = [f"photo-{i}" for i in range(len(paths))]  # the cache is thrown away: no content hashes needed
    with tempfile.TemporaryDirectory() as folder:
        _, timing = features.compute_features(forward, paths, ids, FeatureCache(folder, "bench"), image_size,
                                              batch_size, desc="bench")
    return {"steady": timing.steady_rate, "total": timing.rate, "images": timing.images}


def peak_rss_mb():
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
