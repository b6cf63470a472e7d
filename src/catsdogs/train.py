"""`catsdogs train`: features once from the frozen backbone, a head trained in seconds, then
optionally fine-tuning, calibration and a decision threshold, all chosen on validation."""

import csv
import dataclasses
import datetime
import logging
import os
import time

import keras
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from catsdogs import backbones, calibration, data, evaluate, features, finetune
from catsdogs import model as model_lib
from catsdogs import report

log = logging.getLogger(__name__)


class EpochProgress(keras.callbacks.Callback):
    """One progress bar over epochs instead of Keras' bar per epoch."""

    def __init__(self, max_epochs, desc):
        super().__init__()
        self.bar = tqdm(total=max_epochs, desc=desc, unit="epoch", leave=False, disable=None)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.set_postfix(val_loss=f"{logs['val_loss']:.4f}", val_acc=f"{logs['val_accuracy']:.4f}")
        self.bar.update()

    def on_train_end(self, logs=None):
        self.bar.close()


class HistoryWriter(keras.callbacks.Callback):
    """Appends one row per epoch to history.csv as it ends, tagged with the training stage."""

    FIELDS = ("stage", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")

    def __init__(self, path, stage):
        super().__init__()
        self.path, self.stage = path, stage
        if not os.path.exists(path):
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"stage": self.stage, "epoch": epoch + 1, "seconds": round(time.perf_counter() - self.start, 2), **logs}
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.FIELDS])


@dataclasses.dataclass
class SplitFeatures:
    x: np.ndarray  # (views, images, feature_dim)
    y: np.ndarray
    paths: list


def new_run_dir(runs_dir, name):
    """Creates runs/<name>, adding -2, -3... rather than overwriting an earlier run."""
    path = os.path.join(runs_dir, name)
    suffix = 1
    while os.path.exists(path):
        suffix += 1
        path = os.path.join(runs_dir, f"{name}-{suffix}")
    os.makedirs(path)
    return path


def read_exclusions(path, splits):
    """Drops the training and validation images listed in a file (one path or file name a line).

    Test images are never dropped: excluding them would only flatter the score.

    Returns:
        the splits without the excluded images.
    """
    with open(path) as f:
        wanted = {line.strip() for line in f if line.strip() and not line.startswith("#")}

    def listed(sample):
        return any(sample.path == w or os.path.abspath(sample.path) == os.path.abspath(w)
                   or sample.path.endswith(os.sep + w) for w in wanted)

    kept = {name: [s for s in split if name == "test" or not listed(s)] for name, split in splits.items()}
    dropped = sum(len(splits[n]) - len(kept[n]) for n in splits)
    in_test = sum(listed(s) for s in splits["test"])
    log.info("excluded %d training/validation images listed in %s%s", dropped, path,
             f"; {in_test} listed test images were kept (test images are never excluded)" if in_test else "")
    return kept


def extract_split_features(extractor, splits, scan, cache, batch_size, eval_views):
    """Features of every split, from the cache or the backbone; undecodable files join the scan's problems.

    Training images get the original view only; validation and test images get `eval_views`.

    Returns:
        dict split -> SplitFeatures of the images that decoded.
    """
    result = {}
    for names, views in ((("train",), ("original",)), (("val", "test"), eval_views)):
        samples = [s for name in names for s in splits[name]]
        paths = [s.path for s in samples]
        matrix, errors = features.cached_features(
            extractor, paths, [scan.hashes[p] for p in paths], cache, batch_size, views)
        for path, reason in errors.items():
            scan.add_problem(path, reason)
        start = 0
        for name in names:
            rows = matrix[:, start:start + len(splits[name])]
            start += len(splits[name])
            keep = ~np.isnan(rows).any(axis=(0, 2))
            result[name] = SplitFeatures(rows[:, keep], np.array([s.label for s in splits[name]])[keep],
                                         [s.path for s, k in zip(splits[name], keep) if k])
    return result


# Inverse L2 strengths tried for the linear head; its features are standardised, so one grid fits all.
LINEAR_HEAD_CS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def fit_linear_head(head, train, seed):
    """Stage 1 for the linear head: L2-regularised logistic regression on standardised features.

    The L2 strength is chosen by stratified 5-fold cross-validation on the training images
    (scikit-learn, log-loss, the scaler fitted inside each fold). Standardising is folded into
    the Keras layer, w.(x - mean)/scale + b = (w/scale).x + (b - w.mean/scale), so the head stays
    one Dense layer of plain weights that every export format carries.

    Returns:
        dict with the chosen inverse strength "C".
    """
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    folds = min(5, int(np.bincount(train.y).min()))
    # One BLAS thread: beside TensorFlow's thread pools, BLAS's own threads oversubscribe the cores
    # and the fit ran 7x slower (measured on 2 cores with Lite0's features: 6.9 s against 1.0 s).
    with threadpool_limits(limits=1, user_api="blas"):
        if folds >= 2:
            search = GridSearchCV(pipeline, {"logisticregression__C": LINEAR_HEAD_CS}, scoring="neg_log_loss",
                                  cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).fit(train.x[0], train.y)
            fitted, strength = search.best_estimator_, search.best_params_["logisticregression__C"]
        else:  # too few images of a class to cross-validate
            strength = 0.1
            fitted = pipeline.set_params(logisticregression__C=strength).fit(train.x[0], train.y)
    scaler, classifier = fitted.named_steps["standardscaler"], fitted.named_steps["logisticregression"]
    kernel = (classifier.coef_ / scaler.scale_).T
    head.get_layer("logits").set_weights([kernel, classifier.intercept_ - scaler.mean_ @ kernel])
    log.info("linear head: inverse L2 strength C=%g (chosen by %d-fold cross-validation)", strength, folds)
    return {"C": strength}


def fit_dense_head(head, train, val, config, history_path):
    """Stage 1 for the dense head: Adam on cached features, early stopping on validation loss."""
    binary = head.output_shape[-1] == 1
    model_lib.compile_classifier(head, binary, config.learning_rate)

    def targets(split):
        return split.y.astype("float32")[:, None] if binary else split.y

    history = head.fit(
        train.x[0], targets(train), validation_data=(val.x[0], targets(val)),
        epochs=config.max_epochs, batch_size=config.batch_size, verbose=0, shuffle=True,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
            HistoryWriter(history_path, "head"),
            EpochProgress(config.max_epochs, "head"),
        ],
    )
    return {"epochs": len(history.epoch)}


def logits_from_features(head, split):
    return np.stack([head.predict(x, batch_size=1024, verbose=0) for x in split.x])


def logits_from_images(extractor, head, paths, batch_size, views):
    """Logits of the current backbone and head on image files: (views, images, logits)."""
    size = extractor.input_shape[1]
    image = keras.Input((size, size, 3))
    network = keras.Model(image, head(extractor(image, training=False)))
    result = np.full((len(views), len(paths), head.output_shape[-1]), np.nan, np.float32)
    for indices, outputs in features.run_on_files(network, paths, size, batch_size, {}, views, desc="logits"):
        result[:, indices] = outputs
    return result


def parse_target(target, class_names):
    """"precision:dogs=0.99" -> ("precision", 1, 0.99)."""
    try:
        metric, rest = target.split(":", 1)
        name, value = rest.rsplit("=", 1)
        if metric not in ("precision", "recall") or name not in class_names:
            raise ValueError
        return metric, class_names.index(name), float(value)
    except ValueError:
        raise ValueError(f"target {target!r}: expected precision:CLASS=VALUE or recall:CLASS=VALUE "
                         f"with CLASS one of {class_names}") from None


def view_probabilities(logits, class_names, temperature):
    """Probabilities per view, averaged over the views (test-time augmentation when several)."""
    return np.mean([calibration.probabilities(v, class_names, temperature) for v in logits], axis=0)


def train(config):
    """Trains, evaluates and saves a classifier; everything goes into a new run directory.

    Args:
        config: a `TrainConfig`.

    Returns:
        (run directory, test metrics dict).
    """
    # The run's config.json says what was used: "auto" and 0 (the backbone's size) are resolved.
    config = dataclasses.replace(config, precision=backbones.resolve_precision(config.precision),
                                 image_size=config.image_size or backbones.get_backbone(config.backbone).default_image_size)
    dataset = data.discover(config.data_dir)
    class_names = dataset.class_names
    log.info("%s: classes %s, %s", config.data_dir, class_names,
             ", ".join(f"{len(v)} {k} files" for k, v in dataset.splits.items()))
    if config.target and len(class_names) != 2:
        raise ValueError("--target needs exactly two classes")
    scan = data.scan(dataset)
    splits = data.make_splits(dataset, scan, config.val_fraction, config.test_fraction, config.seed)
    if config.exclude:
        splits = read_exclusions(config.exclude, splits)

    name = config.name or f"{config.backbone}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    run_dir = new_run_dir(config.runs_dir, name)
    log.info("run directory %s", run_dir)
    config.save(os.path.join(run_dir, "config.json"))
    with open(os.path.join(run_dir, "splits.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split", "label"])
        writer.writerows((s.path, split, class_names[s.label]) for split, ss in splits.items() for s in ss)

    extractor = backbones.build_feature_extractor(
        config.backbone, config.weights, config.image_size, config.precision, config.cache_dir)
    cache = features.FeatureCache(config.cache_dir, features.cache_key(
        config.backbone, extractor.input_shape[1], config.precision, backbones.weights_fingerprint(extractor)))
    views = features.TTA_VIEWS if config.tta else ("original",)
    split_features = extract_split_features(extractor, splits, scan, cache, config.extract_batch_size, views)
    for line in scan.summary_lines():
        log.info("%s", line)
    val, test = split_features["val"], split_features["test"]

    keras.utils.set_random_seed(config.seed)  # here: building the backbone may or may not draw numbers
    head = model_lib.build_head(extractor.output_shape[-1], len(class_names), config.head,
                                config.hidden_units, config.dropout, config.l2)
    history_path = os.path.join(run_dir, "history.csv")
    start = time.perf_counter()
    if config.head == "linear":
        fitted = fit_linear_head(head, split_features["train"], config.seed)
    else:
        fitted = fit_dense_head(head, split_features["train"], val, config, history_path)
    val_logits, test_logits = logits_from_features(head, val), logits_from_features(head, test)
    stages = {"head": {**evaluate.stage_summary((val.y, val_logits[0]), (test.y, test_logits[0]), class_names,
                                                time.perf_counter() - start), **fitted}, "kept": "head"}

    if config.fine_tune:
        # Fine-tuned apart from the folded extractor: with its BatchNormalization layers kept, and frozen.
        tunable = backbones.build_feature_extractor(config.backbone, config.weights, extractor.input_shape[1],
                                                    config.precision, config.cache_dir, fold_batch_norm=False)
        stage1_head = head.get_weights()
        start = time.perf_counter()
        finetune.fine_tune(
            tunable, head, (split_features["train"].paths, split_features["train"].y), (val.paths, val.y),
            config, [HistoryWriter(history_path, "fine_tune"), EpochProgress(config.fine_tune_epochs, "fine-tune")])
        seconds = time.perf_counter() - start
        tuned = backbones.fold_batch_normalization(tunable)
        tuned_val_logits = logits_from_images(tuned, head, val.paths, config.extract_batch_size, views)
        tuned_test_logits = logits_from_images(tuned, head, test.paths, config.extract_batch_size, views)
        stages["fine_tune"] = evaluate.stage_summary(
            (val.y, tuned_val_logits[0]), (test.y, tuned_test_logits[0]), class_names, seconds)
        if stages["fine_tune"]["val_loss"] < stages["head"]["val_loss"]:
            stages["kept"] = "fine_tune"
            extractor, val_logits, test_logits = tuned, tuned_val_logits, tuned_test_logits
        else:  # never leave a model worse on validation than stage 1
            head.set_weights(stage1_head)
        log.info("validation loss: head %.4f, fine-tuned %.4f; keeping the %s model",
                 stages["head"]["val_loss"], stages["fine_tune"]["val_loss"], stages["kept"].replace("_", "-"))

    temperature = calibration.fit_temperature(val_logits[0], val.y, class_names) if config.calibrate else 1.0
    val_probs = calibration.probabilities(val_logits[0], class_names, temperature)
    threshold = 0.5
    if config.target:
        metric, class_index, value = parse_target(config.target, class_names)
        threshold = calibration.threshold_for_target(val_probs, val.y, class_index, metric, value)
        log.info("threshold %.4f on p(%s) meets %s", threshold, class_names[1], config.target)

    model = model_lib.assemble(extractor, head, class_names, temperature, threshold)
    model_lib.save(model, os.path.join(run_dir, model_lib.MODEL_FILE))

    if os.path.exists(history_path):  # the linear head is fitted in one go, without epochs
        report.plot_curves(report.read_csv(history_path), os.path.join(run_dir, "curves.png"))
    results = evaluate.Results(
        paths=test.paths, y_true=test.y, class_names=class_names, threshold=threshold,
        probabilities=calibration.probabilities(test_logits[0], class_names, temperature),
        uncalibrated=calibration.probabilities(test_logits[0], class_names),
        tta_probabilities=view_probabilities(test_logits, class_names, temperature) if config.tta else None,
        validation=evaluate.compute_metrics(val.y, val_probs, class_names, threshold),
        validation_tta=(evaluate.compute_metrics(val.y, view_probabilities(val_logits, class_names, temperature),
                                                 class_names, threshold) if config.tta else None),
        temperature=temperature, stages=stages)
    metrics = evaluate.write_evaluation(
        run_dir, results, scan.to_json(),
        f"catsdogs run {os.path.basename(run_dir)}: {config.backbone} at {config.image_size} px "
        f"({config.precision}), {config.head} head", config.to_dict(),
        model=model)
    return run_dir, metrics
