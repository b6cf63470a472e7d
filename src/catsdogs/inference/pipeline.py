"""Running a model over image files: decoding, resizing, views, batches. The one path for every runtime.

Training (features, fine-tuned logits), evaluation, prediction, export checks and the benchmark
all call `run_on_files` (or `iter_batches`, to act on each batch as it comes, as the feature
cache does). A file that fails to decode is an error with its reason, never a NaN row.

Photos are decoded and resized (`preprocess.load_photo`, `preprocess.resize`) by one thread per
core while the model runs on the batch before: both release the GIL, and neither needs
TensorFlow, so a runtime that is not Keras runs without it.
"""

import collections
import dataclasses
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from catsdogs.config.choices import INFERENCE_BATCH_SIZE
from catsdogs.errors import ConfigError, ImageError
from catsdogs.inference.preprocess import VIEWS, load_photo, resize
from catsdogs.utils.host import usable_cpus
from catsdogs.utils.progress import progress

log = logging.getLogger(__name__)

# Batches decoded ahead of the one the model is on: enough that the model never waits for photos
# when decoding is faster than it, few enough to hold in memory (64 photos at 380 px: 111 MB each).
BATCHES_AHEAD = 2


class ImagePipeline:
    """Image files to batches of resized float32 pixels, each photo prepared as every path prepares it
    (`preprocess.load_photo`, then `preprocess.resize`).

    A file that fails to decode is recorded in `errors` (path -> reason) and arrives as a blank
    image with `ok` false, so nothing stops.
    """

    def __init__(self, image_size, batch_size):
        """Args:
            image_size: the model's input side; images are resized as the model does (`preprocess.resize`).
            batch_size: images per batch.
        """
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.image_size = image_size
        self.batch_size = batch_size
        self.errors = {}
        self._lock = threading.Lock()

    def prepare(self, path):
        """One photo decoded and resized: ((size, size, 3) float32 pixels, True), or (blank, False) with
        the reason in `errors`."""
        try:
            return resize(load_photo(path, self.image_size), self.image_size), True
        except ImageError as error:
            with self._lock:
                self.errors[path] = error.reason
            return np.zeros((self.image_size, self.image_size, 3), np.float32), False

    def batches(self, paths):
        """Yields (images, ok, indices) numpy batches in the order of `paths`, decoded by a thread per
        usable core up to BATCHES_AHEAD batches ahead.

        The batches' pixels live in buffers used again and again (a fresh 111 MB batch would be
        faulted into memory page by page each time): a batch's `images` are valid until the next
        batch is asked for.
        """
        paths = [os.fspath(p) for p in paths]
        starts = range(0, len(paths), self.batch_size)
        buffers = [np.empty((min(self.batch_size, len(paths)), self.image_size, self.image_size, 3), np.float32)
                   for _ in range(min(BATCHES_AHEAD + 1, len(starts)))]

        def into(buffer, slot, path):
            buffer[slot], ok = self.prepare(path)
            return ok

        def submit(number):
            buffer = buffers[number % len(buffers)]
            batch = paths[starts[number]:starts[number] + self.batch_size]
            return [pool.submit(into, buffer, slot, path) for slot, path in enumerate(batch)]

        pool = ThreadPoolExecutor(usable_cpus(), thread_name_prefix="catsdogs-decode")
        try:
            pending = collections.deque(submit(number) for number in range(min(BATCHES_AHEAD, len(starts))))
            for number, start in enumerate(starts):
                if number + BATCHES_AHEAD < len(starts):
                    pending.append(submit(number + BATCHES_AHEAD))
                ok = np.array([future.result() for future in pending.popleft()], bool)
                yield buffers[number % len(buffers)][:len(ok)], ok, np.arange(start, start + len(ok))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def dataset(self, paths, shuffle_seed=None, shard=None):
        """Returns a tf.data.Dataset of (images, ok, index) batches, for Keras to train on.

        In the order of `paths`, or reshuffled on every pass when `shuffle_seed` is given.
        `shard` (index, count) keeps one worker's share of that order: every count-th image from
        index on, len(paths) // count of them on every worker, so that all run the same number
        of steps (the last len(paths) % count images of each pass are left out). Only the images
        of the share are decoded. Files are passed to TensorFlow by index, never by name, so that
        any file name works, including names that are not valid UTF-8.
        """
        import tensorflow as tf

        paths = [os.fspath(p) for p in paths]

        def prepare(index):
            image, ok = tf.numpy_function(lambda i: self.prepare(paths[i]), [index], [tf.float32, tf.bool],
                                          stateful=False)
            image.set_shape([self.image_size, self.image_size, 3])
            ok.set_shape([])
            return image, ok, index

        ds = tf.data.Dataset.range(len(paths))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
        if shard is not None:  # after the shuffle, which every worker makes alike (same seed)
            index, count = shard
            ds = ds.shard(count, index).take(len(paths) // count)
        # Fixed parallelism (one decoder per core, two batches ahead) instead of tf.data's autotuning,
        # which was measured to take CPU from the model it feeds and, when a second pipeline of
        # the same process ends, to stall for 9-40 s (docs/BENCHMARKS.md).
        options = tf.data.Options()
        options.autotune.enabled = False
        ds = ds.map(prepare, num_parallel_calls=usable_cpus(), deterministic=True)
        return ds.batch(self.batch_size).prefetch(BATCHES_AHEAD).with_options(options)


@dataclasses.dataclass
class Outputs:
    """What a model gave for each file.

    Attributes:
        values: (views, files, ...) model outputs, or a dict of them for a runtime's outputs
            (`runtimes`); rows of failed files are zero.
        ok: (files,) whether each file has outputs.
        errors: path -> reason, for each file without outputs.
    """

    values: np.ndarray
    ok: np.ndarray
    errors: dict

    def mean_over_views(self):
        """(files, ...) outputs averaged over the views (test-time augmentation)."""
        return _map(lambda values: values.mean(axis=0), self.values)


def _map(function, values):
    """`function` applied to an array, or to each array of a dict."""
    return {k: function(v) for k, v in values.items()} if isinstance(values, dict) else function(values)


def _arrays(values):
    return list(values.values()) if isinstance(values, dict) else [values]


def iter_batches(forward, paths, image_size, batch_size=INFERENCE_BATCH_SIZE, views=("original",), desc="images"):
    """Runs a model over image files batch by batch, decoding in a parallel tf.data pipeline.

    Args:
        forward: a callable taking (batch, image_size, image_size, 3) float32 pixels in [0, 255]
            and returning an array or a dict of arrays: a runtime (`model_formats.load`) or
            `inference.model_formats.compiled_forward(model)`.
        paths: image files.
        image_size: side of the resized square images.
        batch_size: images per forward pass.
        views: names in VIEWS; the model runs on each view of every image.
        desc: what the progress says is being done (`utils.progress`).

    Yields:
        (indices into paths of the images that decoded, their outputs (views, images, ...) or a
        dict of them, errors: path -> reason for the files of this batch that did not decode or gave
        non-finite outputs).
    """
    pipeline = ImagePipeline(image_size, batch_size)
    with progress(len(paths), desc) as bar:
        for images, ok, indices in pipeline.batches(paths):
            errors = {paths[i]: pipeline.errors[os.fspath(paths[i])] for i in indices[~ok]}
            keep, outputs = forward_batch(forward, images, ok, [paths[i] for i in indices], views, errors)
            bar.update(len(ok))
            yield indices[keep], _map(lambda a: a[:, keep], outputs), errors


def forward_batch(forward, images, ok, paths, views, errors):
    """Runs a model on the views of one batch of decoded images and finds the rows to keep.

    Args:
        forward: as for `iter_batches`.
        images: (batch, image_size, image_size, 3) float32 pixels, resized (blank where not `ok`).
        ok: (batch,) whether each image decoded.
        paths: the file of each image, for the errors.
        views: names in VIEWS.
        errors: path -> reason; a reason is added for each decoded image whose outputs are not finite.

    Returns:
        (keep: (batch,) whether each image has usable outputs, outputs: (views, batch, ...) or a dict of them).
    """
    per_view = [forward(VIEWS[view](images)) for view in views]
    outputs = ({k: np.stack([np.asarray(o[k]) for o in per_view]) for k in per_view[0]}
               if isinstance(per_view[0], dict) else np.stack([np.asarray(o) for o in per_view]))
    finite = np.all([np.isfinite(a).reshape(len(views), len(ok), -1).all(axis=(0, 2)) for a in _arrays(outputs)],
                    axis=0)
    for i in np.flatnonzero(ok & ~finite):
        errors[paths[i]] = "the model's output is not finite (NaN or infinity)"
        log.warning("%s: the model's output is not finite", paths[i])
    return ok & finite, outputs


def run_on_files(forward, paths, image_size, batch_size=INFERENCE_BATCH_SIZE, views=("original",),
                 desc="images") -> Outputs:
    """Runs a model over image files (see `iter_batches`) and collects its outputs.

    Returns:
        `Outputs` in the order of `paths`.
    """
    batches, ok, errors = [], np.zeros(len(paths), bool), {}
    for indices, outputs, batch_errors in iter_batches(forward, paths, image_size, batch_size, views, desc):
        batches.append((indices, outputs))
        ok[indices] = True
        errors.update(batch_errors)
    if not batches:  # nothing decoded: the outputs' shapes are unknown
        return Outputs(np.zeros((len(views), len(paths), 0), np.float32), ok, errors)

    def gather(select):
        first = select(batches[0][1])
        values = np.zeros((len(views), len(paths), *first.shape[2:]), first.dtype)
        for indices, outputs in batches:
            values[:, indices] = select(outputs)
        return values

    first = batches[0][1]
    values = {k: gather(lambda o, k=k: o[k]) for k in first} if isinstance(first, dict) else gather(lambda o: o)
    return Outputs(values, ok, errors)


def decoded_images(paths, image_size, batch_size=32):
    """The images of the paths that decode, resized as every model's input is: (n, size, size, 3) float32."""
    pipeline = ImagePipeline(image_size, batch_size)
    return np.concatenate([images[ok] for images, ok, _ in pipeline.batches(paths)])
