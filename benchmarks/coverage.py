"""Prediction sets, measured: the coverage promised against the coverage on a run's test photos.

A run keeps its validation photos' calibration in its model (`catsdogs.models.conformal`); its
predictions.csv has every test photo's probabilities and in-distribution score. This computes, for each
coverage asked, the sets the model answers (the photos the open-set score rejects get the empty set)
and what they did on the test photos: coverage measured with its Clopper-Pearson interval, mean set
size, share of each size. Nothing is fitted on the test photos. A model with an open-set score is measured
twice: with its rejection (rejected photos answered the empty set, a coverage it cannot promise refused) and
without (`--no-reject`).

    catsdogs train ../shared/data/cats-and-dogs --coverage 0.95 --name coverage
    python benchmarks/coverage.py runs/coverage --coverages 0.9,0.95,0.98,0.99 --output benchmarks/results/coverage.json
"""

import argparse
import json

import numpy as np

import catsdogs
from catsdogs.errors import ConfigError
from catsdogs.evaluation.coverage import set_metrics
from catsdogs.inference.classifier import set_threshold
from catsdogs.models import conformal
from catsdogs.models.model import predicted_classes
from catsdogs.store.run_dir import PREDICTIONS, RunDirectory


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory")
    parser.add_argument("--coverages", default="0.9,0.95,0.98,0.99")
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args()

    info = catsdogs.load(args.run).info
    rows = RunDirectory(args.run).rows(PREDICTIONS)
    probabilities = np.array([[float(row[f"p_{name}"]) for name in info.class_names] for row in rows])
    y_true = np.array([info.class_names.index(row["true"]) for row in rows])
    accepted = (np.array([row["accepted"] == "True" for row in rows]) if info.reject_threshold is not None
                else np.ones(len(rows), bool))
    predicted = predicted_classes(probabilities, info.threshold)
    results = {"run": args.run, "test_photos": len(rows), "accuracy": float((predicted == y_true).mean()),
               "test_kept_by_open_set": float(accepted.mean()), "coverages": {}}
    print(f"{len(rows)} test photos, accuracy {results['accuracy']:.4f}, {accepted.mean():.2%} kept by the open-set "
          f"score; {len(info.conformal['true_class_probabilities'])} validation photos calibrate the sets\n")
    print("| rejection | coverage | threshold | measured | 95% interval | mean size | size 0 | size 1 | size 2 |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for reject in ([True, False] if info.reject_threshold is not None else [False]):
        kept = accepted if reject else np.ones(len(rows), bool)
        answers = results["coverages"].setdefault("rejecting" if reject else "no_reject", {})
        for coverage in map(float, args.coverages.split(",")):
            try:
                threshold = set_threshold(info, coverage, reject=reject)
            except ConfigError as error:  # a coverage the validation photos cannot promise: refused, as predict does
                answers[str(coverage)] = {"refused": str(error)}
                print(f"| {'yes' if reject else 'no'} | {coverage:g} | refused: {error} |")
                continue
            members = conformal.prediction_sets(probabilities, threshold, predicted, kept)
            sets = set_metrics(members, y_true, coverage, threshold, len(info.conformal["true_class_probabilities"]))
            answers[str(coverage)] = sets
            sizes = [sets["sizes"].get(str(size), 0.0) for size in range(3)]
            print(f"| {'yes' if reject else 'no'} | {coverage:g} | {threshold:.4f} | {sets['measured']:.4f} | "
                  f"{sets['interval'][0]:.4f}-{sets['interval'][1]:.4f} | {sets['mean_size']:.3f} | "
                  + " | ".join(f"{s:.2%}" for s in sizes) + " |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
