"""The on-disk feature cache: each image's backbone features are computed once, then reused.

Features are keyed by the image's content hash, inside a folder named after everything else
that changes them: backbone, input size, the runtime and precision that computed them (Keras in
float32 or bfloat16, ONNX Runtime in float32 or int8: `backbone_runtimes`), the weight values (or
the ONNX file) and the decoding pipeline, so features of different runtimes never mix.
New features are appended as chunk files written atomically, every few seconds of extraction,
so an interrupted extraction keeps what it finished and the cache is never left half-written.
"""

import errno
import glob
import logging
import os
import time
import uuid
import zipfile

import numpy as np

from catsdogs.errors import CacheError
from catsdogs.utils.files import atomic_path

log = logging.getLogger(__name__)


# A hidden partial file older than this is left by a writer that died (a live writer finishes a
# chunk in well under a second), so it is removed; younger ones may belong to a running process.
STALE_PARTIAL_SECONDS = 3600


class FeatureCache:
    """Features of one extractor configuration, stored in `root/<key>/chunk-*.npz`."""

    def __init__(self, root, key):
        self.folder = os.path.join(root, "features", key)
        self.features = {}
        self._chunks_read = set()
        self._remove_stale_partials()
        self.refresh()

    def refresh(self):
        """Reads the chunk files not read yet, such as those other processes wrote since.

        An unreadable chunk costs only its own features (computed again), never the whole cache.
        """
        for chunk in sorted(glob.glob(os.path.join(self.folder, "chunk-*.npz"))):
            if chunk in self._chunks_read:
                continue
            self._chunks_read.add(chunk)
            if chunk.endswith(".partial.npz"):  # left by versions that named partial files so
                self._remove(chunk, "a partial file left by an interrupted run")
                continue
            try:
                with np.load(chunk) as data:
                    hashes, values = data["hashes"].tolist(), data["features"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                log.warning("feature cache: skipping unreadable chunk %s (%s)", chunk, error)
                continue
            self.features.update(zip(hashes, values))

    def _remove(self, path, why):
        try:
            os.remove(path)
            log.info("feature cache: removed %s, %s", path, why)
        except OSError as error:  # another process may have removed it first
            log.debug("feature cache: could not remove %s: %s", path, error)

    def _remove_stale_partials(self):
        now = time.time()
        for partial in glob.glob(os.path.join(self.folder, ".partial-*")):
            try:
                stale = now - os.path.getmtime(partial) > STALE_PARTIAL_SECONDS
            except OSError:
                continue
            if stale:
                self._remove(partial, "a partial file left by an interrupted run")

    def __contains__(self, digest):
        return digest in self.features

    def __len__(self):
        return len(self.features)

    def add(self, hashes, features):
        """Stores features of images by hash, in one new chunk file."""
        self._chunks_read.add(write_chunk(self.folder, hashes, features))
        self.features.update(zip(hashes, np.asarray(features, np.float32)))


def write_chunk(folder, ids, features):
    """Writes features into a new chunk file of a cache folder, atomically, under a unique name.

    Any number of processes may write into the same folder at once: no file is ever overwritten
    or seen half-written.

    Args:
        folder: `FeatureCache.folder`.
        ids: cache ids (`cache_id`) of the features.
        features: (len(ids), dim) features.

    Returns:
        the chunk file written, or None when there was nothing to write.

    Raises:
        CacheError: the chunk cannot be written (a full disk, no permission).
    """
    if not ids:
        return None
    path = os.path.join(folder, f"chunk-{uuid.uuid4().hex}.npz")
    try:
        os.makedirs(folder, exist_ok=True)
        # atomic_path removes the partial file if writing fails: no truncated chunk is left.
        with atomic_path(path) as partial:
            np.savez(partial, hashes=np.array(ids), features=np.asarray(features, np.float32))
    except OSError as error:
        reason = "no space left on the device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise CacheError(f"feature cache {folder}: cannot write features: {reason}; free some space or choose "
                         f"another --cache-dir") from error
    return path


def cache_key(backbone_name, image_size, compute, fingerprint, pipeline_version):
    """The folder name of one extractor configuration's features.

    Args:
        compute: what computes them: the Keras precision ("float32", "bfloat16"), or
            "onnx-float32" / "onnx-int8" for ONNX Runtime.
        fingerprint: of the weights (Keras) or of the ONNX file that computes them.
        pipeline_version: of the way photos are prepared (`inference.preprocess.PIPELINE_VERSION`).
    """
    return f"{backbone_name}-{image_size}px-{compute}-w{fingerprint[:16]}-p{pipeline_version}"


def cache_id(digest, view):
    """The id of an image's features in a view: its content hash, with the view unless original."""
    return digest if view == "original" else f"{digest}:{view}"


def missing(paths, hashes, cache, views=("original",)) -> dict:
    """The images whose features the cache lacks, grouped by the views they lack.

    Grouped so that each image is decoded once and nothing cached is redone; identical files
    (the same hash) are computed once.

    Returns:
        lacking views (a tuple) -> {content hash: path}.
    """
    todo = {}
    for path, digest in zip(paths, hashes):
        lacking = tuple(v for v in views if cache_id(digest, v) not in cache)
        if lacking:
            todo.setdefault(lacking, {}).setdefault(digest, path)
    return todo
