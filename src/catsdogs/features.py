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
from catsdogs.files import atomic_path
from catsdogs.inference import Outputs, iter_batches

log = logging.getLogger(__name__)

# Bump when decoding or resizing changes, so that old features are not mixed with new ones.
PIPELINE_VERSION = 2  # 2: large photos decoded near the model's size (`images.shrink_while_decoding`)
# New features are written out when this many are pending or this many seconds have passed,
# whichever comes first: an interrupted extraction loses at most that much work.
CHUNK_SIZE = 512
CHUNK_SECONDS = 5.0
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


def cache_key(backbone_name, image_size, compute, fingerprint):
    """The folder name of one extractor configuration's features.

    Args:
        compute: what computes them: the Keras precision ("float32", "bfloat16"), or
            "onnx-float32" / "onnx-int8" for ONNX Runtime.
        fingerprint: of the weights (Keras) or of the ONNX file that computes them.
    """
    return f"{backbone_name}-{image_size}px-{compute}-w{fingerprint[:16]}-p{PIPELINE_VERSION}"


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


def cached_features(extractor, paths, hashes, cache, batch_size, views=("original",), desc="features",
                    forward=None) -> Outputs:
    """Features of every path and view, from the cache where present, computed and cached otherwise.

    Args:
        extractor: the frozen backbone.
        paths: image files.
        hashes: content hash of each path (same order).
        cache: a `FeatureCache` for this extractor.
        batch_size: images per forward pass.
        views: names in `inference.VIEWS`.
        desc: progress bar label.
        forward: what computes them (a `backbone_runtimes.OnnxBackbone`); default: the extractor in Keras.

    Returns:
        `inference.Outputs`: features (views, paths, dim), which paths have them, and why the
        others do not.
    """
    from catsdogs.runtimes import compiled_forward

    forward = forward or compiled_forward(extractor)
    errors = {}
    for lacking, todo in missing(paths, hashes, cache, views).items():
        log.info("computing features of %d images (%s)", len(todo), ", ".join(lacking))
        todo_hashes, todo_paths = list(todo), list(todo.values())
        pending_ids, pending_features = [], []
        start = last_write = time.perf_counter()
        for indices, features, batch_errors in iter_batches(
                forward, todo_paths, extractor.input_shape[1], batch_size, lacking, desc):
            errors.update(batch_errors)
            for view, view_features in zip(lacking, features):
                pending_ids += [cache_id(todo_hashes[i], view) for i in indices]
                pending_features += list(view_features)
            if len(pending_ids) >= CHUNK_SIZE or time.perf_counter() - last_write >= CHUNK_SECONDS:
                cache.add(pending_ids, pending_features)
                pending_ids, pending_features, last_write = [], [], time.perf_counter()
        cache.add(pending_ids, pending_features)
        seconds = time.perf_counter() - start
        log.info("computed them in %.1f s (%.1f images/s per view, decoding included)",
                 seconds, len(todo_paths) * len(lacking) / seconds)
    # A file that failed once is reported for every path with its content (identical copies).
    reasons = {digest: errors[path] for path, digest in zip(paths, hashes) if path in errors}
    values = np.zeros((len(views), len(hashes), extractor.output_shape[-1]), np.float32)
    ok = np.zeros(len(hashes), bool)
    for row, (path, digest) in enumerate(zip(paths, hashes)):
        if digest in reasons:
            errors[path] = reasons[digest]
            continue
        ok[row] = True
        for v, view in enumerate(views):
            values[v, row] = cache.features[cache_id(digest, view)]
    return Outputs(values, ok, errors)


def extractor_features(extractor, precision, paths, hashes, cache_dir, batch_size, views=("original",),
                       fill=None, desc="features", runtime="keras", calibration_paths=()) -> Outputs:
    """Features of an extractor (one backbone or an ensemble), each backbone cached on its own.

    An ensemble's features are its members' concatenated, so a member's cache serves every
    ensemble it belongs to and its single-backbone runs alike.

    Args:
        extractor: from `backbones.build_feature_extractor`.
        precision: the backbone's precision ("float32", "bfloat16" in Keras, "int8" in ONNX Runtime),
            part of the cache key.
        paths, hashes, batch_size, views, desc: as for `cached_features`.
        cache_dir: the cache's root folder.
        fill: called as fill(member extractor, its `FeatureCache`) before the cache is read, to
            compute missing features elsewhere (`distributed.extract_features`, Keras only); None: here.
        runtime: "keras", or "onnx" to run each member in ONNX Runtime (`backbone_runtimes.onnx_backbone`).
        calibration_paths: training photos that calibrate int8 quantization.

    Returns:
        `inference.Outputs`: features (views, paths, total dim); a path has them only if every
        member has.
    """
    from catsdogs.backbone_runtimes import onnx_backbone
    from catsdogs.backbones import extractor_members
    from catsdogs.weights import weights_fingerprint

    parts = []
    for member in extractor_members(extractor):
        forward, compute, fingerprint = None, precision, None
        if runtime == "onnx":
            forward = onnx_backbone(member, precision, cache_dir, calibration_paths)
            compute, fingerprint = f"onnx-{precision}", forward.fingerprint
        cache = FeatureCache(cache_dir, cache_key(member.name, member.input_shape[1], compute,
                                                  fingerprint or weights_fingerprint(member)))
        if fill is not None:
            fill(member, cache)
        parts.append(cached_features(member, paths, hashes, cache, batch_size, views, f"{desc} ({member.name})",
                                     forward))
    if len(parts) == 1:
        return parts[0]
    errors = {path: reason for part in reversed(parts) for path, reason in part.errors.items()}
    return Outputs(np.concatenate([part.values for part in parts], axis=-1),
                   np.all([part.ok for part in parts], axis=0), errors)
