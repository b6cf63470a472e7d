"""How the default head and input size were chosen: cross-validation on the training images only.

For each input size, features of the training folder come from the cache (or are computed),
then each head is trained exactly as `catsdogs train` trains it, on 4/5 of the training images,
and scored on the other 1/5, five times over (stratified folds). The test folder is never read.

    python benchmarks/head_choice.py ../shared/data/cats-and-dogs --sizes 224,260,300,340,380
"""

import argparse

import numpy as np
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold, train_test_split

from catsdogs.config.choices import INFERENCE_BATCH_SIZE, default_cache_dir
from catsdogs.config.train import TrainConfig
from catsdogs.data import dataset as data
from catsdogs.data.scan import file_hash
from catsdogs.inference.features import extractor_features
from catsdogs.models import backbones, heads
from catsdogs.models.precision import resolve_precision


def training_features(data_dir, backbone, size):
    dataset = data.discover(data_dir)
    samples = dataset.splits.get("train") or dataset.splits["all"]
    paths = [s.path for s in samples]
    hashes = [file_hash(p) for p in paths]
    precision = resolve_precision(TrainConfig(data_dir="").precision)  # as `catsdogs train` computes them
    extractor = backbones.build_feature_extractor(backbone, image_size=size, precision=precision)
    outputs = extractor_features(extractor, precision, paths, hashes, default_cache_dir(),
                                          INFERENCE_BATCH_SIZE)
    labels = np.array([s.label for s in samples])
    return outputs.values[0, outputs.ok], labels[outputs.ok], dataset.class_names


def cross_validated_probabilities(x, y, class_names, head_kind, seed=0):
    probabilities = np.zeros((len(y), len(class_names)))
    for train_index, test_index in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
        head = heads.make_head(TrainConfig(data_dir="", head=head_kind, seed=seed))  # as `catsdogs train` makes it
        if head_kind == "linear":
            head.fit(x[train_index], y[train_index])
        else:  # early stopping needs its own validation images, taken from the training fold
            fit_index, stop_index = train_test_split(train_index, test_size=0.2, stratify=y[train_index],
                                                     random_state=seed)
            head.fit(x[fit_index], y[fit_index], validation_data=(x[stop_index], y[stop_index]))
        probabilities[test_index] = head.predict_proba(x[test_index])
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
