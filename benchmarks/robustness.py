"""Accuracy under shifts that the code makes itself: small photos, heavy JPEG, grayscale, crops, mirrors.

For each model (a backbone or an ensemble, an input size, with or without the low-resolution
training views of `TrainConfig.low_resolution`), the head is trained exactly as `catsdogs train`
trains it, on the training split; then it reports:

- cross-validated log-loss and errors on the training split (5 folds, each photo's views kept
  together, the head's L2 strength as chosen on the whole split), on the photos as they are and
  on their low-resolution views: the measure by which the default is chosen;
- accuracy on the shared test photos as they are and under each shift in SHIFTS;
- the extractor's images/s from files (decoding included), on this machine.

The shifted test photos are written once into a work folder (never into the data folder); their
features are cached like any others.

    python benchmarks/robustness.py ../shared/data/cats-and-dogs \\
        --models efficientnet_lite0@380,efficientnet_lite2@320,efficientnet_lite0+efficientnet_lite2@380 \\
        --low-resolution both --output benchmarks/results/robustness.json
"""

import argparse
import dataclasses
import json
import os
import time

import numpy as np
from PIL import Image, ImageOps
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold

from catsdogs.config.choices import INFERENCE_BATCH_SIZE, default_cache_dir
from catsdogs.config.train import TrainConfig
from catsdogs.data.images import load_image
from catsdogs.data.scan import file_hash
from catsdogs.engine import train as training
from catsdogs.inference.features import extractor_features
from catsdogs.inference.model_formats import compiled_forward
from catsdogs.inference.pipeline import run_on_files
from catsdogs.models import backbones, heads
from catsdogs.utils.files import atomic_path


def downscaled(image, long_side):
    scale = long_side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def centre_crop(image, share):
    width, height = round(image.width * share), round(image.height * share)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


# Shift name -> (how the photo is changed, the format it is saved in). Lossless PNG except where
# the shift is the compression itself, so that each shift is only what its name says.
SHIFTS = {
    "small-128": (lambda image: downscaled(image, 128), "PNG"),
    "small-180": (lambda image: downscaled(image, 180), "PNG"),
    "jpeg-q30": (lambda image: image, "JPEG"),
    "grayscale": (lambda image: image.convert("L"), "PNG"),
    "crop-70": (lambda image: centre_crop(image, 0.7), "PNG"),
    "mirror": (ImageOps.mirror, "PNG"),
}


def shifted_photos(paths, data_dir, work_dir, shift):
    """The photos under a shift, written into work_dir/<shift>/ once (same relative paths)."""
    change, file_format = SHIFTS[shift]
    extension = {"PNG": ".png", "JPEG": ".jpg"}[file_format]
    shifted = []
    for path in paths:
        target = os.path.join(work_dir, shift, os.path.splitext(os.path.relpath(path, data_dir))[0] + extension)
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            image = change(Image.fromarray(load_image(path)))
            with atomic_path(target) as partial:
                image.save(partial, file_format, **({"quality": 30} if file_format == "JPEG" else {}))
        shifted.append(target)
    return shifted


@dataclasses.dataclass
class Trained:
    config: TrainConfig
    extractor: object
    splits: dict  # of training.SplitFeatures; "train" has the original and low-resolution views
    estimator: object


def train_head(data_dir, backbone, image_size, low_resolution):
    """The head as `catsdogs train` fits it, with the training split's low-resolution views always extracted."""
    config = TrainConfig(data_dir=data_dir, backbone=backbone, image_size=image_size, low_resolution=True,
                         open_set="none", runs_dir=None)
    prepared = training.prepare(config)
    extractor = backbones.build_feature_extractor(backbone, image_size=image_size, precision=prepared.config.precision)
    splits = training.extract(prepared, extractor)
    train = splits["train"]
    used = splits if low_resolution else {**splits, "train": dataclasses.replace(train, x=train.x[:1])}
    estimator, _, _ = training.fit_head(dataclasses.replace(prepared.config, low_resolution=low_resolution), used)
    return Trained(prepared.config, extractor, splits, estimator)


def cross_validated(trained, low_resolution, seed=0):
    """Log-loss and errors of out-of-fold predictions on the training split: (original, low resolution)."""
    train = trained.splits["train"]
    views = len(train.x) if low_resolution else 1
    oof = np.zeros((2, len(train.y), 2))
    photos = np.arange(len(train.y))
    for fit_rows, held_out in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(train.x[0], train.y,
                                                                                            photos):
        head = heads.LinearHead(strengths=(trained.estimator.C_,), seed=seed)
        head.fit(np.concatenate([train.x[v, fit_rows] for v in range(views)]), np.tile(train.y[fit_rows], views),
                 groups=np.tile(fit_rows, views))
        for v in range(2):
            oof[v, held_out] = head.predict_proba(train.x[v, held_out])
    oof /= oof.sum(axis=-1, keepdims=True)  # float32 probabilities, summed again in float64 for log_loss's check
    return [(log_loss(train.y, p), int((p.argmax(axis=1) != train.y).sum())) for p in oof]


def images_per_second(extractor, paths, batch_size=INFERENCE_BATCH_SIZE):
    """Features from files (decoding and resizing included), after one warm-up batch."""
    forward = compiled_forward(extractor)
    size = extractor.input_shape[1]
    run_on_files(forward, paths[:batch_size], size, batch_size)
    start = time.perf_counter()
    outputs = run_on_files(forward, paths, size, batch_size)
    return float(outputs.ok.sum() / (time.perf_counter() - start))


def measure(data_dir, work_dir, model, low_resolution, speed_images):
    backbone, size = model.split("@")
    trained = train_head(data_dir, backbone, int(size), low_resolution)
    config, test = trained.config, trained.splits["test"]
    row = {"backbone": backbone, "image_size": config.image_size, "precision": config.precision,
           "low_resolution": low_resolution, "C": trained.estimator.C_}
    (row["cv_log_loss"], row["cv_errors"]), (row["cv_log_loss_low_resolution"], row["cv_errors_low_resolution"]) = \
        cross_validated(trained, low_resolution)
    row["cv_photos"] = len(trained.splits["train"].y)
    row["test_photos"] = len(test.y)
    row["accuracy"] = {"original": float((trained.estimator.predict_proba(test.x[0]).argmax(1) == test.y).mean())}
    for shift in SHIFTS:
        paths = shifted_photos(test.paths, config.data_dir, work_dir, shift)
        outputs = extractor_features(trained.extractor, config.precision, paths,
                                              [file_hash(p) for p in paths], config.cache_dir,
                                              config.extract_batch_size, desc=shift)
        if not outputs.ok.all():
            raise RuntimeError(f"{shift}: photos failed: {outputs.errors}")
        predicted = trained.estimator.predict_proba(outputs.values[0]).argmax(1)
        row["accuracy"][shift] = float((predicted == test.y).mean())
    row["worst_drop_points"] = 100 * (row["accuracy"]["original"] - min(row["accuracy"].values()))
    row["images_per_second"] = images_per_second(trained.extractor, test.paths[:speed_images])
    return row


def markdown(rows):
    shifts = ["original", *SHIFTS]
    lines = ["| model | px | low-res training | CV log-loss | CV errors | CV log-loss, low-res views | "
             + " | ".join(shifts) + " | worst drop (points) | img/s |",
             "|---|---:|---|---:|---:|---:|" + "---:|" * len(shifts) + "---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['image_size']} | {'yes' if r['low_resolution'] else 'no'} | "
                     f"{r['cv_log_loss']:.4f} | {r['cv_errors']} / {r['cv_photos']} | "
                     f"{r['cv_log_loss_low_resolution']:.4f} | "
                     + " | ".join(f"{100 * r['accuracy'][s]:.2f}" for s in shifts)
                     + f" | {r['worst_drop_points']:.2f} | {r['images_per_second']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--models", default="efficientnet_lite0@380,efficientnet_lite2@320",
                        help="backbone@size, comma-separated; a backbone may be an ensemble a+b")
    parser.add_argument("--low-resolution", choices=("no", "yes", "both"), default="both",
                        help="train the head with the low-resolution views too")
    parser.add_argument("--work-dir", default=os.path.join(default_cache_dir(), "robustness"),
                        help="where the shifted test photos are written")
    parser.add_argument("--speed-images", type=int, default=320)
    parser.add_argument("--output", help="a JSON file for the rows")
    args = parser.parse_args()
    flags = {"no": [False], "yes": [True], "both": [False, True]}[args.low_resolution]
    rows = []
    for model in args.models.split(","):
        for low_resolution in flags:
            rows.append(measure(args.data_dir, args.work_dir, model, low_resolution, args.speed_images))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
            if args.output:
                with open(args.output, "w") as f:
                    json.dump({"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "rows": rows}, f, indent=2)
    print(markdown(rows))


def cpu_model():
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


if __name__ == "__main__":
    main()
