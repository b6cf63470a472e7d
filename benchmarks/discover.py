"""New classes from the rejects, measured: `catsdogs discover` on the non-pet photos mixed with the test pets.

The pool is every photo of ../shared/data/not-cats-or-dogs (631 photos in 7 folders) and the 2000 test
photos of ../shared/data/cats-and-dogs; the run's model decides which it rejects or is unsure of, and
discover groups those. The folders are the truth, used here only to measure (nothing in discover sees
them): purity (the share of clustered photos whose cluster's most common folder is their own), the
adjusted Rand index of the clustered photos, and the share of the non-pet photos that land in a cluster.

The rule is also checked where the truth is the run's own: the 2000 test pets alone, every one proposed
(--unsure 1), grouped with the same threshold: do cats and dogs come out apart?

    python benchmarks/discover.py runs/coverage --output /tmp/discover-bench --json benchmarks/results/discover.json
"""

import argparse
import json
import os
import shutil
import time

import catsdogs
from catsdogs.evaluation.discovery import cluster_metrics

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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
