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


def run_on_files(model, paths, image_size, batch_size, errors, desc="images"):
    """Runs a model over image files, decoding and resizing in a parallel tf.data pipeline.

    Args:
        model: a Keras model, or any callable such as an exported model's runtime, taking
            (batch, image_size, image_size, 3) float32 pixels in [0, 255].
        paths: image files.
        image_size: side of the resized square images.
        batch_size: images per forward pass.
        errors: dict that receives path -> reason for files that fail to decode.
        desc: progress bar label.

    Yields:
        (indices into paths, model outputs) per batch, for the images that decoded.
    """
    from catsdogs.backbones import resize_layer

    pipeline = ImagePipeline(resize_layer(image_size), batch_size)
    forward = keras_forward(model) if isinstance(model, keras.Model) else model
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False, disable=None) as progress:
        for images, ok, indices in pipeline.dataset(paths):
            outputs = np.asarray(forward(images))
            ok = ok.numpy()
            progress.update(len(ok))
            yield indices.numpy()[ok], outputs[ok]
    errors.update(pipeline.errors)


def decoded_images(paths, image_size, batch_size=32):
    """The images of the paths that decode, resized as every model's input is: (n, size, size, 3) float32."""
    from catsdogs.backbones import resize_layer

    pipeline = ImagePipeline(resize_layer(image_size), batch_size)
    return np.concatenate([images.numpy()[ok.numpy()] for images, ok, _ in pipeline.dataset(paths)])


def cached_features(extractor, paths, hashes, cache, batch_size, desc="features"):
    """Features of every path, from the cache where present, computed and cached otherwise.

    Args:
        extractor: the frozen backbone.
        paths: image files.
        hashes: content hash of each path (same order).
        cache: a `FeatureCache` for this extractor.
        batch_size: images per forward pass.
        desc: progress bar label.

    Returns:
        (features array aligned with paths, errors dict path -> reason). Rows of files that
        failed to decode are NaN.
    """
    missing = {}
    for path, digest in zip(paths, hashes):
        if digest not in cache and digest not in missing:
            missing[digest] = path
    errors = {}
    if missing:
        log.info("computing features of %d images (%d cached)", len(missing), len(paths) - len(missing))
        todo_hashes, todo_paths = list(missing), list(missing.values())
        pending_hashes, pending_features = [], []
        start = time.perf_counter()
        for indices, features in run_on_files(extractor, todo_paths, extractor.input_shape[1], batch_size, errors, desc):
            pending_hashes += [todo_hashes[i] for i in indices]
            pending_features += list(features)
            if len(pending_hashes) >= CHUNK_SIZE:
                cache.add(pending_hashes, pending_features)
                pending_hashes, pending_features = [], []
        cache.add(pending_hashes, pending_features)
        seconds = time.perf_counter() - start
        log.info("computed features of %d images in %.1f s (%.1f images/s, decoding included)",
                 len(todo_paths), seconds, len(todo_paths) / seconds)
    matrix = np.full((len(hashes), extractor.output_shape[-1]), np.nan, np.float32)
    for row, digest in enumerate(hashes):
        if digest in cache:
            matrix[row] = cache.features[digest]
    return matrix, errors
