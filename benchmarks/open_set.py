"""Open-set rejection, measured: every in-distribution score on known test photos against unknown ones.

The scores are fitted on the training photos only (out-of-fold references, threshold keeping 99%
of them, `catsdogs.models.openset`). The unknown photos (`../shared/data/not-cats-or-dogs`, 631 photos
in 7 folders) only measure: AUROC against the 2000 known test photos, the false-accept rate when
the threshold keeps 99% and 95% of the known test photos (thresholds set on the test photos, for
comparing methods), and, at the threshold a run really uses (from the training photos), the
share of known test photos kept and of unknown photos accepted, per folder.

    python benchmarks/open_set.py --data ../shared/data/cats-and-dogs --unknown ../shared/data/not-cats-or-dogs
"""

import argparse
import json
import os
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from catsdogs.config.train import TrainConfig
from catsdogs.data import dataset as data
from catsdogs.data.scan import file_hash
from catsdogs.engine.train import extract, prepare
from catsdogs.inference.features import extractor_features
from catsdogs.models import backbones, calibration, openset
from catsdogs.models.heads import LinearHead

CANDIDATES = ("msp", "energy", "mahalanobis", "knn", "imagenet", "knn+imagenet", "mahalanobis+imagenet",
              "knn+mahalanobis")


def unknown_features(extractor, config, folder):
    """Features of every photo below `folder`, by subfolder."""
    paths = data.list_files(folder)
    paths = [p for p in paths if not p.endswith(".md")]
    hashes = [file_hash(p) for p in paths]
    outputs = extractor_features(extractor, config.precision, paths, hashes, config.cache_dir,
                                          config.extract_batch_size)
    groups = [os.path.relpath(p, folder).split(os.sep)[0] for p in paths]
    return outputs.values[0, outputs.ok], np.array(groups)[outputs.ok]


def false_accepts_at(known, unknown, keep):
    threshold = np.quantile(known, 1 - keep, method="lower")
    return float((unknown >= threshold).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cats-and-dogs")
    parser.add_argument("--unknown", default="../shared/data/not-cats-or-dogs")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=0)
    parser.add_argument("--methods", default=",".join(CANDIDATES))
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args()

    prepared = prepare(TrainConfig(data_dir=args.data, backbone=args.backbone, image_size=args.image_size))
    config = prepared.config
    extractor = backbones.build_feature_extractor(config.backbone, config.weights, config.image_size,
                                                  config.precision, config.cache_dir)
    split = extract(prepared, extractor)
    unknown, groups = unknown_features(extractor, config, args.unknown)
    train, val, test = split["train"], split["val"], split["test"]
    head = LinearHead(seed=config.seed).fit(train.x[0], train.y)
    keras_head = head.to_keras()
    temperature = calibration.fit_temperature(keras_head.predict(val.x[0], verbose=0), val.y, prepared.class_names)
    oof_logits = openset.out_of_fold_logits(train.x[0], train.y, head, config.seed)
    imagenet = openset.imagenet_head(config.backbone, prepared.class_names)

    results = {"backbone": config.backbone, "image_size": config.image_size, "precision": config.precision,
               "train": len(train.y), "val": len(val.y), "test": len(test.y), "unknown": len(unknown),
               "unknown_folders": {g: int((groups == g).sum()) for g in sorted(set(groups))}, "methods": {}}
    print("| score | AUROC | false accepts at 99% / 95% of known test kept | with the run's threshold: "
          "test kept | validation kept | unknown accepted | fit s | ms/1000 photos |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.methods.split(","):
        methods = tuple(name.split("+"))
        start = time.perf_counter()
        fit = openset.fit_open_set(train.x[0], train.y, oof_logits, len(prepared.class_names), methods,
                                   temperature, imagenet, seed=config.seed)
        fit_seconds = time.perf_counter() - start

        def score(x):
            return np.asarray(fit.layer([x, keras_head.predict(x, verbose=0)]))

        known, held, strange = score(test.x[0]), score(val.x[0]), score(unknown)
        start = time.perf_counter()
        score(test.x[0][:1000])
        milliseconds = (time.perf_counter() - start) * 1000
        accepted = strange >= fit.threshold
        row = {
            "auroc": float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(strange))], np.r_[known, strange])),
            "false_accepts_at_99": false_accepts_at(known, strange, 0.99),
            "false_accepts_at_95": false_accepts_at(known, strange, 0.95),
            "threshold": fit.threshold, "training_kept": fit.training_kept,
            "test_kept": float((known >= fit.threshold).mean()), "val_kept": float((held >= fit.threshold).mean()),
            "unknown_accepted": float(accepted.mean()),
            "unknown_accepted_per_folder": {g: float(accepted[groups == g].mean()) for g in sorted(set(groups))},
            "fit_seconds": fit_seconds, "ms_per_1000": milliseconds,
        }
        results["methods"][name] = row
        print(f"| {name} | {row['auroc']:.4f} | {row['false_accepts_at_99']:.1%} / {row['false_accepts_at_95']:.1%} "
              f"| {row['test_kept']:.2%} | {row['val_kept']:.2%} | {row['unknown_accepted']:.1%} "
              f"| {fit_seconds:.1f} | {milliseconds:.0f} |", flush=True)
    print("\nunknown photos accepted per folder, with the run's threshold:")
    folders = sorted(results["unknown_folders"])
    print("| score | " + " | ".join(f"{f} ({results['unknown_folders'][f]})" for f in folders) + " |")
    print("|---|" + "---:|" * len(folders))
    for name, row in results["methods"].items():
        print(f"| {name} | " + " | ".join(f"{row['unknown_accepted_per_folder'][f]:.1%}" for f in folders) + " |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
