"""Multi-label classification, measured on collages of the shared cats and dogs.

Every image is two photos side by side (`catsdogs.data.collages`): two cats ("cats"), two dogs
("dogs"), or a cat and a dog ("cats;dogs"), so that the number of labels cannot be told from the
layout. Training collages are made from the training folder, test collages from the test folder,
each photo used once; validation is carved out of the training collages as usual. Collages of two
photos of neither class (`--unknown`, never used to fit anything) measure the open-set score.
Everything is written into a temporary folder (`--work`), never into the repository.

Reports the test mAP and each label's average precision, precision, recall and F1 at the thresholds
chosen on validation, and at 0.5 for comparison; exact match, Hamming loss; calibration (metrics.json's: the
test ECE of every (photo, label) pair before and after the per-label temperatures); open set.

    python benchmarks/multilabel.py --data ../shared/data/cats-and-dogs --unknown ../shared/data/not-cats-or-dogs
"""

import argparse
import json
import os
import tempfile
import time

import catsdogs
from catsdogs.config.train import DEFAULT_BACKBONE
from catsdogs.data.collages import make_collages
from catsdogs.data.dataset import list_files
from catsdogs.evaluation.metrics import format_metrics
from catsdogs.evaluation.multilabel import label_metrics
from catsdogs.utils.csvfiles import write_csv

CLASSES = ("cats", "dogs")


def most_per_kind(photos):
    """The most collages of each kind that the photos allow, each used once (a class is in 3 of 4 photo slots)."""
    return min(len(paths) for paths in photos.values()) // 3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cats-and-dogs")
    parser.add_argument("--unknown", default="", help="photos of neither class (their collages only measure)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--image-size", type=int, default=0)
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false", help="no temperatures")
    parser.add_argument("--train-per-kind", type=int, default=0, help="collages of each kind (0: as many as fit)")
    parser.add_argument("--test-per-kind", type=int, default=0, help="collages of each kind (0: as many as fit)")
    parser.add_argument("--work", default="", help="folder for the collages and the run (default: a temporary one)")
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args()

    work = args.work or tempfile.mkdtemp(prefix="catsdogs-multilabel-")
    start = time.perf_counter()
    rows = []
    for split, folder, per_kind in (("train", "training_set", args.train_per_kind),
                                    ("test", "test_set", args.test_per_kind)):
        photos = {name: list_files(os.path.join(args.data, folder, name)) for name in CLASSES}
        made = make_collages(photos, os.path.join(work, split), per_kind or most_per_kind(photos), seed=0)
        rows += [{"path": f"{split}/{row['path']}", "label": row["label"], "split": split} for row in made]
    write_csv(rows, os.path.join(work, "labels.csv"))
    unknown = ""
    if args.unknown:  # pairs of photos of neither class, never in the labels table
        others = list_files(args.unknown)
        others = [path for path in others if not path.endswith(".md")]
        half = len(others) // 2
        made = make_collages({"a": others[:half], "b": others[half:2 * half]}, os.path.join(work, "unknown-pairs"),
                             half // 3, seed=0)
        unknown = os.path.join(work, "unknown-pairs")
        print(f"{len(made)} collages of photos of neither class in {unknown}")
    made_seconds = time.perf_counter() - start
    print(f"{len(rows)} collages ({sum(r['split'] == 'train' for r in rows)} train, "
          f"{sum(r['split'] == 'test' for r in rows)} test) in {work} ({made_seconds:.0f} s)")

    run = catsdogs.train(work, labels=os.path.join(work, "labels.csv"), multi_label=True, backbone=args.backbone,
                         image_size=args.image_size, calibrate=args.calibrate, unknown_data=unknown,
                         runs_dir=os.path.join(work, "runs"), name="multilabel")
    evaluation = run.evaluation
    metrics = run.metrics
    print(format_metrics(metrics))
    at_half = label_metrics(evaluation.y_true, evaluation.probabilities, evaluation.class_names, 0.5)
    print(f"at threshold 0.5 for every label: exact match {at_half['exact_match_ratio']:.4f}, "
          f"Hamming loss {at_half['hamming_loss']:.4f}, macro F1 {at_half['macro_avg']['f1']:.4f}")
    sets = {}
    for row in evaluation.rows:
        key = f"{row['true'] or '(none)'} -> {row['predicted'] or '(none)'}"
        sets[key] = sets.get(key, 0) + 1
    print("true label set -> predicted, test photos:", json.dumps(dict(sorted(sets.items())), indent=1))
    result = {
        "backbone": run.config.backbone, "image_size": run.config.image_size, "runtime": run.config.runtime,
        "precision": run.config.precision, "collages": {"train_and_val": sum(r["split"] == "train" for r in rows),
                                                         "test": sum(r["split"] == "test" for r in rows)},
        "metrics": {key: metrics[key] for key in ("mAP", "exact_match_ratio", "hamming_loss", "micro_avg", "macro_avg",
                                                  "per_class", "log_loss", "ece", "roc_auc", "thresholds")},
        "calibration": metrics.get("calibration"), "open_set": metrics.get("open_set"),
        "at_threshold_0.5": {key: at_half[key] for key in ("exact_match_ratio", "hamming_loss", "macro_avg",
                                                           "per_class")},
        "label_sets": sets, "stages": metrics.get("stages"), "run_dir": run.run_dir,
    }
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
        print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
