"""Ray scoring vs `catsdogs predict` on one machine (issue 13): wall time of the whole command.

Each variant is the command a user runs, timed from start to exit: Python and TensorFlow start-up,
loading the model and, for Ray, starting a local cluster and its workers are all included.

    python benchmarks/ray_scaling.py RUN_DIR PHOTOS --output benchmarks/results/ray_scaling.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def timed(command):
    """Seconds the command took; it must succeed."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("photos")
    parser.add_argument("--workers", default="1,2", help="Ray model actors to try, comma separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output")
    args = parser.parse_args()

    from catsdogs.data.dataset import expand_inputs
    from catsdogs.utils.host import usable_cpus

    images, cores = len(expand_inputs([args.photos])), usable_cpus()
    catsdogs = [sys.executable, "-m", "catsdogs.cli", "predict", args.run_dir, args.photos]
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            variants = [("plain", None, [*catsdogs, "--csv", os.path.join(scratch, f"plain-{repeat}.csv")])]
            variants += [(f"ray, {workers} worker{'s' * (int(workers) > 1)}", int(workers),
                          [*catsdogs, "--engine", "ray", "--workers", workers,
                           "--output", os.path.join(scratch, f"ray-{workers}-{repeat}")])
                         for workers in args.workers.split(",")]
            for name, workers, command in variants:
                seconds = timed(command)
                results.append({"variant": name, "workers": workers, "repeat": repeat, "seconds": round(seconds, 2),
                                "images_per_s": round(images / seconds, 1),
                                "images_per_s_per_core": round(images / seconds / cores, 1)})
                print(json.dumps(results[-1]), flush=True)
    report = {"images": images, "cores": cores, "results": results}
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
