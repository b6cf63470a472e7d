"""Near-duplicates: how many planted ones are found, which real pairs are reported, and the cost.

A copy of the data is made in a temporary folder (symlinks to every photo, nothing copied), and near-
duplicates of randomly chosen training photos are planted in its test folder, `--per-kind` of each
kind (re-encoded, resized, cropped a little, mirrored, lightly recoloured; tests/planted.py). Then:

1. the integrity scan, without and with the perceptual hash (its cost);
2. features as `catsdogs train` extracts them (from the cache where present) and the feature stage
   (`engine.train.keep_near_duplicates_together`): planted copies found by each signal and in all,
   per kind; the pairs among the real photos (none planted), to be checked by eye: `--figure`
   draws them side by side;
3. the same photos in one folder of class folders, so that catsdogs makes every split: each group
   must end on one side.

    python benchmarks/near_duplicates.py ../shared/data/cats-and-dogs --backbone efficientnet_lite0 \\
        --output benchmarks/results/near-duplicates.json --figure /tmp/near-duplicates-real.png
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from catsdogs.config.train import TrainConfig
from catsdogs.data import dataset as data
from catsdogs.data.scan import scan_dataset
from catsdogs.engine import train as training
from catsdogs.evaluation import figures
from catsdogs.models import backbones
from planted import KINDS, plant

PLANTED_PREFIX = "planted-"


def planted_copy(source, root, per_kind, seed):
    """Symlinks every photo of `source` (training_set/, test_set/) under `root` and plants near-duplicates
    of training photos in the test folder.

    Returns:
        {planted path: (kind, the training photo it copies, as linked under root)}.
    """
    rng = np.random.default_rng(seed)
    for split in ("training_set", "test_set"):
        for cls_folder in sorted((source / split).iterdir()):
            (root / split / cls_folder.name).mkdir(parents=True)
            for photo in sorted(cls_folder.iterdir()):
                (root / split / cls_folder.name / photo.name).symlink_to(photo.resolve())
    classes = sorted(p.name for p in (source / "training_set").iterdir())
    planted = {}
    for kind in KINDS:
        for number in range(per_kind):
            cls = classes[number % len(classes)]
            photos = sorted((root / "training_set" / cls).iterdir())
            original = photos[rng.integers(len(photos))]
            while any(o == str(original) for _, o in planted.values()):
                original = photos[rng.integers(len(photos))]
            copy = root / "test_set" / cls / f"{PLANTED_PREFIX}{kind}-{original.name}"
            plant(original, kind, copy, rng)
            planted[str(copy)] = (kind, str(original))
    return planted


def group_of(scan):
    return {path: number for number, group in enumerate(scan.near_duplicate_groups()) for path in group}


def found_per_kind(scan, planted):
    """Per kind: how many planted copies share a near-duplicate group with the photo they copy."""
    groups = group_of(scan)
    found = {kind: 0 for kind in KINDS}
    for copy, (kind, original) in planted.items():
        found[kind] += copy in groups and groups[copy] == groups.get(original)
    return found


def closeness(scan, planted):
    """Per kind: the largest hash distance and the least feature similarity and colour overlap of the pairs
    that link a planted copy to the photo it copies."""
    worst = {kind: {} for kind in KINDS}
    for pair in scan.near_pairs:
        for copy, (kind, original) in planted.items():
            if set(pair["paths"]) == {copy, original}:
                for key, pick in (("distance", max), ("similarity", min), ("colour_overlap", min)):
                    if key in pair:
                        worst[kind][key] = pick(worst[kind].get(key, pair[key]), pair[key])
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=pathlib.Path, help="a Kaggle-layout folder (training_set/, test_set/)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--per-kind", type=int, default=60, help="planted near-duplicates of each kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--figure", help="draw the pairs found among the real photos, and those of planted copies with other photos, here (PNG)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder) / "data"
        planted = planted_copy(args.data, root, args.per_kind, args.seed)
        dataset = data.discover(root)
        photos = sum(len(samples) for samples in dataset.splits.values())
        start = time.perf_counter()
        scan_dataset(dataset, near=False)
        scan_plain = time.perf_counter() - start
        start = time.perf_counter()
        scan = scan_dataset(dataset)
        scan_hash = time.perf_counter() - start
        by_hash = found_per_kind(scan, planted)

        config = TrainConfig(data_dir=str(root), backbone=args.backbone, runs_dir=None)
        prepared = training.prepare(config)
        config = prepared.config
        extractor = backbones.build_feature_extractor(config.backbone, config.weights, config.image_size,
                                                      training.keras_precision(config), config.cache_dir)
        start = time.perf_counter()
        split_features = training.extract(prepared, extractor)
        extracted = time.perf_counter() - start
        start = time.perf_counter()
        training.keep_near_duplicates_together(prepared, extractor, split_features)
        feature_stage = time.perf_counter() - start
        found = found_per_kind(prepared.scan, planted)
        worst = closeness(prepared.scan, planted)
        real_pairs = [pair for pair in prepared.scan.near_pairs
                      if not any(os.path.basename(p).startswith(PLANTED_PREFIX) for p in pair["paths"])]
        # Pairs with a planted copy that are not the copy and its original: false pairs, or copies of
        # photos that are near-duplicates themselves.
        stray_pairs = [pair for pair in prepared.scan.near_pairs if pair not in real_pairs
                       and not any(set(pair["paths"]) == {copy, original} for copy, (_, original) in planted.items())]
        crossing = prepared.scan.near_duplicates_across_splits()
        if args.figure and real_pairs + stray_pairs:  # drawn while the planted copies exist
            shown = [{**pair, "splits": [pathlib.Path(p).parent.parent.name for p in pair["paths"]]}
                     for pair in real_pairs + stray_pairs]
            figures.save_figure(figures.plot_near_duplicates(shown, columns=1, title="Found (planted pairs left out)"),
                                args.figure)

        # The same photos in one folder of class folders: catsdogs makes every split.
        flat = pathlib.Path(folder) / "flat"
        for sample in (s for samples in dataset.splits.values() for s in samples):
            target = flat / dataset.class_names[sample.label] / (pathlib.Path(sample.path).parent.parent.name + "-"
                                                                  + os.path.basename(sample.path))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.path.realpath(sample.path))
        flat_prepared = training.prepare(TrainConfig(data_dir=str(flat), backbone=args.backbone, runs_dir=None))
        training.keep_near_duplicates_together(flat_prepared, extractor, training.extract(flat_prepared, extractor))
        flat_groups = flat_prepared.scan.near_duplicate_groups()
        flat_planted = {str(flat / dataset.class_names[0 if "/cats/" in copy else 1] / f"test_set-{os.path.basename(copy)}"):
                        (kind, str(flat / dataset.class_names[0 if "/cats/" in original else 1]
                                   / f"training_set-{os.path.basename(original)}"))
                        for copy, (kind, original) in planted.items()}
        split_of = flat_prepared.scan.split_of
        groups_split = sum(len({split_of[p] for p in group if p in split_of}) > 1 for group in flat_groups)

    results = {
        "data": str(args.data), "backbone": config.backbone, "image_size": config.image_size,
        "runtime": config.runtime, "precision": config.precision, "photos": photos,
        "planted_per_kind": args.per_kind,
        "found_by_hash": by_hash, "found": found, "closest_call": worst,
        "share_found": {kind: found[kind] / args.per_kind for kind in KINDS},
        "real_pairs": real_pairs, "stray_pairs": stray_pairs,
        "groups_across_splits": len(crossing),
        "seconds": {"scan_without_hash": round(scan_plain, 2), "scan_with_hash": round(scan_hash, 2),
                    "extraction": round(extracted, 2), "feature_stage": round(feature_stage, 2)},
        "flat": {"groups": len(flat_groups), "groups_on_both_sides": groups_split,
                 "found": found_per_kind(flat_prepared.scan, flat_planted),
                 "moved_to_training": sum(1 for s in flat_prepared.splits["train"]
                                          if s.path not in flat_prepared.calibration)},
    }
    print(json.dumps(results, indent=2))
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
