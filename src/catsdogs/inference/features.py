"""Features of a frozen backbone for photos: from the feature cache where present,
computed (in Keras or ONNX Runtime) and cached otherwise."""

import dataclasses
import logging
import time

import numpy as np

from catsdogs.inference.pipeline import Outputs, iter_batches
from catsdogs.inference.preprocess import PIPELINE_VERSION
from catsdogs.store.feature_cache import FeatureCache, cache_id, cache_key, missing

log = logging.getLogger(__name__)

# New features are written out when this many are pending or this many seconds have passed,
# whichever comes first: an interrupted extraction loses at most that much work.
CHUNK_SIZE = 512
CHUNK_SECONDS = 5.0


@dataclasses.dataclass
class ExtractionTiming:
    """How fast an extraction went (`compute_features`).

    Attributes:
        images: photos prepared and run through the backbone (each once, whatever the views).
        seconds: from the call to the last chunk written.
        batches: (seconds since the call, photos done) at the end of each batch.
    """

    images: int
    seconds: float
    batches: list

    @property
    def rate(self):
        """Photos per second, start-up included: what `catsdogs train` logs."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_rate(self):
        """Photos per second from the end of the first batch to the end of the last (the rate alone where
        there was one batch): start-up and tear-down left out, as `catsdogs bench` reports."""
        if len(self.batches) < 2:
            return self.rate
        (first_time, first_done), (last_time, last_done) = self.batches[0], self.batches[-1]
        return (last_done - first_done) / (last_time - first_time) if last_time > first_time else self.rate


def compute_features(forward, paths, hashes, cache, image_size, batch_size, views=("original",), desc="features"):
    """Computes photos' features in some views and adds them to the cache, a chunk every CHUNK_SIZE
    features or CHUNK_SECONDS: the extraction of `catsdogs train`, and what `catsdogs bench` times from files.

    Args:
        forward: what computes them: `inference.model_formats.compiled_forward` of the Keras backbone,
            or an `inference.backbone_runtime.OnnxBackbone`.
        paths: image files.
        hashes: content hash of each path (same order): the features' ids in the cache.
        cache: a `FeatureCache`.
        image_size: the backbone's input side.
        batch_size: images per forward pass.
        views: names in `inference.preprocess.VIEWS`.
        desc: what the progress says is being done.

    Returns:
        (errors: path -> reason for the photos without features, `ExtractionTiming`).
    """
    errors, pending_ids, pending_features, batches = {}, [], [], []
    start = last_write = time.perf_counter()
    for indices, features, batch_errors in iter_batches(forward, paths, image_size, batch_size, views, desc):
        errors.update(batch_errors)
        for view, view_features in zip(views, features):
            pending_ids += [cache_id(hashes[i], view) for i in indices]
            pending_features += list(view_features)
        if len(pending_ids) >= CHUNK_SIZE or time.perf_counter() - last_write >= CHUNK_SECONDS:
            cache.add(pending_ids, pending_features)
            pending_ids, pending_features, last_write = [], [], time.perf_counter()
        batches.append((time.perf_counter() - start, min((len(batches) + 1) * batch_size, len(paths))))
    cache.add(pending_ids, pending_features)
    return errors, ExtractionTiming(len(paths), time.perf_counter() - start, batches)


def cached_features(extractor, paths, hashes, cache, batch_size, views=("original",), desc="features",
                    forward=None) -> Outputs:
    """Features of every path and view, from the cache where present, computed and cached otherwise.

    Args:
        extractor: the frozen backbone.
        paths: image files.
        hashes: content hash of each path (same order).
        cache: a `FeatureCache` for this extractor.
        batch_size: images per forward pass.
        views: names in `inference.preprocess.VIEWS`.
        desc: what the progress says is being done.
        forward: what computes them (a `inference.backbone_runtime.OnnxBackbone`); default: the extractor in Keras.

    Returns:
        `inference.pipeline.Outputs`: features (views, paths, dim), which paths have them, and why the
        others do not.
    """
    from catsdogs.inference.model_formats import compiled_forward

    forward = forward or compiled_forward(extractor)
    errors = {}
    for lacking, todo in missing(paths, hashes, cache, views).items():
        log.info("computing features of %d images (%s)", len(todo), ", ".join(lacking))
        batch_errors, timing = compute_features(forward, list(todo.values()), list(todo), cache,
                                                extractor.input_shape[1], batch_size, lacking, desc)
        errors.update(batch_errors)
        log.info("computed them in %.1f s (%.1f images/s, %d view%s each, decoding included)", timing.seconds,
                 timing.rate, len(lacking), "s" if len(lacking) > 1 else "")
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
            compute missing features elsewhere (`engine.ray.features.extract_features`, Keras only); None: here.
        runtime: "keras", or "onnx" to run each member in ONNX Runtime (`inference.backbone_runtime.onnx_backbone`).
        calibration_paths: training photos that calibrate int8 quantization.

    Returns:
        `inference.pipeline.Outputs`: features (views, paths, total dim); a path has them only if every
        member has.
    """
    from catsdogs.inference.backbone_runtime import onnx_backbone
    from catsdogs.models.backbones import extractor_members
    from catsdogs.models.weights import weights_fingerprint

    parts = []
    for member in extractor_members(extractor):
        forward, compute, fingerprint = None, precision, None
        if runtime == "onnx":
            forward = onnx_backbone(member, precision, cache_dir, calibration_paths)
            compute, fingerprint = f"onnx-{precision}", forward.fingerprint
        cache = FeatureCache(cache_dir, cache_key(member.name, member.input_shape[1], compute,
                                                  fingerprint or weights_fingerprint(member), PIPELINE_VERSION))
        if fill is not None:
            fill(member, cache)
        parts.append(cached_features(member, paths, hashes, cache, batch_size, views, f"{desc} ({member.name})",
                                     forward))
    if len(parts) == 1:
        return parts[0]
    errors = {path: reason for part in reversed(parts) for path, reason in part.errors.items()}
    return Outputs(np.concatenate([part.values for part in parts], axis=-1),
                   np.all([part.ok for part in parts], axis=0), errors)
