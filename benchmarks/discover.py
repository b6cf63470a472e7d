"""New classes from the rejects, measured: `catsdogs discover` on the non-pet photos mixed with the test pets.

The pool is every photo of ../shared/data/not-cats-or-dogs (631 photos in 7 folders) and the 2000 test
photos of ../shared/data/cats-and-dogs; the run's model decides which it rejects or is unsure of, and
discover groups those. The folders are the truth, used here only to measure (nothing in discover sees
them): purity (the share of clustered photos whose cluster's most common folder is their own), the
adjusted Rand index of the clustered photos, and the share of the non-pet photos that land in a cluster.

The rule is also checked where the truth is the run's own: the 2000 test pets alone, every one proposed
(--unsure 1), grouped with the same threshold: do cats and dogs come out apart?

Last, training again as a user would after naming the clusters: each cluster is named after its most common
folder (a non-pet folder: a new class; cats or dogs: merged into it), as corrections.csv rows in the discover
folder, and the run's settings are trained with them: how long it takes, whether any feature had to be
computed, and how the new classes do on their test photos.

    python benchmarks/discover.py runs/coverage --output /tmp/discover-bench --json benchmarks/results/discover.json
"""

import argparse
import collections
import json
import logging
import os
import shutil
import time

import catsdogs
from catsdogs.config.train import TrainConfig
from catsdogs.data.corrections import append_decision
from catsdogs.evaluation.discovery import cluster_metrics
from catsdogs.store import discover_dir
from catsdogs.store.run_dir import RunDirectory

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def truth_of(path, roots):
    """The folder a photo lies in below one of `roots`: its true group."""
    for root in roots:
        if path.startswith(root + os.sep):
            return os.path.relpath(path, root).split(os.sep)[0]
    raise ValueError(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory trained on ../shared/data/cats-and-dogs")
    parser.add_argument("--unknown", default=os.path.join(SHARED, "not-cats-or-dogs"))
    parser.add_argument("--test", default=os.path.join(SHARED, "cats-and-dogs", "test_set"))
    parser.add_argument("--output", required=True, help="a folder for the clusters (replaced)")
    parser.add_argument("--json", help="write the results as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    roots = [os.path.abspath(args.unknown), os.path.abspath(args.test)]
    results = {}

    shutil.rmtree(args.output, ignore_errors=True)
    start = time.perf_counter()
    found = catsdogs.discover(args.run, roots, args.output)
    seconds = time.perf_counter() - start
    print(found)
    metrics = cluster_metrics([truth_of(row["path"], roots) for row in found.rows],
                              [row["cluster"] for row in found.rows])
    non_pets = {name: len(os.listdir(os.path.join(roots[0], name))) for name in sorted(os.listdir(roots[0]))
                if os.path.isdir(os.path.join(roots[0], name))}
    groups = [metrics["groups"].get(name, {"clustered": 0, "pure": 0}) for name in non_pets]
    clustered, pure = sum(g["clustered"] for g in groups), sum(g["pure"] for g in groups)
    results["mixed"] = {"seconds": round(seconds, 1), "summary": found.summary(),
                        "non_pet_photos": sum(non_pets.values()), "non_pet_clustered": clustered,
                        "non_pet_clustered_share": clustered / sum(non_pets.values()),
                        "non_pet_purity": pure / clustered if clustered else None, "metrics": metrics}
    print(json.dumps(results["mixed"], indent=2))

    check = args.output.rstrip("/") + "-pets"
    shutil.rmtree(check, ignore_errors=True)
    pets = catsdogs.discover(args.run, [roots[1]], check, unsure=1.0)
    results["pets_alone"] = cluster_metrics([truth_of(row["path"], roots) for row in pets.rows],
                                            [row["cluster"] for row in pets.rows])
    print("the test pets alone:", json.dumps({k: v for k, v in results["pets_alone"].items() if k != "groups"}))
    results["retrained"] = retrain(args.run, found, roots)
    print(json.dumps(results["retrained"], indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


class CountComputed(logging.Handler):
    """Counts the photos whose features had to be computed (the feature cache's log line)."""

    def __init__(self):
        super().__init__()
        self.computed = 0

    def emit(self, record):
        if record.getMessage().startswith("computing features of"):
            self.computed += int(record.getMessage().split()[3])


def retrain(run, found, roots):
    """Names every cluster after its most common folder, as review would write it, and trains again with it."""
    config = TrainConfig.load(os.path.join(run, "config.json"))
    known = RunDirectory(run).metrics()["class_names"]
    table = os.path.join(found.output, discover_dir.CORRECTIONS)
    named = {}
    for number, paths in found.clusters.items():
        name = collections.Counter(truth_of(path, roots) for path in paths).most_common(1)[0][0]
        decision = "merge" if name in known else "new_class"
        named[number] = (decision, name)
        for path in paths:
            append_decision(table, path, "", "", decision, known, name)
    counter = CountComputed()
    logging.getLogger("catsdogs").addHandler(counter)
    start = time.perf_counter()
    run = catsdogs.train(config, labels=(table,), name=f"{os.path.basename(run)}-discovered", unknown_data="")
    seconds = time.perf_counter() - start
    new = sorted({name for decision, name in named.values() if decision == "new_class"})
    return {"clusters_named": {str(k): v for k, v in named.items()}, "seconds": round(seconds, 1),
            "features_computed": counter.computed, "run": run.run_dir, "classes": run.classifier.classes,
            "accuracy": run.metrics["accuracy"], "stages": run.metrics["stages"],
            "per_new_class": {name: run.metrics["per_class"][name] for name in new}}


if __name__ == "__main__":
    main()
