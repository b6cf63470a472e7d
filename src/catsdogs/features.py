"""The on-disk feature cache: each image's backbone features are computed once, then reused.

Features are keyed by the image's content hash, inside a folder named after everything else
that changes them: backbone, input size, precision, weight values and the decoding pipeline.
New features are appended as chunk files written atomically, so an interrupted extraction
keeps what it finished and the cache is never left half-written.
"""

import glob
import logging
import os
import time
import uuid

import keras
import numpy as np
from tqdm.auto import tqdm

from catsdogs.data import ImagePipeline

log = logging.getLogger(__name__)

# Bump when decoding or resizing changes, so that old features are not mixed with new ones.
PIPELINE_VERSION = 1
CHUNK_SIZE = 512


class FeatureCache:
    """Features of one extractor configuration, stored in `root/<key>/chunk-*.npz`."""

    def __init__(self, root, key):
        self.folder = os.path.join(root, "features", key)
        self.features = {}
        for chunk in sorted(glob.glob(os.path.join(self.folder, "chunk-*.npz"))):
            with np.load(chunk) as data:
                self.features.update(zip(data["hashes"].tolist(), data["features"]))

    def __contains__(self, digest):
        return digest in self.features

    def __len__(self):
        return len(self.features)

    def add(self, hashes, features):
        """Stores features of images by hash, in one new chunk file."""
        if not hashes:
            return
        os.makedirs(self.folder, exist_ok=True)
        name = os.path.join(self.folder, f"chunk-{uuid.uuid4().hex}")
        np.savez(f"{name}.partial.npz", hashes=np.array(hashes), features=np.asarray(features, np.float32))
        os.replace(f"{name}.partial.npz", f"{name}.npz")
        self.features.update(zip(hashes, np.asarray(features, np.float32)))


def cache_key(backbone_name, image_size, precision, fingerprint):
    return f"{backbone_name}-{image_size}px-{precision}-w{fingerprint[:16]}-p{PIPELINE_VERSION}"


def keras_forward(model):
    """The inference pass of a Keras model as one compiled TensorFlow graph, retraced only for new shapes."""
    import tensorflow as tf

    return tf.function(lambda images: model(images, training=False), reduce_retracing=True)


def _hflip(images):
    return images[:, :, ::-1, :]


# Views for test-time augmentation: cheap, label-preserving transformations of the resized image.
VIEWS = {"original": lambda images: images, "hflip": _hflip}
TTA_VIEWS = ("original", "hflip")


def run_on_files(model, paths, image_size, batch_size, errors, views=("original",), desc="images"):
    """Runs a model over image files, decoding and resizing in a parallel tf.data pipeline.

    Args:
        model: a Keras model, or any callable such as an exported model's runtime, taking
            (batch, image_size, image_size, 3) float32 pixels in [0, 255].
        paths: image files.
        image_size: side of the resized square images.
        batch_size: images per forward pass.
        errors: dict that receives path -> reason for files that fail to decode.
        views: names in VIEWS; the model runs on each view of every image.
        desc: progress bar label.

    Yields:
        (indices into paths, outputs of shape (views, images, ...)) per batch, for the images
        that decoded.
    """
    from catsdogs.backbones import resize_layer

    pipeline = ImagePipeline(resize_layer(image_size), batch_size)
    forward = keras_forward(model) if isinstance(model, keras.Model) else model
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False, disable=None) as progress:
        for images, ok, indices in pipeline.dataset(paths):
            outputs = np.stack([np.asarray(forward(VIEWS[view](images))) for view in views])
            ok = ok.numpy()
            progress.update(len(ok))
            yield indices.numpy()[ok], outputs[:, ok]
    errors.update(pipeline.errors)


def decoded_images(paths, image_size, batch_size=32):
    """The images of the paths that decode, resized as every model's input is: (n, size, size, 3) float32."""
    from catsdogs.backbones import resize_layer

    pipeline = ImagePipeline(resize_layer(image_size), batch_size)
    return np.concatenate([images.numpy()[ok.numpy()] for images, ok, _ in pipeline.dataset(paths)])


def _cache_id(digest, view):
    return digest if view == "original" else f"{digest}:{view}"


def cached_features(extractor, paths, hashes, cache, batch_size, views=("original",), desc="features"):
    """Features of every path and view, from the cache where present, computed and cached otherwise.

    Args:
        extractor: the frozen backbone.
        paths: image files.
        hashes: content hash of each path (same order).
        cache: a `FeatureCache` for this extractor.
        batch_size: images per forward pass.
        views: names in VIEWS.
        desc: progress bar label.

    Returns:
        (features of shape (views, paths, dim), errors dict path -> reason). Rows of files that
        failed to decode are NaN.
    """
    # Images grouped by the views they lack, so that each is decoded once and nothing cached is redone.
    todo = {}
    for path, digest in zip(paths, hashes):
        lacking = tuple(v for v in views if _cache_id(digest, v) not in cache)
        if lacking:
            todo.setdefault(lacking, {}).setdefault(digest, path)
    errors = {}
    for lacking, missing in todo.items():
        log.info("computing features of %d images (%s)", len(missing), ", ".join(lacking))
        todo_hashes, todo_paths = list(missing), list(missing.values())
        pending_ids, pending_features = [], []
        start = time.perf_counter()
        for indices, features in run_on_files(
                extractor, todo_paths, extractor.input_shape[1], batch_size, errors, lacking, desc):
            for view, view_features in zip(lacking, features):
                pending_ids += [_cache_id(todo_hashes[i], view) for i in indices]
                pending_features += list(view_features)
            if len(pending_ids) >= CHUNK_SIZE:
                cache.add(pending_ids, pending_features)
                pending_ids, pending_features = [], []
        cache.add(pending_ids, pending_features)
        seconds = time.perf_counter() - start
        log.info("computed them in %.1f s (%.1f images/s per view, decoding included)",
                 seconds, len(todo_paths) * len(lacking) / seconds)
    matrix = np.full((len(views), len(hashes), extractor.output_shape[-1]), np.nan, np.float32)
    for v, view in enumerate(views):
        for row, digest in enumerate(hashes):
            matrix[v, row] = cache.features.get(_cache_id(digest, view), np.nan)
    return matrix, errors
