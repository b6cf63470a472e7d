"""Fine-tuning speed on this machine: training images per second and seconds per epoch.

Fine-tunes the top blocks of a backbone end to end (augmentation on, BatchNorm frozen), as
`catsdogs train --fine-tune` does, on real photos, and times epochs after the first (which
includes tracing). ResNet-50 runs with random weights: speed does not depend on weight values.

    python benchmarks/finetune_speed.py --backbone resnet50 --images 320
"""

import argparse
import json
import os
import platform
import time

import keras
import numpy as np

from catsdogs import backbones, finetune
from catsdogs import model as model_lib

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cats-and-dogs", "training_set")


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = getattr(self, "seconds", []) + [time.perf_counter() - self.start]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default=None, help="default: random for resnet50, imagenet otherwise")
    parser.add_argument("--image-size", type=int, default=0)
    parser.add_argument("--images", type=int, default=320, help="training images per epoch (half cats, half dogs)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=0, help="blocks to unfreeze (default: the backbone's)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    weights = args.weights or ("random" if args.backbone == "resnet50" else "imagenet")
    extractor = backbones.build_feature_extractor(args.backbone, weights, args.image_size)
    size = extractor.input_shape[1]
    head = model_lib.build_head(extractor.output_shape[-1], 2, "dense")
    blocks = args.blocks or backbones.get_backbone(args.backbone).default_fine_tune_blocks
    finetune.unfreeze_top(extractor, blocks)
    image = keras.Input((size, size, 3))
    trainer = keras.Model(image, head(extractor(image, training=False)))
    model_lib.compile_classifier(trainer, True, 1e-4)
    half = args.images // 2
    paths = [os.path.join(DATA, cls, f"{cls[:-1]}.{i}.jpg") for cls in ("cats", "dogs") for i in range(1, half + 1)]
    labels = np.array([0] * half + [1] * half)
    batches = finetune.labelled_batches(paths, labels, size, args.batch_size, True, finetune.augmentation(0), 0)
    timer = EpochTimer()
    trainer.fit(batches, epochs=args.epochs, verbose=0, shuffle=False, callbacks=[timer])
    steady = float(np.median(timer.seconds[1:]))
    print(json.dumps({
        "backbone": args.backbone, "weights": weights, "image_size": size, "unfrozen_blocks": blocks,
        "images_per_epoch": len(paths), "batch_size": args.batch_size,
        "epoch_seconds": [round(s, 2) for s in timer.seconds], "steady_epoch_seconds": round(steady, 2),
        "train_images_per_second": round(len(paths) / steady, 2), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }, indent=2))


if __name__ == "__main__":
    main()
