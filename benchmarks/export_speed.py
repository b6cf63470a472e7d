"""Forward speed of a model's exports side by side, less noisy than one export's parity.json.

Every export folder below RUN/exports and the run's own Keras model (and that model computing
in float32) run on the same batch of real test photos, decoded and resized beforehand; the
measurements are interleaved over several rounds and the median is reported with each file's size.

    flock /tmp/catsdogs-heavy.lock .venv/bin/python benchmarks/export_speed.py runs/NAME
"""

import argparse
import json
import os

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory with exports/ (from catsdogs export)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="measurements per model, interleaved (median)")
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args()

    from catsdogs.engine import export
    from catsdogs.engine.timing import forward_rate
    from catsdogs.inference import model_formats as runtimes
    from catsdogs.inference.pipeline import decoded_images
    from catsdogs.models import model as model_lib

    keras_model = model_lib.load(args.run)
    precision = model_lib.compute_precision(keras_model)
    models = {f"keras ({precision})": (runtimes.KerasRuntime(keras_model), model_lib.resolve_model_path(args.run))}
    if precision != "float32":
        models["keras (float32)"] = (runtimes.KerasRuntime(model_lib.float32_model(keras_model)), None)
    exports = os.path.join(args.run, "exports")
    for name in sorted(os.listdir(exports)):
        exported = runtimes.load(os.path.join(exports, name))
        models[name] = (exported, getattr(exported, "path", None) or model_lib.resolve_model_path(
            os.path.join(exports, name)))
    _, test_paths = export.known_photos(model_lib.resolve_model_path(args.run))
    images = decoded_images(test_paths[:args.batch_size], model_lib.describe(keras_model).image_size)

    rates = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (forward, _) in models.items():
            rates[name].append(forward_rate(forward, images))
    print(f"forward images/s, batch {len(images)}, median of {args.rounds} interleaved rounds\n")
    print(f"{'model':<22}{'images/s':>10}{'size MB':>10}")
    results = []
    for name, (_, path) in models.items():
        size = export.size_in_bytes(path) / 1e6 if path else None
        rate = float(np.median(rates[name]))
        print(f"{name:<22}{rate:10.1f}{size if size is not None else float('nan'):10.1f}")
        results.append({"model": name, "images_per_second": rate, "megabytes": size, "rounds": rates[name]})
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"run": args.run, "batch_size": len(images), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
