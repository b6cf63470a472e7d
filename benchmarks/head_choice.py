"""How the default head and input size were chosen: cross-validation on the training images only.

For each input size, features of the training folder come from the cache (or are computed),
then each head is trained exactly as `catsdogs train` trains it, on 4/5 of the training images,
and scored on the other 1/5, five times over (stratified folds). The test folder is never read.

    python benchmarks/head_choice.py ../shared/data/cats-and-dogs --sizes 224,260,300,340,380
"""

import argparse
import hashlib
import tempfile

import keras
import numpy as np
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold, train_test_split

from catsdogs import backbones, calibration, data, features
from catsdogs import model as model_lib
from catsdogs.config import INFERENCE_BATCH_SIZE, TrainConfig, default_cache_dir
from catsdogs.train import SplitFeatures, fit_dense_head, fit_linear_head, logits_from_features


def training_features(data_dir, backbone, size):
    dataset = data.discover(data_dir)
    samples = dataset.splits.get("train") or dataset.splits["all"]
    paths = [s.path for s in samples]
    hashes = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]
    precision = backbones.resolve_precision(TrainConfig(data_dir="").precision)  # as `catsdogs train` computes them
    extractor = backbones.build_feature_extractor(backbone, image_size=size, precision=precision)
    cache = features.FeatureCache(default_cache_dir(), features.cache_key(
        backbone, size, precision, backbones.weights_fingerprint(extractor)))
    matrix, _ = features.cached_features(extractor, paths, hashes, cache, batch_size=INFERENCE_BATCH_SIZE)
    return matrix[0], np.array([s.label for s in samples]), dataset.class_names


def cross_validated_probabilities(x, y, class_names, head_kind, seed=0):
    config = TrainConfig(data_dir="", head=head_kind)
    probabilities = np.zeros((len(y), len(class_names)))
    for train_index, test_index in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
        keras.utils.set_random_seed(seed)
        head = model_lib.build_head(x.shape[1], len(class_names), head_kind)
        if head_kind == "linear":
            fit_linear_head(head, SplitFeatures(x[None, train_index], y[train_index], []), seed)
        else:  # early stopping needs its own validation images, taken from the training fold
            fit_index, stop_index = train_test_split(train_index, test_size=0.2, stratify=y[train_index],
                                                     random_state=seed)
            with tempfile.NamedTemporaryFile(suffix=".csv") as history:
                fit_dense_head(head, SplitFeatures(x[None, fit_index], y[fit_index], []),
                               SplitFeatures(x[None, stop_index], y[stop_index], []), config, history.name)
        held_out = SplitFeatures(x[None, test_index], y[test_index], [])
        probabilities[test_index] = calibration.probabilities(logits_from_features(head, held_out)[0], class_names)
    return probabilities


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--sizes", default="224,260,300,340,380")
    parser.add_argument("--heads", default="linear,dense")
    args = parser.parse_args()
    print("| input size | head | cross-validated log-loss | errors |")
    print("|---|---|---|---|")
    for size in map(int, args.sizes.split(",")):
        x, y, class_names = training_features(args.data_dir, args.backbone, size)
        for head_kind in args.heads.split(","):
            probabilities = cross_validated_probabilities(x, y, class_names, head_kind)
            errors = int((probabilities.argmax(axis=1) != y).sum())
            print(f"| {size} | {head_kind} | {log_loss(y, probabilities):.4f} | {errors} / {len(y)} |", flush=True)


if __name__ == "__main__":
    main()
