"""`catsdogs train`: features once from the frozen backbone, then a head trained in seconds."""

import csv
import datetime
import logging
import os

import keras
import numpy as np
from tqdm.auto import tqdm

from catsdogs import backbones, data, evaluate, features
from catsdogs import model as model_lib
from catsdogs import report
from catsdogs.layers import ClassProbabilities

log = logging.getLogger(__name__)


class EpochProgress(keras.callbacks.Callback):
    """One progress bar over epochs instead of Keras' bar per epoch."""

    def __init__(self, max_epochs):
        super().__init__()
        self.bar = tqdm(total=max_epochs, desc="head", unit="epoch", leave=False, disable=None)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.set_postfix(val_loss=f"{logs['val_loss']:.4f}", val_acc=f"{logs['val_accuracy']:.4f}")
        self.bar.update()

    def on_train_end(self, logs=None):
        self.bar.close()


def new_run_dir(runs_dir, name):
    """Creates runs/<name>, adding -2, -3... rather than overwriting an earlier run."""
    path = os.path.join(runs_dir, name)
    suffix = 1
    while os.path.exists(path):
        suffix += 1
        path = os.path.join(runs_dir, f"{name}-{suffix}")
    os.makedirs(path)
    return path


def extract_split_features(extractor, splits, scan, cache, batch_size):
    """Features of every split from the cache or the backbone; undecodable files join the scan's problems.

    Returns:
        dict split -> (features, labels, paths) of the images that decoded.
    """
    samples = [s for split in splits.values() for s in split]
    paths = [s.path for s in samples]
    matrix, errors = features.cached_features(
        extractor, paths, [scan.hashes[p] for p in paths], cache, batch_size)
    for path, reason in errors.items():
        scan.add_problem(path, reason)
    result, start = {}, 0
    for name, split in splits.items():
        rows = matrix[start:start + len(split)]
        start += len(split)
        keep = ~np.isnan(rows).any(axis=1)
        result[name] = (rows[keep], np.array([s.label for s in split])[keep],
                        [s.path for s, k in zip(split, keep) if k])
    return result


def fit_head(head, train, val, config, history_path):
    """Trains the head on cached features with early stopping on validation loss, best weights kept."""
    binary = head.output_shape[-1] == 1
    head.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True) if binary
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy") if binary
                 else keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    (train_x, train_y, _), (val_x, val_y, _) = train, val
    head.fit(
        train_x, train_y.astype("float32")[:, None] if binary else train_y,
        validation_data=(val_x, val_y.astype("float32")[:, None] if binary else val_y),
        epochs=config.max_epochs, batch_size=config.batch_size, verbose=0, shuffle=True,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
            keras.callbacks.CSVLogger(history_path),
            EpochProgress(config.max_epochs),
        ],
    )


def head_probabilities(head, x, class_names):
    """Class probabilities of the head on features, through the model's own output layer."""
    logits = head.predict(x, batch_size=1024, verbose=0)
    return keras.ops.convert_to_numpy(ClassProbabilities(class_names)(logits))


def train(config):
    """Trains, evaluates and saves a classifier; everything goes into a new run directory.

    Args:
        config: a `TrainConfig`.

    Returns:
        (run directory, test metrics dict).
    """
    dataset = data.discover(config.data_dir)
    log.info("%s: classes %s, %s", config.data_dir, dataset.class_names,
             ", ".join(f"{len(v)} {k} files" for k, v in dataset.splits.items()))
    scan = data.scan(dataset)
    splits = data.make_splits(dataset, scan, config.val_fraction, config.test_fraction, config.seed)

    name = config.name or f"{config.backbone}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    run_dir = new_run_dir(config.runs_dir, name)
    log.info("run directory %s", run_dir)
    config.save(os.path.join(run_dir, "config.json"))
    with open(os.path.join(run_dir, "splits.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split", "label"])
        writer.writerows((s.path, split, dataset.class_names[s.label]) for split, ss in splits.items() for s in ss)

    extractor = backbones.build_feature_extractor(
        config.backbone, config.weights, config.image_size, config.precision, config.cache_dir)
    image_size = extractor.input_shape[1]
    cache = features.FeatureCache(config.cache_dir, features.cache_key(
        config.backbone, image_size, config.precision, backbones.weights_fingerprint(extractor)))
    split_features = extract_split_features(extractor, splits, scan, cache, config.extract_batch_size)
    for line in scan.summary_lines():
        log.info("%s", line)

    keras.utils.set_random_seed(config.seed)  # here: building the backbone may or may not draw numbers
    head = model_lib.build_head(extractor.output_shape[-1], len(dataset.class_names), config.head,
                                config.hidden_units, config.dropout, config.l2)
    history_path = os.path.join(run_dir, "history.csv")
    fit_head(head, split_features["train"], split_features["val"], config, history_path)

    model = model_lib.assemble(extractor, head, dataset.class_names)
    model_lib.save(model, os.path.join(run_dir, model_lib.MODEL_FILE))

    history = report.read_csv(history_path)
    report.plot_curves(history, os.path.join(run_dir, "curves.png"))
    test_x, test_y, test_paths = split_features["test"]
    metrics = evaluate.write_evaluation(
        run_dir, test_paths, test_y, head_probabilities(head, test_x, dataset.class_names),
        dataset.class_names, 0.5, scan.to_json(),
        f"catsdogs run {os.path.basename(run_dir)}: {config.backbone}, {config.head} head", config.to_dict(),
        model=model)
    return run_dir, metrics
