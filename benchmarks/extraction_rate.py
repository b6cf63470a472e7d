"""`catsdogs train`'s extraction rate beside `catsdogs bench`'s from-files rate, and against another checkout.

For one backbone, runtime and precision, in rounds that alternate what they compare (so that a
change in the machine's load hits every side alike):

- train: `catsdogs train` on the data with a fresh feature cache (converted ONNX files and weights
  kept between rounds, so conversion is not timed), stopped once both extraction passes have
  logged their rate (the training photos, then the validation and test ones); the rate is all
  their photos over all their seconds, as the log lines give them;
- bench: `catsdogs bench`'s from-files rate (steady state) for the same backbone, runtime,
  precision and batch size, on photos of the data's test folder;
- before (with --before SRC): `catsdogs train` as above with another checkout's source (the code
  before a change), for the ratio.

    flock /tmp/catsdogs-cpu.lock .venv/bin/python benchmarks/extraction_rate.py --runtime onnx --precision int8 \\
        --before ../base/src
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE_LINE = re.compile(r"computed them in ([\d.]+) s \(([\d.]+) images/s")
CLI = "import sys; from catsdogs.cli import main; sys.exit(main(sys.argv[1:]))"


def train_rate(source, data, args, converted, scratch, env):
    """Photos/s of `catsdogs train`'s extraction with the package at `source`, and its two passes' lines."""
    cache = tempfile.mkdtemp(dir=scratch)
    for folder in ("onnx", "weights"):  # converted once per checkout, reused by every round
        os.makedirs(os.path.join(converted, folder), exist_ok=True)
        os.symlink(os.path.join(converted, folder), os.path.join(cache, folder))
    command = [sys.executable, "-c", CLI, "train", data, "--backbone", args.backbone, "--runtime", args.runtime,
               "--precision", args.precision, "--extract-batch-size", str(args.batch_size), "--cache-dir", cache,
               "--runs-dir", os.path.join(scratch, "runs")]
    process = subprocess.Popen(command, env={**env, "PYTHONPATH": source}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    passes = []
    for line in process.stderr:
        match = RATE_LINE.search(line)
        if match:
            seconds, rate = map(float, match.groups())
            passes.append((seconds, seconds * rate))
            if len(passes) == 2:
                break
    process.kill()
    process.wait()
    shutil.rmtree(cache)
    if len(passes) < 2:
        raise RuntimeError(f"{' '.join(command)} logged {len(passes)} extraction rates, not 2")
    return sum(images for _, images in passes) / sum(seconds for seconds, _ in passes)


def bench_rate(data, args, scratch, env):
    """`catsdogs bench`'s steady from-files rate for the same backbone, runtime, precision and batch size."""
    output = os.path.join(scratch, "bench.json")
    subprocess.run([sys.executable, "-c", CLI, "bench", "--backbone", args.backbone, "--runtimes", args.runtime,
                    "--precisions", args.precision, "--batch-sizes", str(args.batch_size), "--images",
                    str(args.bench_images), "--data", os.path.join(data, "test_set"), "--output", output],
                   env={**env, "PYTHONPATH": os.path.join(ROOT, "src")}, stdout=subprocess.DEVNULL, check=True)
    with open(output) as f:
        (result,) = json.load(f)["results"]
    return result["rows"][0]["from_files"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cats-and-dogs"))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--runtime", default="onnx", choices=("keras", "onnx"))
    parser.add_argument("--precision", default="int8", choices=("float32", "bfloat16", "int8"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bench-images", type=int, default=1024)
    parser.add_argument("--before", help="another checkout's src folder, whose train is timed too")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", help="write the rates as JSON")
    args = parser.parse_args()

    env = dict(os.environ)
    results = {"train": [], "bench": [], **({"before": []} if args.before else {})}
    with tempfile.TemporaryDirectory() as scratch:
        converted = {side: os.path.join(scratch, f"converted-{side}") for side in ("train", "before")}
        for round_ in range(args.rounds):
            start = time.perf_counter()
            results["train"].append(train_rate(os.path.join(ROOT, "src"), args.data, args, converted["train"],
                                               scratch, env))
            if args.before:
                results["before"].append(train_rate(args.before, args.data, args, converted["before"], scratch, env))
            results["bench"].append(bench_rate(args.data, args, scratch, env))
            print(f"round {round_ + 1} ({time.perf_counter() - start:.0f} s): "
                  + ", ".join(f"{side} {rates[-1]:.1f}" for side, rates in results.items()), flush=True)
    median = {side: statistics.median(rates) for side, rates in results.items()}
    print(f"{args.backbone} {args.runtime} {args.precision}, batch {args.batch_size}, images/s (median of "
          f"{args.rounds}): train {median['train']:.1f}, bench from files {median['bench']:.1f} "
          f"(train / bench {median['train'] / median['bench']:.2f})"
          + (f", before {median['before']:.1f} (train / before {median['train'] / median['before']:.2f})"
             if args.before else ""))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": vars(args), "rates": results, "median": median}, f, indent=2)


if __name__ == "__main__":
    main()
