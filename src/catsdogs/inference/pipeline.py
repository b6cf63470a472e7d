"""Running a model over image files: decoding, resizing, views, batches. The one path for every runtime.

Training (features, fine-tuned logits), evaluation, prediction, export checks and the benchmark
all call `run_on_files` (or `iter_batches`, to act on each batch as it comes, as the feature
cache does). A file that fails to decode is an error with its reason, never a NaN row.
"""

import dataclasses
import logging
import os
import threading

import numpy as np

from catsdogs.config.choices import INFERENCE_BATCH_SIZE
from catsdogs.errors import ConfigError, ImageError
from catsdogs.inference.preprocess import VIEWS, load_photo, resizer
from catsdogs.utils.host import usable_cpus

log = logging.getLogger(__name__)


class ImagePipeline:
    """A tf.data pipeline from image files to resized float batches, each photo prepared as every
    path prepares it (`preprocess.load_photo`, then `preprocess.resizer`).

    Decoding runs in parallel and overlaps the model; a file that fails to decode is recorded in
    `errors` (path -> reason) and arrives as a blank image with `ok` false, so
    nothing stops. Files are passed to TensorFlow by index, never by name, so that any file name
    works, including names that are not valid UTF-8.
    """

    def __init__(self, image_size, batch_size):
        """Args:
            image_size: the model's input side; images are resized as the model does (`preprocess.resizer`).
            batch_size: images per batch.
        """
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.image_size = image_size
        self.resize = resizer(image_size)
        self.batch_size = batch_size
        self.errors = {}
        self._lock = threading.Lock()

    def _decode(self, index):
        try:
            return load_photo(self._paths[index], self.image_size), True
        except ImageError as error:
            with self._lock:
                self.errors[self._paths[index]] = error.reason
            return np.zeros((1, 1, 3), np.uint8), False

    def dataset(self, paths, shuffle_seed=None, shard=None):
        """Returns a tf.data.Dataset of (images, ok, index) batches.

        In the order of `paths`, or reshuffled on every pass when `shuffle_seed` is given.
        `shard` (index, count) keeps one worker's share of that order: every count-th image from
        index on, len(paths) // count of them on every worker, so that all run the same number
        of steps (the last len(paths) % count images of each pass are left out). Only the images
        of the share are decoded.
        """
        import tensorflow as tf

        def decode(index):
            image, ok = tf.numpy_function(self._decode, [index], [tf.uint8, tf.bool], stateful=False)
            image.set_shape([None, None, 3])
            ok.set_shape([])
            return self.resize(tf.cast(image, tf.float32)), ok, index

        self._paths = [os.fspath(p) for p in paths]
        ds = tf.data.Dataset.range(len(self._paths))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(self._paths), seed=shuffle_seed, reshuffle_each_iteration=True)
        if shard is not None:  # after the shuffle, which every worker makes alike (same seed)
            index, count = shard
            ds = ds.shard(count, index).take(len(self._paths) // count)
        # Fixed parallelism (one decoder per core, two batches ahead) instead of tf.data's autotuning,
        # which was measured to take CPU from the model it feeds and, when a second pipeline of
        # the same process ends, to stall for 9-40 s (docs/BENCHMARKS.md).
        options = tf.data.Options()
        options.autotune.enabled = False
        ds = ds.map(decode, num_parallel_calls=usable_cpus(), deterministic=True)
        return ds.batch(self.batch_size).prefetch(2).with_options(options)


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
        desc: progress bar label.

    Yields:
        (indices into paths of the images that decoded, their outputs (views, images, ...) or a
        dict of them, errors: path -> reason for the files of this batch that did not decode or gave
        non-finite outputs).
    """
    from tqdm.auto import tqdm

    from catsdogs.inference.pipeline import ImagePipeline

    pipeline = ImagePipeline(image_size, batch_size)
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False, disable=None) as progress:
        for images, ok, indices in pipeline.dataset(paths):
            ok, indices = ok.numpy(), indices.numpy()
            errors = {paths[i]: pipeline.errors[os.fspath(paths[i])] for i in indices[~ok]}
            keep, outputs = forward_batch(forward, images, ok, [paths[i] for i in indices], views, errors)
            progress.update(len(ok))
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
    from catsdogs.inference.pipeline import ImagePipeline

    pipeline = ImagePipeline(image_size, batch_size)
    return np.concatenate([images.numpy()[ok.numpy()] for images, ok, _ in pipeline.dataset(paths)])
