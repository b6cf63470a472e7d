"""How often the training photos `catsdogs predict --similar 5` names are mostly of the photo's own class.

Trains the default backbone on a dataset (or takes a run directory), then runs the command itself,
`catsdogs predict RUN TEST_FOLDER --similar K --json`, over every test photo, and counts, for each,
how many of its K similar training photos have its own label (the run's splits.csv). Also times the
same command without --similar, to say what naming the photos costs.

    python benchmarks/similar_photos.py ../shared/data/cats-and-dogs --runs-dir /tmp/similar-runs
    python benchmarks/similar_photos.py ../shared/data/cats-and-dogs --run runs/NAME --output results.json
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import time

import catsdogs
from catsdogs.utils.csvfiles import read_csv


def predict(run, folder, similar):
    """`catsdogs predict RUN FOLDER --json [--similar K]` in a subprocess: (answers, wall seconds)."""
    command = [sys.executable, "-m", "catsdogs.cli", "predict", run, folder, "--json"]
    command += ["--similar", str(similar)] if similar else []
    start = time.perf_counter()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the dataset (a test folder, or a split catsdogs makes)")
    parser.add_argument("--run", help="a run directory trained on DATA (default: train the default backbone)")
    parser.add_argument("--runs-dir", default="runs", help="where to train (default: %(default)s)")
    parser.add_argument("--k", type=int, default=5, help="similar photos per answer (default: %(default)s)")
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args()

    run = args.run or catsdogs.train(args.data, runs_dir=args.runs_dir, name="similar-photos").run_dir
    config = json.loads(open(os.path.join(run, "config.json")).read())
    labels = {os.path.join(config["data_dir"], row["path"]): row["label"]
              for row in read_csv(os.path.join(run, "splits.csv")) if row["split"] == "test"}
    folders = sorted({os.path.dirname(os.path.dirname(path)) for path in labels})  # test_set/test_set, above the classes
    answers, with_similar, without = [], 0.0, 0.0
    for folder in folders:
        plain, seconds = predict(run, folder, 0)
        without += seconds
        named, seconds = predict(run, folder, args.k)
        with_similar += seconds
        assert [a["path"] for a in named] == [a["path"] for a in plain]
        answers += [a for a in named if a["path"] in labels]
    own = [sum(photo["label"] == labels[a["path"]] for photo in a["similar"]) for a in answers]
    assert all(len(a["similar"]) == args.k for a in answers)
    mostly = sum(count > args.k // 2 for count in own)
    first = sum(a["similar"][0]["label"] == labels[a["path"]] for a in answers)
    fewest = sorted(((count, os.path.relpath(a["path"], config["data_dir"]), labels[a["path"]],
                      [p["label"] for p in a["similar"]], a["label"]) for count, a in zip(own, answers)))
    results = {
        "run": run, "backbone": config["backbone"], "image_size": config["image_size"],
        "runtime": f"{config['runtime']} {config['precision']}", "test_photos": len(answers), "k": args.k,
        "mostly_own_class": mostly, "mostly_own_class_share": mostly / len(answers),
        "first_own_class_share": first / len(answers),
        "own_class_count": dict(sorted(collections.Counter(own).items())),
        "not_mostly_own_class": [{"path": path, "label": label, "similar_labels": similar, "predicted": predicted}
                                 for count, path, label, similar, predicted in fewest if count <= args.k // 2],
        "predict_seconds": {"without_similar": round(without, 1), f"with_similar_{args.k}": round(with_similar, 1)},
    }
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
