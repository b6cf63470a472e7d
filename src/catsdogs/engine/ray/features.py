"""Feature extraction on Ray: missing features computed by actors into the shared cache."""

import logging
import os
import time

import numpy as np

from catsdogs.config.choices import INFERENCE_BATCH_SIZE
from catsdogs.engine.ray.cluster import alive_nodes, connect, node_id, use_every_core
from catsdogs.engine.ray.scoring import MODEL_CPUS, _blocks, decoded, resized
from catsdogs.utils.progress import progress

log = logging.getLogger(__name__)


class FeatureWriter:
    """A frozen backbone in a Ray actor: batches of decoded images in, feature cache chunk files out."""

    def __init__(self, weights, name, image_size, precision, fingerprint, folder, views):
        """Args:
            weights: [an ObjectRef of the extractor's `get_weights()`], so that every actor computes
                with exactly the driver's weights (even random ones) and nothing is downloaded.
            name, image_size, precision: of `backbones.build_feature_extractor`.
            fingerprint: `weights.weights_fingerprint` of the driver's extractor, checked.
            folder: the `store.feature_cache.FeatureCache` folder, shared by every node.
            views: names in `inference.preprocess.VIEWS` to compute.
        """
        use_every_core()
        import ray

        from catsdogs.inference.model_formats import compiled_forward
        from catsdogs.models import backbones
        from catsdogs.models.weights import weights_fingerprint

        extractor = backbones.build_feature_extractor(name, "random", image_size, precision)
        extractor.set_weights(ray.get(weights[0]))
        if weights_fingerprint(extractor) != fingerprint:
            raise RuntimeError(f"{name}: the worker's extractor differs from the driver's")
        self.forward = compiled_forward(extractor)
        self.folder, self.views, self.image_size = folder, tuple(views), image_size
        self.node_id = node_id()

    def __call__(self, batch):
        from catsdogs.inference.pipeline import forward_batch
        from catsdogs.store.feature_cache import cache_id, write_chunk

        paths, pixels, ok, errors = resized(batch, self.image_size)
        keep, values = forward_batch(self.forward, pixels, ok, paths, self.views, errors)
        digests = [str(digest) for digest, kept in zip(batch["digest"], keep) if kept]
        write_chunk(self.folder, [cache_id(digest, view) for view in self.views for digest in digests],
                    np.concatenate([values[v, keep] for v in range(len(self.views))]))
        return {"computed": np.array([len(digests)]), "failed": np.array([len(paths) - len(digests)]),
                "node_id": np.array([self.node_id], object)}


def extract_features(extractor, precision, paths, hashes, cache, views=("original",), batch_size=INFERENCE_BATCH_SIZE,
                     address=None, workers=0) -> int:
    """Computes the features a cache lacks on a Ray cluster and writes them into its folder.

    The missing images (`store.feature_cache.missing`, each content once) are cut into blocks, each decoded
    and run by one worker, which writes its own chunk files atomically (`store.feature_cache.write_chunk`):
    no two workers compute the same photo and concurrent writers never clash. The cache then
    reads the new chunks (`FeatureCache.refresh`). Files that fail to decode are left out; the
    caller's `features.cached_features` finds them missing and reports them as usual.

    Args:
        extractor: the frozen backbone (its weights are sent to the workers).
        precision: its compute precision ("float32" or "bfloat16"), as built.
        paths: image files, readable at these paths on every node.
        hashes: content hash of each path.
        cache: the `store.feature_cache.FeatureCache` of this extractor, in a folder every node shares.
        views: names in `inference.preprocess.VIEWS`.
        batch_size: images per forward pass.
        address: the cluster (see `connect`).
        workers: extractor actors (0: one per live node).

    Returns:
        the number of images whose features were computed.
    """
    from catsdogs.models.weights import weights_fingerprint
    from catsdogs.store.feature_cache import missing

    todo = missing(paths, hashes, cache, views)
    if not todo:
        return 0
    ray = connect(address)
    workers = workers or len(alive_nodes(ray))
    weights = [ray.put(extractor.get_weights())]
    fingerprint = weights_fingerprint(extractor)
    image_size = extractor.input_shape[1]
    computed = 0
    for lacking, images in todo.items():
        start = time.perf_counter()
        items = [{"path": path, "digest": digest} for digest, path in images.items()]
        blocks = _blocks(len(items), batch_size, workers)
        images = decoded(ray, ray.data.from_items(items, override_num_blocks=blocks), batch_size, image_size)
        written = images.map_batches(
            FeatureWriter, fn_constructor_args=(weights, extractor.name, image_size, precision, fingerprint,
                                                os.path.abspath(cache.folder), lacking),
            batch_size=batch_size, batch_format="numpy", num_cpus=MODEL_CPUS,
            compute=ray.data.ActorPoolStrategy(size=workers))
        done, failed, nodes = 0, 0, set()
        with progress(len(items), f"features ({extractor.name}) on Ray") as bar:
            for summary in written.iter_batches(batch_size=None, batch_format="numpy"):  # as the actors finish
                done, failed = done + int(summary["computed"].sum()), failed + int(summary["failed"].sum())
                nodes.update(summary["node_id"].tolist())
                bar.update(int(summary["computed"].sum() + summary["failed"].sum()))
        computed += done
        seconds = time.perf_counter() - start
        log.info("computed features of %d images (%s) on %d workers, %d nodes, in %.1f s (%.1f images/s); "
                 "%d did not decode", done, ", ".join(lacking), workers, len(nodes), seconds, len(items) / seconds,
                 failed)
    cache.refresh()
    return computed
