"""Issue 3's table: {linear, dense head} x {no fine-tuning, fine-tuning} x {no TTA, TTA} on real data.

Runs `catsdogs train --tta` once per head and fine-tuning choice (each run reports validation
and test metrics with and without test-time augmentation) and prints one markdown row per
combination: validation log-loss (what the choice is made on), test accuracy, macro precision and
recall, log-loss, ECE, and the run's wall time; then the combinations ranked by validation log-loss. Features are
shared through the cache, so run it once beforehand (or accept that the first run extracts).

    python benchmarks/training_options.py ../shared/data/cats-and-dogs --backbone efficientnet_lite0
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--runs-dir", default="runs/training-options")
    parser.add_argument("--heads", default="linear,dense")
    parser.add_argument("--fine-tune", default="no,yes", help="which of no,yes to run")
    args = parser.parse_args()

    print("| head | fine-tune | TTA | validation log-loss | test accuracy | errors | precision | recall | log-loss | ECE "
          "| kept stage | wall time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for head in args.heads.split(","):
        for fine_tune in args.fine_tune.split(","):
            name = f"{args.backbone}-{head}-{'ft' if fine_tune == 'yes' else 'noft'}"
            command = [sys.executable, "-m", "catsdogs.cli", "train", args.data_dir, "--backbone", args.backbone,
                       "--head", head, "--tta", "--runs-dir", args.runs_dir, "--name", name]
            if fine_tune == "yes":
                command.append("--fine-tune")
            start = time.perf_counter()
            printed = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
            seconds = time.perf_counter() - start
            run_dir = re.search(r"^run directory: (\S+)", printed, re.MULTILINE).group(1)
            metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
            for tta, m, val in (("no", metrics, metrics["validation"]), ("yes", metrics["tta"], metrics["validation_tta"])):
                rows.append((val["log_loss"], head, fine_tune, tta, m["accuracy"]))
                print(f"| {head} | {fine_tune} | {tta} | {val['log_loss']:.4f} | {100 * m['accuracy']:.2f}% | {m['errors']} | "
                      f"{100 * m['macro_avg']['precision']:.2f}% | {100 * m['macro_avg']['recall']:.2f}% | "
                      f"{m['log_loss']:.4f} | {m['ece']:.4f} | {metrics['stages']['kept']} | {seconds:.0f} s |",
                      flush=True)
    print("\nranked by validation log-loss:")
    for val_loss, head, fine_tune, tta, accuracy in sorted(rows):
        print(f"  {val_loss:.6f}  head {head}, fine-tune {fine_tune}, TTA {tta}: test accuracy {100 * accuracy:.2f}%")


if __name__ == "__main__":
    main()
