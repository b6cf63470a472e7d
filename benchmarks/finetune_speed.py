"""Fine-tuning speed on this machine: training images per second and seconds per epoch.

Runs `finetune.fine_tune`, the stage that `catsdogs train --fine-tune` runs (top blocks
unfrozen, BatchNormalization frozen, augmentation on, the backbone's default precision), on real
photos, and times the training part of each epoch after the first (which includes tracing); the
validation pass at the end of each epoch (one batch here) is left out. ResNet-50 runs with random
weights: speed does not depend on weight values.

    python benchmarks/finetune_speed.py --backbone resnet50 --images 320 --epochs 5
"""

import argparse
import json
import os
import platform
import time

import keras
import numpy as np

from catsdogs.config.train import TrainConfig
from catsdogs.engine import finetune
from catsdogs.models import backbones
from catsdogs.models.heads import build_head
from catsdogs.models.precision import resolve_precision

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cats-and-dogs", "training_set")


class TrainingTimer(keras.callbacks.Callback):
    """Seconds from the start of each epoch to the end of its last training batch."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.last_batch_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(self.last_batch_end - self.start)


def photos(first, count):
    """Paths and labels of `count` training photos from number `first` on, half cats, half dogs."""
    half = count // 2
    paths = [os.path.join(DATA, cls, f"{cls[:-1]}.{i}.jpg") for cls in ("cats", "dogs") for i in range(first, first + half)]
    return paths, np.array([0] * half + [1] * half)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default=None, help="default: random for resnet50, imagenet otherwise")
    parser.add_argument("--image-size", type=int, default=0, help="default: the backbone's")
    parser.add_argument("--images", type=int, default=320, help="training images per epoch (half cats, half dogs)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=0, help="blocks to unfreeze (default: the backbone's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="auto", help="auto (the default's), float32 or bfloat16")
    args = parser.parse_args()

    weights = args.weights or ("random" if args.backbone == "resnet50" else "imagenet")
    config = TrainConfig(data_dir=DATA, backbone=args.backbone, weights=weights, fine_tune=True,
                         fine_tune_blocks=args.blocks, fine_tune_epochs=args.epochs, fine_tune_patience=args.epochs,
                         fine_tune_batch_size=args.batch_size)
    precision = resolve_precision(args.precision)
    extractor = backbones.build_feature_extractor(args.backbone, weights, args.image_size, precision,
                                                  fold_batch_norm=False)
    head = build_head(extractor.output_shape[-1], 2, hidden_units=(256,))  # the dense head
    timer = TrainingTimer()
    validation = photos(2001 - args.batch_size // 2, args.batch_size)  # the last training photos: one batch
    finetune.fine_tune(extractor, head, photos(1, args.images), validation, config.fine_tune_settings(), [timer])
    steady = float(np.median(timer.seconds[1:]))
    print(json.dumps({
        "backbone": args.backbone, "weights": weights, "image_size": extractor.input_shape[1], "precision": precision,
        "unfrozen_blocks": args.blocks or backbones.get_backbone(args.backbone).default_fine_tune_blocks,
        "images_per_epoch": args.images, "batch_size": args.batch_size,
        "epoch_seconds": [round(s, 2) for s in timer.seconds], "steady_epoch_seconds": round(steady, 2),
        "train_images_per_second": round(args.images / steady, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }, indent=2))


if __name__ == "__main__":
    main()
