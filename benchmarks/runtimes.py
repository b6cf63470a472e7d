"""The frozen backbone in each runtime and precision: speed from files, and what it does to the results.

For each backbone and each (runtime, precision), in this order on this machine: `catsdogs train` with
the defaults otherwise (test accuracy, open-set share of test photos kept and of unknown photos
accepted, their AUROC), the cross-validated log-loss of the linear head on the training features
those runs cached (the test folder never chooses anything), and images/s from files (decoding
included, steady state) on the same test photos for each. int8 is calibrated on training photos.

    python benchmarks/runtimes.py ../shared/data/cats-and-dogs --unknown ../shared/data/not-cats-or-dogs \
        --backbones efficientnet_lite0,efficientnet_lite2 > benchmarks/results/runtimes.json
"""

import argparse
import json

import numpy as np
from head_choice import cross_validated_probabilities
from sklearn.metrics import log_loss

import catsdogs
from catsdogs.data import dataset as data
from catsdogs.data.scan import file_hash
from catsdogs.data.splits import spread
from catsdogs.engine.timing import files_rate
from catsdogs.inference.backbone_runtime import onnx_backbone
from catsdogs.inference.features import extractor_features
from catsdogs.inference.model_formats import compiled_forward
from catsdogs.models.backbones import build_feature_extractor
from catsdogs.utils.host import cpu_flags, cpu_name

COMBINATIONS = (("keras", "float32"), ("onnx", "float32"), ("onnx", "int8"))
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cross_validated_log_loss(run):
    """Log-loss of the linear head, 5-fold cross-validated on the run's training features (from the cache)."""
    config = run.config
    train = run.splits["train"]
    paths, labels = [s.path for s in train], np.array([s.label for s in train])
    extractor = build_feature_extractor(config.backbone, config.weights, config.image_size,
                                        config.precision if config.runtime == "keras" else "float32")
    outputs = extractor_features(extractor, config.precision, paths, [file_hash(p) for p in paths],
                                          config.cache_dir, config.extract_batch_size, runtime=config.runtime,
                                          calibration_paths=paths)
    x, y = outputs.values[0, outputs.ok], labels[outputs.ok]
    return float(log_loss(y, cross_validated_probabilities(x, y, run.classifier.classes, "linear")))


def speed(run, photos):
    """Steady images/s of the run's backbone from files, in the run's runtime and precision."""
    config = run.config
    extractor = build_feature_extractor(config.backbone, config.weights, config.image_size,
                                        config.precision if config.runtime == "keras" else "float32")
    forward = compiled_forward(extractor)
    if config.runtime == "onnx":
        forward = onnx_backbone(extractor, config.precision, config.cache_dir, [s.path for s in run.splits["train"]])
    return files_rate(forward, photos, config.image_size, config.extract_batch_size)["steady"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--unknown", help="photos of neither class, to measure open-set rejection")
    parser.add_argument("--backbones", default="efficientnet_lite0")
    parser.add_argument("--speed-photos", type=int, default=384)
    parser.add_argument("--combinations", default=",".join(f"{r}:{p}" for r, p in COMBINATIONS),
                        help="runtime:precision pairs, comma-separated (default: %(default)s)")
    args = parser.parse_args()
    photos = spread(sorted(data.expand_inputs([f"{args.data_dir}/test_set"])), args.speed_photos)
    flags = cpu_flags()
    rows = []
    for backbone in args.backbones.split(","):
        for runtime, precision in (pair.split(":") for pair in args.combinations.split(",")):
            run = catsdogs.train(args.data_dir, backbone=backbone, runtime=runtime, precision=precision,
                                 unknown_data=args.unknown or "", runs_dir=None)
            o = run.metrics["open_set"]
            rows.append({"backbone": backbone, "runtime": runtime, "precision": precision,
                         "test_accuracy": run.metrics["accuracy"], "test_errors": run.metrics["errors"],
                         "cv_log_loss": cross_validated_log_loss(run), "test_log_loss": run.metrics["log_loss"],
                         "open_set_test_kept": o["test_kept"],
                         "unknown_accepted": o["unknown"]["accepted"] if o.get("unknown") else None,
                         "unknown_auroc": o["unknown"]["auroc"] if o.get("unknown") else None,
                         "images_per_second_from_files": speed(run, photos)})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"cpu": cpu_name(), "flags": [f for f in FLAGS if f in flags], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
