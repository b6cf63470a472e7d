"""`catsdogs discover`: the photos a model rejects or is unsure of, grouped into proposed new classes.

Every photo below the folders given is judged by the run's model; those it rejects as none of its
classes (open-set score under the threshold) or whose most probable class is under `unsure` are
grouped by their backbone features (`models.discovery`: agglomerative clustering on cosine distance,
its threshold read off the run's own classes, the number of groups found). The features come
from the feature cache (`inference.features`), so that training again with the proposed classes
reads them back in seconds. `catsdogs review RUN --clusters DIR` then names each group as a new
class, merges it into a known one or leaves it out; `catsdogs train DATA --labels DIR/corrections.csv`
trains with those decisions.
"""

import dataclasses
import logging
import os

import numpy as np

from catsdogs.config.choices import DISCOVER_UNSURE, INFERENCE_BATCH_SIZE, default_cache_dir
from catsdogs.config.train import TrainConfig
from catsdogs.data.dataset import expand_inputs
from catsdogs.data.scan import file_hash
from catsdogs.engine.train import keras_precision
from catsdogs.errors import ConfigError, DataError, ImageError
from catsdogs.evaluation.figures import plot_cluster, save_figure
from catsdogs.inference.classifier import decide, load
from catsdogs.inference.features import extractor_features
from catsdogs.models import backbones, discovery
from catsdogs.models import model as model_lib
from catsdogs.store import discover_dir, run_dir
from catsdogs.utils.files import is_inside

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Discovery:
    """What `discover` found.

    Attributes:
        run: the run directory whose model judged the photos.
        sources: the folders the photos were listed from (absolute).
        photos: how many photos were judged (those that could be read).
        rows: one dict per photo proposed (rejected or unsure): path, cluster (`models.discovery.NO_CLUSTER`:
            in none), why, predicted, probability, in_distribution_score; as clusters.csv has them.
        distance_threshold: the clustering's threshold (`models.discovery.merge_threshold` of the run's classes).
        min_size: the fewest photos of a cluster.
        output: the folder written, or None.
    """

    run: str
    sources: list
    photos: int
    rows: list
    distance_threshold: float
    min_size: int
    output: str = None

    @property
    def clusters(self) -> dict:
        """cluster number -> the paths of its photos, largest cluster first."""
        grouped = {}
        for row in self.rows:
            if row["cluster"] != discovery.NO_CLUSTER:
                grouped.setdefault(row["cluster"], []).append(row["path"])
        return dict(sorted(grouped.items()))

    def summary(self) -> dict:
        """discover.json: the run, the sources, the parameters and the counts."""
        clustered = sum(len(paths) for paths in self.clusters.values())
        return {"run": self.run, "sources": self.sources, "photos": self.photos, "proposed": len(self.rows),
                "rejected": sum(row["why"] == "rejected" for row in self.rows),
                "unsure": sum(row["why"] == "unsure" for row in self.rows), "clusters": len(self.clusters),
                "clustered": clustered, "distance_threshold": self.distance_threshold,
                "min_cluster_size": self.min_size}

    def __str__(self):
        summary = self.summary()
        lines = [f"{summary['photos']} photos judged by {self.run}: {summary['rejected']} rejected, "
                 f"{summary['unsure']} unsure; {summary['clustered']} of them in {summary['clusters']} clusters (at "
                 f"least {self.min_size} photos each, mean cosine distance under {self.distance_threshold:.3f})"]
        lines += [f"  cluster {number}: {len(paths)} photos, e.g. {os.path.basename(paths[0])}"
                  for number, paths in self.clusters.items()]
        return "\n".join(lines)


def _hashes(paths):
    """(the paths that can be read, their content hashes); the others are logged and left out."""
    readable, hashes = [], []
    for path in paths:
        try:
            hashes.append(file_hash(path))
            readable.append(path)
        except ImageError as error:
            log.warning("skipped %s", error)
    return readable, hashes


def _training_photos(run, seed):
    """The run's training photos of its data folder (what calibrated its int8 backbone, as `train.calibration_photos`),
    and (paths, class indices) of up to `discovery.SPREAD_SAMPLE` of each class."""
    data_dir = run.data_dir()
    rows = [row for row in run.photo_rows(run_dir.SPLITS, run_dir.SPLITS_COLUMNS) if row["split"] == "train"]
    names = sorted({row["label"] for row in rows})
    rng = np.random.default_rng(seed)
    chosen = []
    for name in names:
        members = [row for row in rows if row["label"] == name]
        chosen += [members[i] for i in sorted(rng.choice(len(members), min(len(members), discovery.SPREAD_SAMPLE),
                                                         replace=False))]
    calibration = [os.path.join(data_dir, row["path"]) for row in rows
                   if is_inside(data_dir, os.path.join(data_dir, row["path"]))]
    return calibration, ([os.path.join(data_dir, row["path"]) for row in chosen],
                         [names.index(row["label"]) for row in chosen])


def discover(run, folders, output=None, unsure: float = DISCOVER_UNSURE, batch_size: int = INFERENCE_BATCH_SIZE,
             cache_dir=None) -> Discovery:
    """Groups the photos a run's model rejects or is unsure of into proposed new classes.

    Args:
        run: a run directory (`catsdogs train`).
        folders: folders (and files) of photos to judge, e.g. the photos a deployed model answered "unknown".
        output: the folder to write discover.json, clusters.csv and a montage per cluster into (None: nothing
            is written).
        unsure: photos whose most probable class is under this probability are proposed too (0: rejected
            photos only).
        batch_size: images per forward pass of the backbone.
        cache_dir: the feature cache (default: $CATSDOGS_CACHE, else the user cache), where training reads them.

    Returns:
        a `Discovery`.
    """
    if not 0 <= unsure <= 1:
        raise ConfigError(f"unsure {unsure}: expected a probability from 0 (rejected photos only) to 1")
    run_path = os.path.abspath(os.fspath(run))
    run_directory = run_dir.RunDirectory(run_path)
    run_directory.require(run_dir.CONFIG, run_dir.MODEL, run_dir.SPLITS)
    config = TrainConfig.load(run_directory.file(run_dir.CONFIG))
    cache_dir = cache_dir or default_cache_dir()
    folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    sources = [os.path.abspath(os.fspath(folder)) for folder in folders]
    paths, hashes = _hashes([os.path.abspath(path) for path in expand_inputs(sources)])
    if not paths:
        raise DataError(f"no photo to judge in {', '.join(sources)}")
    calibration, (sample, sample_labels) = _training_photos(run_directory, config.seed)
    train_paths, train_hashes = _hashes(sample)
    readable = set(train_paths)
    train_labels = [label for path, label in zip(sample, sample_labels) if path in readable]

    extractor = backbones.build_feature_extractor(config.backbone, config.weights, config.image_size,
                                                  keras_precision(config), cache_dir)
    features = extractor_features(extractor, config.precision, paths + train_paths, hashes + train_hashes, cache_dir,
                                  batch_size, runtime=config.runtime, calibration_paths=calibration, desc="discover")
    for path, reason in features.errors.items():
        log.warning("skipped %s: %s", path, reason)
    ok = features.ok[:len(paths)]
    values = features.values[0, :len(paths)][ok]
    paths = [path for path, keep in zip(paths, ok) if keep]
    if not paths:
        raise DataError(f"none of the photos in {', '.join(sources)} could be read")
    threshold = discovery.merge_threshold(features.values[0, len(ok):][features.ok[len(ok):]],
                                          np.asarray(train_labels)[features.ok[len(ok):]], config.seed)

    classifier = load(run_path)
    if run_directory.metrics().get("stages", {}).get("kept") == "fine_tune":
        # The model's backbone was tuned: its answers come from the photos, the clusters from the frozen features.
        outputs = classifier.outputs_of_files(paths, batch_size=batch_size, desc="discover").mean_over_views()
    else:  # the run's head and open-set score on the very features it was trained on
        outputs = {name: np.asarray(value) for name, value in
                   model_lib.parts(classifier.model).outputs_from_features(values).items()}
    decisions = decide(classifier.info, outputs)
    rejected = np.array([d.get("accepted") is False for d in decisions])
    proposed = rejected | np.array([d["probability"] < unsure for d in decisions])
    min_size = discovery.min_cluster_size(int(proposed.sum()))
    clusters = discovery.cluster(values[proposed], threshold, min_size)
    rows = [{"path": path, "cluster": int(number), "why": "rejected" if rejected[i] else "unsure",
             "predicted": decisions[i]["label"], "probability": decisions[i]["probability"],
             "in_distribution_score": decisions[i].get("in_distribution_score")}
            for i, path, number in zip(np.flatnonzero(proposed), np.asarray(paths, object)[proposed], clusters)]
    rows.sort(key=lambda row: (row["cluster"] == discovery.NO_CLUSTER, row["cluster"], row["path"]))
    result = Discovery(run_path, sources, len(paths), rows, threshold, min_size)
    if output is not None:
        result.output = write(result, output, classifier.info.image_size)
    return result


def write(result: Discovery, output, image_size) -> str:
    """Writes discover.json, clusters.csv and a montage per cluster into `output` (created if missing).

    Returns:
        the folder, absolute.
    """
    output = os.path.abspath(os.fspath(output))
    if os.path.isdir(output) and os.listdir(output):  # an earlier discover's decisions would not match new clusters
        raise ConfigError(f"{output}: not an empty folder; write the clusters into a new one")
    writer = run_dir.RunWriter(output)
    for number, paths in result.clusters.items():
        with writer.atomic(discover_dir.montage_name(number)) as partial:
            save_figure(plot_cluster(paths, number, image_size=image_size), partial)
    writer.write_csv(discover_dir.CLUSTERS, result.rows, discover_dir.CLUSTER_COLUMNS)
    writer.write_json(discover_dir.INFO, result.summary())  # last: a folder with it is complete
    log.info("%d clusters written to %s", len(result.clusters), output)
    return output
