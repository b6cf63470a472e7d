"""How the head's class weights were chosen: unbalanced copies of the shared data, heads with and without.

The training and validation photos of one class (cats) are thinned to 1:R of the other's, R
drawn from --ratios, several times with different photos (--repeats). Each head is trained,
calibrated and scored exactly as `catsdogs train` does (`training.fit_head`, `training.calibrate`,
`evaluation.compute_metrics`), on two test sets: the test folder as published (balanced), and
the test folder thinned to the same ratio (what the user's own test split would look like).
Features come from the cache (computed once, as `catsdogs train` computes them).

    python benchmarks/imbalance.py ../shared/data/cats-and-dogs --ratios 1,10,20,50 --repeats 3
"""

import argparse
import dataclasses
import json
import platform

import numpy as np

from catsdogs.config.train import TrainConfig
from catsdogs.engine.train import SplitFeatures, calibrate, extract, fit_head, head_logits, keras_precision, prepare
from catsdogs.evaluation.metrics import compute_metrics
from catsdogs.models import backbones, calibration
from catsdogs.utils import host


def thinned(split, minority, ratio, rng):
    """The split with the minority class's photos cut to 1/ratio of the other class's."""
    keep = split.y != minority
    others = int(keep.sum())
    chosen = rng.permutation(np.flatnonzero(split.y == minority))[:max(2, round(others / ratio))]
    keep[chosen] = True
    return SplitFeatures(split.x[:, keep], split.y[keep], [p for p, k in zip(split.paths, keep) if k])


def scores(metrics, minority_name):
    row = metrics["per_class"][minority_name]
    return {"accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"],
            "minority_recall": row["recall"], "minority_precision": row["precision"],
            "minority_pr_auc": row["pr_auc"], "log_loss": metrics["log_loss"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--ratios", default="1,10,20,50")
    parser.add_argument("--heads", default="linear,dense")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", help="write every row as JSON")
    args = parser.parse_args()

    prepared = prepare(TrainConfig(data_dir=args.data_dir, backbone=args.backbone, open_set="none", runs_dir=None))
    config = prepared.config
    extractor = backbones.build_feature_extractor(config.backbone, config.weights, config.image_size,
                                                  keras_precision(config), config.cache_dir)
    features = extract(prepared, extractor)
    names = prepared.class_names
    minority = 0  # cats
    print(f"# {host.cpu_name()}, {config.backbone} at {config.image_size} px ({config.runtime}, {config.precision})")
    print("| cats:dogs | head | class weights | test | accuracy | balanced accuracy | cat recall | cat precision "
          "| cat PR-AUC | log-loss |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for ratio in map(int, args.ratios.split(",")):
        for head in args.heads.split(","):
            for class_weight in ("none", "balanced"):
                runs = {"published": [], "thinned": []}
                for repeat in range(args.repeats):
                    rng = np.random.default_rng(repeat)
                    split = {"train": thinned(features["train"], minority, ratio, rng),
                             "val": thinned(features["val"], minority, ratio, rng), "test": features["test"]}
                    run_config = dataclasses.replace(config, head=head, class_weight=class_weight, seed=repeat)
                    _, keras_head, _ = fit_head(run_config, split)
                    temperature, threshold = calibrate(dataclasses.replace(prepared, config=run_config),
                                                       head_logits(keras_head, split["val"])[0], split["val"].y)
                    for test_name, test in (("published", split["test"]),
                                            ("thinned", thinned(split["test"], minority, ratio, rng))):
                        probabilities = calibration.probabilities(head_logits(keras_head, test)[0], names, temperature)
                        runs[test_name].append(scores(compute_metrics(test.y, probabilities, names, threshold),
                                                      names[minority]))
                for test_name, measured in runs.items():
                    mean = {key: float(np.mean([m[key] for m in measured])) for key in measured[0]}
                    rows.append({"ratio": ratio, "head": head, "class_weight": class_weight, "test": test_name,
                                 "repeats": args.repeats, **mean})
                    print(f"| 1:{ratio} | {head} | {class_weight} | {test_name} | {mean['accuracy']:.4f} | "
                          f"{mean['balanced_accuracy']:.4f} | {mean['minority_recall']:.4f} | "
                          f"{mean['minority_precision']:.4f} | {mean['minority_pr_auc']:.4f} | {mean['log_loss']:.4f} |",
                          flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"cpu": host.cpu_name(), "machine": platform.machine(), "backbone": config.backbone,
                       "runtime": config.runtime, "precision": config.precision, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
