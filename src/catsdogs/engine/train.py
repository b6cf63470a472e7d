"""Training a classifier, in named stages: prepare, extract, fit the head, fine-tune, calibrate, write.

Features are computed once by the frozen backbone and cached (`features`), so the head trains
in seconds; fine-tuning, calibration and the decision threshold are all chosen on the
validation split, never on the test folder. `train` runs the stages and returns a `Run`.
"""

import dataclasses
import logging
import os
import time

import numpy as np

from catsdogs.config.choices import SIMILAR_SHOWN
from catsdogs.config.train import TrainConfig
from catsdogs.data import labels, near_duplicates
from catsdogs.data.corrections import apply_listed, new_classes, photos_to_add
from catsdogs.data.dataset import Sample
from catsdogs.data.scan import ScanReport, scan_dataset
from catsdogs.data.splits import make_splits, split_added
from catsdogs.engine.tracking import log_run
from catsdogs.errors import ConfigError, DataError, ImageError
from catsdogs.evaluation.evaluate import Evaluation, OpenSetResults, unknown_scores
from catsdogs.evaluation.learning_curve import learning_curve
from catsdogs.evaluation.multilabel import MultiLabelEvaluation
from catsdogs.inference.backbone_runtime import choose, onnx_backbone
from catsdogs.inference.classifier import Classifier
from catsdogs.inference.features import extractor_features
from catsdogs.inference.model_formats import KerasModel, compiled_forward
from catsdogs.inference.pipeline import run_on_files
from catsdogs.inference.preprocess import views_for
from catsdogs.inference.similar import training_photos_of
from catsdogs.models import backbones, calibration, conformal, heads, multilabel, openset
from catsdogs.models import model as model_lib
from catsdogs.models.folding import fold_batch_normalization
from catsdogs.store import discover_dir, run_dir
from catsdogs.utils.extras import require
from catsdogs.utils.files import is_inside, timestamp

log = logging.getLogger(__name__)


HISTORY_FIELDS = ("stage", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")


@dataclasses.dataclass
class Run:
    """What `train` made.

    Attributes:
        config: the settings used ("auto" precision and the default image size resolved).
        classifier: the trained `Classifier`.
        evaluation: its `Evaluation` on the test photos, with validation and stage summaries.
        run_dir: the run directory written, or None (`runs_dir=None`).
        splits: split name -> the `data.dataset.Sample`s used.
        history: epoch rows of the dense head and fine-tuning (empty for the linear head alone).
        review: one row per photo of every split for `catsdogs review` (`review_rows`).
    """

    config: TrainConfig
    classifier: Classifier
    evaluation: Evaluation
    run_dir: str = None
    splits: dict = None
    history: list = dataclasses.field(default_factory=list)
    review: list = dataclasses.field(default_factory=list)

    @property
    def metrics(self) -> dict:
        """Test metrics (see `Evaluation.metrics`)."""
        return self.evaluation.metrics

    @property
    def model(self):
        """The end-to-end `keras.Model`."""
        return self.classifier.model

    def __repr__(self):
        return (f"Run(run_dir={self.run_dir!r}, backbone={self.config.backbone!r}, "
                f"accuracy={self.metrics['accuracy']:.4f}, classes={self.classifier.classes})")


@dataclasses.dataclass
class SplitFeatures:
    x: np.ndarray  # (views, images, feature_dim)
    y: np.ndarray  # class indices, or a multi-label run's (images, labels) of 0 and 1
    paths: list


@dataclasses.dataclass
class Prepared:
    """The dataset ready to train on: classes, integrity scan, splits, and the checked settings."""

    config: TrainConfig
    class_names: list
    scan: ScanReport
    splits: dict  # "train", "val", "test" -> list of data.Sample
    target: tuple = None  # parsed --target: (metric, class index, value); multi-label: a list of them
    open_set: tuple = ()  # the methods of the in-distribution score
    carved: tuple = ()  # the splits catsdogs made ("val", "test"): near-duplicates may move out of them
    calibration: list = None  # the training photos that calibrate int8 quantization, fixed before any move

    @property
    def label_separator(self):
        """What joins a photo's labels in tables, for a multi-label run; None for one class a photo."""
        return self.config.label_separator if self.config.multi_label else None

    def labels(self, samples) -> np.ndarray:
        """The labels of samples as training takes them: class indices, or (samples, labels) of 0 and 1."""
        if self.config.multi_label:
            return multilabel.indicator_matrix([s.label for s in samples], len(self.class_names))
        return np.array([s.label for s in samples], int)

    def label_name(self, sample) -> str:
        """A sample's label as tables write it: its class, or its labels joined by the separator."""
        if self.config.multi_label:
            return self.config.label_separator.join(self.class_names[i] for i in sample.label)
        return self.class_names[sample.label]


def parse_target(target, class_names):
    """"precision:dogs=0.99" -> ("precision", 1, 0.99)."""
    try:
        metric, rest = target.split(":", 1)
        name, value = rest.rsplit("=", 1)
        value = float(value)
        if metric not in ("precision", "recall") or name not in class_names or not 0 < value <= 1:
            raise ValueError
        return metric, class_names.index(name), value
    except ValueError:
        raise ConfigError(f"target {target!r}: expected precision:CLASS=VALUE or recall:CLASS=VALUE with CLASS "
                          f"one of {class_names} and VALUE in (0, 1]") from None


def parse_targets(targets, class_names):
    """A multi-label run's targets, one a label: "precision:cats=0.99,recall:dogs=0.9" -> [("precision", 0, 0.99),
    ("recall", 1, 0.9)] (`parse_target` each)."""
    parsed = [parse_target(target.strip(), class_names) for target in targets.split(",")]
    labels = [index for _, index, _ in parsed]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"target {targets!r}: one target a label")
    return parsed


def check_config(config: TrainConfig):
    """Checks every setting before anything is read: the settings' own check, then what needs the backbone
    registry, the optional extras or the Ray workers.

    Raises:
        ConfigError: naming the setting and what is accepted; MissingDependency: an extra that is not installed.
    """
    config.check()
    if len(backbones.member_names(config.backbone)) > 1 and config.fine_tune:
        raise ConfigError(f"backbone {config.backbone}: fine-tuning takes one backbone; an ensemble's members "
                          f"stay frozen (train one backbone with --fine-tune instead)")
    backbones.check_weights(config.backbone, config.weights)
    backbone_runtime(config)
    if config.mlflow:
        require("mlflow", "--mlflow")
    if config.engine == "ray":
        require("ray", "--engine ray")
        if config.fine_tune and config.ray_workers:
            from catsdogs.engine.ray.finetune import check_global_batch

            check_global_batch(config.fine_tune_batch_size, config.ray_workers)


def backbone_runtime(config: TrainConfig):
    """The runtime and precision of the frozen backbone, "auto" resolved (`backbone_runtime.choose`).

    Ensembles, fine-tuning and --engine ray compute features in Keras (the Ray workers and the
    fine-tuned backbone run there), so "auto" is Keras for them.
    """
    keras_only = (f"the ensemble {config.backbone} runs its members in Keras"
                  if len(backbones.member_names(config.backbone)) > 1
                  else "fine-tuning trains the backbone in Keras" if config.fine_tune
                  else "--engine ray computes features in Keras on its workers" if config.engine == "ray" else None)
    return choose(config.runtime, config.precision, keras_only)


def prepare(config: TrainConfig, table=None) -> Prepared:
    """Stage "prepare": checks the settings, finds the images, scans them and splits them.

    Every setting is checked before the first image is read. Images are only hashed and their
    headers read here; decoding comes with extraction.

    Args:
        table: a labels table in memory (a DataFrame or (path, label) pairs), instead of
            `config.labels`' first file or the class folders.
    """
    check_config(config)
    columns = labels.Columns(config.path_column, config.label_column, config.split_column)
    separator = config.label_separator if config.multi_label else None
    dataset, corrections = labels.load_dataset(config.data_dir, table if table is not None else config.labels,
                                               columns, separator)
    class_names = dataset.class_names + new_classes(corrections, dataset.class_names)
    target = None
    if config.target and config.multi_label:
        target = parse_targets(config.target, class_names)
    elif config.target:
        if len(class_names) != 2:
            raise ConfigError(f"--target needs exactly two classes; {config.data_dir} has {len(class_names)}")
        target = parse_target(config.target, class_names)
    open_set = openset.resolve_methods(config.open_set, config.backbone, config.weights, class_names,
                                       config.multi_label)
    # config.json says what was used: "auto" and 0 (the backbone's size) are resolved.
    runtime, precision = backbone_runtime(config)
    added, sources = discovered_photos(corrections, dataset, class_names)
    config = dataclasses.replace(
        config, data_dir=os.path.abspath(config.data_dir), runtime=runtime, precision=precision,
        image_size=config.image_size or backbones.default_image_size(config.backbone), discovered_sources=sources)
    log.info("%s: classes %s, %s", config.data_dir, class_names,
             ", ".join(f"{len(v)} {k} files" for k, v in {**dataset.splits, "discovered": added}.items() if v))
    scan = scan_dataset(dataclasses.replace(dataset, splits={**dataset.splits, "discovered": added}),
                        near=config.near_duplicates)
    splits = make_splits(dataset, scan, config.val_fraction, config.test_fraction, config.seed)
    for source in corrections:
        splits = apply_listed(splits, class_names, config.data_dir, source, label_separator=separator)
    if added:
        more = split_added([s for s in added if s.path in scan.hashes], scan.hashes, class_names, config.val_fraction,
                           config.test_fraction, config.seed)
        splits = {name: samples + more[name] for name, samples in splits.items()}
    if config.exclude:
        splits = apply_listed(splits, class_names, config.data_dir, config.exclude, exclusions_only=True)
    scan.split_of = {s.path: name for name, samples in splits.items() for s in samples}
    carved = tuple(name for name in ("val", "test") if name not in dataset.splits)
    return Prepared(config, class_names, scan, splits, target, open_set, carved,
                    [s.path for s in splits["train"]])


def discovered_photos(corrections, dataset, class_names):
    """The photos from outside the data folder that corrections tables name as a new class or merge into a
    known one (`catsdogs discover`, then `catsdogs review --clusters`), allowed only from the discover folder
    that holds the table and proposed them (`store.discover_dir.added_photo_sources`).

    Returns:
        (their `Sample`s, labelled among `class_names`; the folders they came from, sorted).
    """
    added, sources = {}, set()
    for source in corrections:
        photos = photos_to_add(source, dataset.splits, dataset.root)
        if photos:
            sources.update(discover_dir.added_photo_sources(source, list(photos)))
            added.update(photos)
    return [Sample(path, class_names.index(label)) for path, label in added.items()], tuple(sorted(sources))


def keras_precision(config):
    """The precision the Keras backbone is built in: the run's own, or float32 where ONNX Runtime
    computes the features (converted from the float32 model, int8 quantized from it)."""
    return config.precision if config.runtime == "keras" else "float32"


def calibration_photos(prepared: Prepared):
    """The training photos (never validation or test ones) that calibrate int8 quantization: those of the data
    folder in the split as first made, so that neither near-duplicates moved into training later nor photos
    added from discovered clusters change the quantized backbone or the features it computed."""
    photos = prepared.calibration if prepared.calibration is not None else [s.path for s in prepared.splits["train"]]
    return [path for path in photos if is_inside(prepared.config.data_dir, path)]


def ray_fill(config, paths, hashes, views):
    """With --engine ray, what fills a backbone's feature cache on the cluster before it is read as usual;
    else None (`inference.features.extractor_features`)."""
    if config.engine != "ray":
        return None
    from catsdogs.engine.ray.features import extract_features  # Ray only when asked for

    def fill(member, cache):
        extract_features(member, config.precision, paths, hashes, cache, views, config.extract_batch_size,
                         config.ray_address, config.ray_workers)

    return fill


def extract(prepared: Prepared, extractor) -> dict:
    """Stage "extract": features of every split, from the cache or the backbone.

    Training images get the original view, and the low-resolution one with `low_resolution`;
    validation and test images also the mirrored view when `tta` is on. Files that fail to decode
    join the scan's problems and are left out.

    Returns:
        split name -> `SplitFeatures` of the images that decoded.
    """
    config, scan = prepared.config, prepared.scan
    result = {}
    train_views = ("original", "low_resolution") if config.low_resolution else ("original",)
    for names, views in ((("train",), train_views), (("val", "test"), views_for(config.tta))):
        samples = [s for name in names for s in prepared.splits[name]]
        paths = [s.path for s in samples]
        hashes = [scan.hashes[p] for p in paths]
        outputs = extractor_features(extractor, config.precision, paths, hashes, config.cache_dir,
                                     config.extract_batch_size, views, ray_fill(config, paths, hashes, views),
                                     runtime=config.runtime, calibration_paths=calibration_photos(prepared))
        for path, reason in outputs.errors.items():
            scan.add_problem(path, reason)
        start = 0
        for name in names:
            count = len(prepared.splits[name])
            ok = outputs.ok[start:start + count]
            result[name] = SplitFeatures(outputs.values[:, start:start + count][:, ok],
                                         prepared.labels(prepared.splits[name])[ok],
                                         [s.path for s, k in zip(prepared.splits[name], ok) if k])
            start += count
    for name, split in result.items():
        present = set(np.flatnonzero(split.y.any(axis=0))) if config.multi_label else set(split.y.tolist())
        missing = sorted(set(range(len(prepared.class_names))) - present)
        if missing:
            raise DataError(f"{config.data_dir}: no usable {name} images of class "
                            f"{', '.join(prepared.class_names[i] for i in missing)} (skipped files: "
                            f"{len(scan.problems)}; see the list above)")
    everywhere = np.flatnonzero(result["train"].y.all(axis=0)) if config.multi_label else []
    if len(everywhere):
        raise DataError(f"{config.data_dir}: every usable training photo has the label "
                        f"{', '.join(prepared.class_names[i] for i in everywhere)}: a label must be absent from some "
                        f"photos to be told apart")
    return result


def keep_near_duplicates_together(prepared: Prepared, extractor, split_features) -> dict:
    """Stage "near-duplicates": photos whose features are nearly the same and whose colours agree, such as
    crops, which the perceptual hash of the scan misses, join the scan's near-duplicates
    (`data.near_duplicates`); then the photos of a group that crosses splits and lie in a split
    catsdogs carved move to the training split, so that no validation or test photo it made is a
    near-duplicate of a training photo. Groups that cross the splits the dataset gives stay where
    they are and are reported (`ScanReport.near_duplicates_across_splits`).

    Args:
        split_features: from `extract`.

    Returns:
        the split features, extracted again (from the cache) if photos moved.
    """
    config, scan = prepared.config, prepared.scan
    if not config.near_duplicates or config.weights == "random":  # random features: every photo looks alike
        return split_features
    names = ("train", "val", "test")
    paths = [path for name in names for path in split_features[name].paths]
    features = np.concatenate([split_features[name].x[0] for name in names])
    linked = {path: number for number, group in enumerate(scan.near_duplicate_groups()) for path in group}
    histograms = {}
    for i, j, similarity in near_duplicates.feature_pairs(features):
        a, b = paths[i], paths[j]
        if scan.hashes[a] == scan.hashes[b] or (a in linked and linked[a] == linked.get(b)):
            continue  # identical files, or near-duplicates known already
        for path in (a, b):
            if path not in histograms:  # decoded once, as the scan did, only for the photos paired
                try:
                    histograms[path] = near_duplicates.colour_histogram(near_duplicates.load_thumbnail(path))
                except ImageError:  # changed since it was extracted: left unpaired
                    histograms[path] = None
        if histograms[a] is None or histograms[b] is None:
            continue
        overlap = near_duplicates.colour_overlap(histograms[a], histograms[b])
        if overlap >= near_duplicates.COLOUR_MIN_OVERLAP:
            scan.near_pairs.append({"paths": [a, b], "found_by": "features", "similarity": similarity,
                                    "colour_overlap": round(overlap, 4)})
    moving = {photo["path"] for group in scan.near_duplicates_across_splits() for photo in group["photos"]
              if photo["split"] in prepared.carved}
    if not moving:
        return split_features
    log.info("near-duplicates: %d photos move from the %s split to training, beside their near-duplicates",
             len(moving), " and ".join(prepared.carved))
    for name in prepared.carved:
        prepared.splits["train"] += [s for s in prepared.splits[name] if s.path in moving]
        prepared.splits[name] = [s for s in prepared.splits[name] if s.path not in moving]
    scan.split_of.update(dict.fromkeys(moving, "train"))
    return extract(prepared, extractor)


def head_logits(head, split):
    """(views, images, logits) of a Keras head on a split's features."""
    return np.stack([head.predict(x, batch_size=1024, verbose=0) for x in split.x])


def fit_head(config: TrainConfig, split_features: dict):
    """Stage "fit head": the linear or dense head on the training features.

    Returns:
        (the fitted estimator, its Keras head, epoch rows of its history).
    """
    import keras

    keras.utils.set_random_seed(config.seed)
    estimator = heads.make_head(config)
    train, val = split_features["train"], split_features["val"]
    # Every view of a training photo is one more sample (the original, and its low-resolution view).
    x, y = np.concatenate(list(train.x)), np.concatenate([train.y] * len(train.x))
    if isinstance(estimator, heads.DenseHead):
        estimator.fit(x, y, validation_data=(val.x[0], val.y))
        history = [{"stage": "head", **row} for row in estimator.history_]
    else:
        estimator.fit(x, y, groups=np.tile(np.arange(len(train.y)), len(train.x)) if len(train.x) > 1 else None)
        history = []
    return estimator, estimator.to_keras(), history


def fit_learning_curve(config: TrainConfig, split_features, class_names) -> dict:
    """Stage "learning curve": the run's kind of head fitted again on growing shares of the training photos
    (their original view), each scored on the test photos (`evaluation.learning_curve`).

    Returns:
        the curve's dict, with "head": the kind of head fitted.
    """
    train, val, test = (split_features[name] for name in ("train", "val", "test"))

    def fit(x, y):
        estimator = heads.make_head(config)
        if isinstance(estimator, heads.DenseHead):  # stops early on the validation photos, as the run's does
            return estimator.fit(x, y, validation_data=(val.x[0], val.y))
        return estimator.fit(x, y)

    start, level = time.perf_counter(), heads.log.level
    heads.log.setLevel(logging.WARNING)  # not one line per fit
    try:
        curve = learning_curve(fit, (train.x[0], train.y), (test.x[0], test.y), class_names, seed=config.seed)
    finally:
        heads.log.setLevel(level)
    log.info("learning curve: %s", curve["statement"])
    return {**curve, "head": config.head, "seconds": round(time.perf_counter() - start, 1)}


def features_of_images(extractor, split, batch_size, views):
    """A split's features from another extractor (the fine-tuned one), computed from its photos."""
    outputs = run_on_files(compiled_forward(extractor), split.paths, extractor.input_shape[1], batch_size, views,
                           desc="features")
    if not outputs.ok.all():
        raise DataError("photos that decoded before fail now: " + "; ".join(
            f"{path}: {reason}" for path, reason in outputs.errors.items()))
    return SplitFeatures(outputs.values, split.y, split.paths)


def fine_tune(prepared: Prepared, head, split_features):
    """Stage "fine-tune": the top blocks of the backbone and the head, end to end, on images.

    Returns:
        (the folded fine-tuned extractor, its stage summary, its validation and test
        `SplitFeatures`, epoch rows); the head is trained in place.
    """
    from catsdogs.engine import finetune
    from catsdogs.models.heads import EpochHistory

    config = prepared.config
    train, val, test = (split_features[name] for name in ("train", "val", "test"))
    # Fine-tuned apart from the folded extractor: with its BatchNormalization layers kept, and frozen.
    tunable = backbones.build_feature_extractor(config.backbone, config.weights, config.image_size,
                                                config.precision, config.cache_dir, fold_batch_norm=False)
    start = time.perf_counter()
    settings = config.fine_tune_settings()
    if config.engine == "ray":  # the same fine-tuning, on several Ray workers; the weights come back here
        from catsdogs.engine.ray import finetune as distributed_training

        rows = distributed_training.fine_tune(tunable, head, (train.paths, train.y), (val.paths, val.y), settings,
                                              config.precision, config.cache_dir, config.ray_address,
                                              config.ray_workers)
    else:
        history = EpochHistory(settings.epochs, "fine-tune", steps=True)
        finetune.fine_tune(tunable, head, (train.paths, train.y), (val.paths, val.y), settings, [history])
        rows = history.rows
    seconds = time.perf_counter() - start
    tuned = fold_batch_normalization(tunable)
    views = views_for(config.tta)
    tuned_features = {name: features_of_images(tuned, split_features[name], config.extract_batch_size, views)
                      for name in ("val", "test")}
    summary = Evaluation.stage_summary((val.y, head_logits(head, tuned_features["val"])[0]),
                                       (test.y, head_logits(head, tuned_features["test"])[0]), prepared.class_names,
                                       seconds)
    return tuned, summary, tuned_features, [{"stage": "fine_tune", **row} for row in rows]


def calibrate(prepared: Prepared, val_logits, val_y):
    """Stage "calibrate": the temperature and the decision threshold, both on validation.

    Returns:
        (temperature, threshold); a multi-label run's: (a temperature per label, a threshold per label).
    """
    config, class_names = prepared.config, prepared.class_names
    if config.multi_label:  # a temperature and a threshold per label
        temperatures = multilabel.fit_temperatures(val_logits, val_y) if config.calibrate else None
        thresholds = multilabel.choose_thresholds(multilabel.label_probabilities(val_logits, class_names, temperatures),
                                                  val_y, class_names, prepared.target or ())
        return temperatures or [1.0] * len(class_names), thresholds
    temperature = calibration.fit_temperature(val_logits, val_y, class_names) if config.calibrate else 1.0
    threshold = 0.5
    if prepared.target:
        metric, class_index, value = prepared.target
        val_probs = calibration.probabilities(val_logits, class_names, temperature)
        threshold = calibration.threshold_for_target(val_probs, val_y, class_index, metric, value)
        log.info("threshold %.4f on p(%s) meets %s", threshold, class_names[1], config.target)
    return temperature, threshold


def fit_open_set(prepared: Prepared, split_features, oof_logits, temperature):
    """Stage "open set": the in-distribution score and its threshold, from the training photos alone.

    Args:
        oof_logits: out-of-fold head logits of the training photos (`openset.out_of_fold_logits`).

    Returns:
        an `openset.OpenSetFit`, or None when the run has no open-set score.
    """
    config, class_names = prepared.config, prepared.class_names
    if not prepared.open_set:
        return None
    train = split_features["train"]
    imagenet = openset.imagenet_head(config.backbone, class_names) if "imagenet" in prepared.open_set else None
    # Multi-label photos are grouped by their label set (folds, Mahalanobis' class means); their temperatures
    # are the labels', and only "msp" reads one, which a multi-label run refuses.
    groups, count = multilabel.label_set_ids(train.y) if config.multi_label else (train.y, len(class_names))
    return openset.fit_open_set(train.x[0], groups, oof_logits, count, prepared.open_set,
                                1.0 if config.multi_label else temperature, imagenet, config.open_set_keep, config.seed)


def bank_labels(y, rows, class_names, config):
    """The label of each photo of the kNN bank, as similar.csv names it: its class, or a multi-label
    photo's labels joined by the label separator."""
    if config.multi_label:
        return [multilabel.label_text(y[row], class_names, config.label_separator) for row in rows]
    return [class_names[y[row]] for row in rows]


def similar_test_photos(classifier, open_set, test):
    """The training photos most similar to each test photo, from the features extracted (the report shows
    them beside its mistakes), or None where the model keeps no kNN bank."""
    if classifier.training_photos is None:
        return None
    k = min(SIMILAR_SHOWN, len(classifier.training_photos))
    similarities, rows = (np.asarray(values) for values in open_set.layer.nearest(test.x[0], k))
    return [classifier.training_photos.similar(*photo) for photo in zip(rows, similarities)]


def review_rows(evaluation, train_and_val):
    """What `catsdogs review` lists: every photo's out-of-sample prediction and whether its label looks wrong.

    Training photos are judged by heads fitted without them (out of fold), validation and test
    photos by the head, which never saw them; cleanlab flags suspect labels within each split.

    Args:
        evaluation: the run's `Evaluation`: its test rows, and the temperature and threshold.
        train_and_val: ((SplitFeatures, logits of its first view), ...) of train and val, in that order.

    Returns:
        dicts: `report.prediction_rows`' columns and "split".
    """
    rows = []
    for name, (split, logits) in zip(("train", "val"), train_and_val):
        probabilities = evaluation.probabilities_of(logits, evaluation.class_names, evaluation.temperature)
        rows += [{**row, "split": name} for row in evaluation.rows_of(split.paths, split.y, probabilities)]
    return rows + [{**row, "split": "test"} for row in evaluation.rows]


def write(run: Run, prepared: Prepared) -> str:
    """Stage "write": the run directory, complete or not at all (`run_dir.staged_run`).

    Returns:
        the run directory.
    """
    config = run.config
    with run_dir.staged_run(config.runs_dir, config.name or f"{config.backbone}-{timestamp()}") as writer:
        run.evaluation.title = f"catsdogs run {os.path.basename(writer.final)}: {run.evaluation.title}"
        writer.write_json(run_dir.CONFIG, config.to_dict())
        writer.write_csv(run_dir.SPLITS, [{"path": os.path.relpath(s.path, config.data_dir), "split": split,
                                           "label": prepared.label_name(s)}
                                          for split, samples in prepared.splits.items() for s in samples],
                         run_dir.SPLITS_COLUMNS)
        writer.write_csv(run_dir.REVIEW, [{**row, "path": os.path.relpath(row["path"], config.data_dir)}
                                          for row in run.review])
        if run.history:
            writer.write_csv(run_dir.HISTORY, run.history, HISTORY_FIELDS)
        if run.classifier.training_photos is not None:  # which photo each row of the model's kNN bank is
            writer.write_csv(run_dir.SIMILAR, run.classifier.training_photos.rows(), run_dir.SIMILAR_COLUMNS)
        model_lib.save(run.model, writer.path(run_dir.MODEL))
        if run.classifier.runtime.backbone is not None:  # what predict and serve run the backbone with
            writer.copy(run.classifier.runtime.backbone.path, run_dir.BACKBONE)
        run.evaluation.save(writer.folder)
    log.info("run directory %s", writer.final)
    return writer.final


def train(data_dir=None, config: TrainConfig = None, **settings) -> Run:
    """Trains, evaluates and (unless `runs_dir=None`) saves a classifier.

    Args:
        data_dir: the dataset folder (Kaggle cat-and-dog layout, train/[val/]test/ folders of
            classes, or one folder of class folders).
        config: a whole `TrainConfig` instead of `data_dir` and keywords (or as the base they change).
        **settings: any `TrainConfig` field, e.g. backbone="efficientnet_lite0", head="dense",
            fine_tune=True, runs_dir=None (write nothing but the feature cache); labels= also takes
            a table in memory: a pandas DataFrame, or a list of (path, label) or (path, label, split)
            (the run's splits.csv then records it).

    Returns:
        a `Run`: `.metrics`, `.classifier`, `.evaluation`, `.run_dir`, `.config`, `.model`.
    """
    if isinstance(data_dir, TrainConfig):
        config, data_dir = data_dir, None
    table = settings.pop("labels") if labels.is_table(settings.get("labels")) else None
    if isinstance(settings.get("labels"), (str, os.PathLike)):
        settings["labels"] = (os.fspath(settings["labels"]),)
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown settings {unknown}; TrainConfig has {sorted(known)}")
    if data_dir is not None:
        settings["data_dir"] = os.fspath(data_dir)
    if config is None:
        if "data_dir" not in settings:
            raise ConfigError("train needs a data folder: catsdogs.train('path/to/photos', ...)")
        config = TrainConfig(**settings)
    else:
        config = dataclasses.replace(config, **settings)

    started = time.perf_counter()
    prepared = prepare(config, table)
    config, class_names = prepared.config, prepared.class_names
    extractor = backbones.build_feature_extractor(
        config.backbone, config.weights, config.image_size, keras_precision(config), config.cache_dir)
    split_features = keep_near_duplicates_together(prepared, extractor, extract(prepared, extractor))
    for line in prepared.scan.summary_lines():
        log.info("%s", line)
    val, test = split_features["val"], split_features["test"]
    extracted = time.perf_counter()
    estimator, head, history = fit_head(config, split_features)
    val_logits, test_logits = head_logits(head, val), head_logits(head, test)
    kind = MultiLabelEvaluation if config.multi_label else Evaluation
    # "extract": the scan and the features (from the cache or the backbone), with building the backbone.
    stages = {"extract": {"seconds": round(extracted - started, 1)},
              "head": {**kind.stage_summary((val.y, val_logits[0]), (test.y, test_logits[0]), class_names,
                                            time.perf_counter() - extracted), **estimator.summary()}, "kept": "head"}
    curve = fit_learning_curve(config, split_features, class_names) if config.learning_curve else None
    if config.fine_tune:
        stage1_head = head.get_weights()
        tuned, stages["fine_tune"], tuned_features, tuned_history = fine_tune(prepared, head, split_features)
        history += tuned_history
        if stages["fine_tune"]["val_loss"] < stages["head"]["val_loss"]:
            stages["kept"] = "fine_tune"
            extractor = tuned
            split_features = {**split_features, **tuned_features}
            # The open-set score and the review's out-of-fold probabilities come from the training photos' features.
            split_features["train"] = features_of_images(tuned, split_features["train"], config.extract_batch_size,
                                                         ("original",))
            val, test = split_features["val"], split_features["test"]
            val_logits, test_logits = head_logits(head, val), head_logits(head, test)
        else:  # never leave a model worse on validation than stage 1
            head.set_weights(stage1_head)
        log.info("validation loss: head %.4f, fine-tuned %.4f; keeping the %s model",
                 stages["head"]["val_loss"], stages["fine_tune"]["val_loss"], stages["kept"].replace("_", "-"))

    temperature, threshold = calibrate(prepared, val_logits[0], val.y)
    train = split_features["train"]
    oof_logits = (estimator.out_of_fold_logits(train.x[0], train.y, config.seed) if config.multi_label
                  else openset.out_of_fold_logits(train.x[0], train.y, estimator, config.seed))
    open_set = fit_open_set(prepared, split_features, oof_logits, temperature)
    if open_set:
        scores = {name: np.asarray(open_set.layer([split.x[0], logits[0]]))
                  for name, split, logits in (("val", val, val_logits), ("test", test, test_logits))}
    # Prediction sets (one class a photo) are calibrated on the validation photos as the model answers them
    # (`models.conformal`).
    sets = None if config.multi_label else conformal.calibration_record(
        calibration.probabilities(val_logits[0], class_names, temperature), val.y,
        scores["val"] if open_set else None, config.coverage or None)
    if config.coverage:  # a coverage the validation photos cannot promise fails here, before anything is written
        conformal.record_threshold(sets, config.coverage, open_set.threshold if open_set else None)
    model = model_lib.assemble(extractor, head, class_names, temperature, threshold,
                               open_set.layer if open_set else None, config.multi_label, config.label_separator, sets)
    # The classifier computes as extraction did: its backbone in ONNX Runtime where the features came from there.
    backbone = (onnx_backbone(extractor, config.precision, config.cache_dir, calibration_photos(prepared))
                if config.runtime == "onnx" else None)
    bank = open_set.bank_rows if open_set else None
    classifier = Classifier(KerasModel(model, backbone), training_photos_of(
        [train.paths[row] for row in bank], bank_labels(train.y, bank, class_names, config), config.data_dir)
        if bank is not None else None)
    if open_set:
        unknown = unknown_scores(classifier, config.unknown_data, config.extract_batch_size) \
            if config.unknown_data else None
    evaluation = kind.from_outputs(
        test.paths, test.y, class_names, logits=test_logits, temperature=temperature, threshold=threshold,
        validation=(val.y, val_logits), data_dir=config.data_dir, stages=stages,
        integrity=prepared.scan.to_json(), history=history,
        title=f"{config.backbone} at {config.image_size} px ({config.runtime}, {config.precision}), {config.head} head",
        config=config.to_dict(), classifier=classifier, coverage=config.coverage or None, learning_curve=curve,
        open_set=OpenSetResults(
            open_set.methods, open_set.threshold, open_set.keep, open_set.training_kept, scores["val"],
            scores["test"], *(unknown or (None, None))) if open_set else None,
        similar=similar_test_photos(classifier, open_set, test),
        **({"label_separator": config.label_separator} if config.multi_label else {}))
    review = review_rows(evaluation, ((train, oof_logits), (val, val_logits[0])))
    run = Run(config, classifier, evaluation, None, prepared.splits, history, review)
    if config.runs_dir is not None:
        run.run_dir = write(run, prepared)
        log_run(run.run_dir, config, run.metrics)  # when asked for; a failure only warns: the run is written
    return run
