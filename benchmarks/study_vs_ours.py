"""The study's way of training against catsdogs' way, on the same photos, backbone and machine.

The study's way (the original notebook): a Keras image generator decodes every photo on every
epoch and the frozen backbone runs on all of them each time, inside `fit(epochs=10,
validation_data=...)`. Keras 3 no longer has `ImageDataGenerator`; its replacement,
`keras.utils.image_dataset_from_directory`, decodes and resizes every photo on every epoch in the
same way (and faster, with TensorFlow's decoder and prefetching). The backbone is the plain
Keras one in float32 with its BatchNormalization layers, as the study had it.

catsdogs' way: `catsdogs train` with a cold feature cache, so that computing the features counts:
integrity scan, features once (bfloat16 where the CPU has it, BatchNormalization folded), the
same head (256 ReLU units, dropout 0.5, Adam 1e-3, batch 32) at the same 224 pixels for the same
10 epochs on cached features, evaluation, figures and report ("catsdogs, same head"). For timing
it runs a second time in float32 to show what the cache alone gives. The last way is
`catsdogs train` with its defaults (cross-validated logistic head at the backbone's own size,
Lite0 at 380 pixels; temperature scaling), which is what a user gets.

Timing uses ResNet-50 with random weights (ImageNet weights cannot be downloaded here; the time
does not depend on them); accuracy uses EfficientNet-Lite0 with its real ImageNet weights. Each
way runs in a fresh process; the time is measured inside it, from the start of the work to the
test accuracy, so that importing TensorFlow counts for neither.

    flock /tmp/catsdogs-heavy.lock .venv/bin/python benchmarks/study_vs_ours.py
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import shutil
import statistics
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 10
BATCH_SIZE = 32
STUDY_IMAGE_SIZE = 224


def link_slice(source, target, train_per_class, test_per_class):
    """A Kaggle-layout dataset of symlinks to the first photos of each class (never copies)."""
    for split, folder, count in (("train", "training_set", train_per_class), ("test", "test_set", test_per_class)):
        for cls in ("cats", "dogs"):
            photos = sorted((source / folder / cls).iterdir(), key=lambda p: int(p.stem.split(".")[1]))[:count]
            (target / folder / cls).mkdir(parents=True)
            for photo in photos:
                (target / folder / cls / photo.name).symlink_to(photo)
    return target


def study_way(data_dir, backbone, weights, cache_dir, seed):
    """The notebook's training: generator over files, frozen float32 backbone on every photo every epoch.

    Returns:
        dict: seconds, test accuracy, epochs.
    """
    os.environ["CATSDOGS_CACHE"] = cache_dir
    import keras

    from catsdogs.models.backbones import build_feature_extractor

    start = time.perf_counter()
    train, val = keras.utils.image_dataset_from_directory(
        f"{data_dir}/training_set", label_mode="binary", image_size=(STUDY_IMAGE_SIZE,) * 2,
        batch_size=BATCH_SIZE, validation_split=0.2, subset="both", seed=seed)
    test = keras.utils.image_dataset_from_directory(
        f"{data_dir}/test_set", label_mode="binary", image_size=(STUDY_IMAGE_SIZE,) * 2,
        batch_size=BATCH_SIZE, shuffle=False)
    keras.utils.set_random_seed(seed)
    extractor = build_feature_extractor(backbone, weights, STUDY_IMAGE_SIZE, "float32", fold_batch_norm=False)
    inputs = keras.Input((STUDY_IMAGE_SIZE, STUDY_IMAGE_SIZE, 3))
    x = keras.layers.Dense(256, activation="relu")(extractor(inputs))
    x = keras.layers.Dropout(0.5)(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=EPOCHS, verbose=2)
    _, accuracy = model.evaluate(test, verbose=0)
    return {"seconds": time.perf_counter() - start, "accuracy": float(accuracy), "epochs": EPOCHS}


def our_way(data_dir, backbone, weights, cache_dir, seed, precision, runs_dir, study_head=True):
    """`catsdogs train` with a cold feature cache: the study's head, size and epochs, or the defaults.

    Returns:
        dict: seconds, test accuracy, epochs, precision.
    """
    os.environ["CATSDOGS_CACHE"] = cache_dir
    from catsdogs.config.train import TrainConfig
    from catsdogs.engine.train import train
    from catsdogs.models.backbones import get_backbone
    from catsdogs.models.precision import resolve_precision

    study = {"head": "dense", "image_size": STUDY_IMAGE_SIZE, "max_epochs": EPOCHS, "patience": EPOCHS,
             "batch_size": BATCH_SIZE} if study_head else {}
    config = TrainConfig(data_dir=data_dir, backbone=backbone, weights=weights, precision=precision,
                         cache_dir=cache_dir, runs_dir=runs_dir, seed=seed, **study)
    start = time.perf_counter()
    metrics = train(config).metrics
    return {"seconds": time.perf_counter() - start, "accuracy": metrics["accuracy"],
            "epochs": EPOCHS if study_head else None,  # the default head is fitted to convergence, not by epochs
            "precision": resolve_precision(precision),
            "image_size": config.image_size or get_backbone(backbone).default_image_size}


def converted_weights(cache_dir):
    """Converts Lite0's ImageNet weights into a cache once, outside any timing."""
    os.environ["CATSDOGS_CACHE"] = cache_dir
    from catsdogs.models.backbones import build_feature_extractor

    build_feature_extractor("efficientnet_lite0")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cats-and-dogs"))
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=1000, help="default: the whole test folder")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[42, 43, 44],
                        help="seeds of the accuracy comparison, each way (the timing uses the first)")
    parser.add_argument("--purposes", default="timing,accuracy", help="which comparisons to run (default: both)")
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")

    def in_fresh_process(function, *function_args):
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            return pool.submit(function, *function_args).result()

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        data_dir = str(link_slice(pathlib.Path(args.data), scratch / "data", args.train_per_class, args.test_per_class))
        weights_cache = str(scratch / "weights-cache")
        in_fresh_process(converted_weights, weights_cache)
        cases = [case for case in [("timing", "resnet50", "random", args.seeds[:1]),
                                   ("accuracy", "efficientnet_lite0", "imagenet", args.seeds)]
                 if case[0] in args.purposes.split(",")]
        for purpose, backbone, weights, seeds in cases:
            runs = str(scratch / "runs")
            ways = [("study", study_way, ()), ("catsdogs, same head", our_way, ("auto", runs))]
            if purpose == "timing":
                ways.append(("same head, float32", our_way, ("float32", runs)))
            ways.append(("catsdogs defaults", our_way, ("auto", runs, False)))
            for seed in seeds:
                for way, function, extra in ways:
                    cache = scratch / f"cache-{backbone}-{way.replace(' ', '').replace(',', '-')}-{seed}"  # cold for each run
                    shutil.copytree(weights_cache, cache)
                    result = in_fresh_process(function, data_dir, backbone, weights, str(cache), seed, *extra)
                    results.append({"purpose": purpose, "backbone": backbone, "weights": weights, "way": way,
                                    "seed": seed, **result})
                    print(f"{backbone} ({weights} weights), {way}, seed {seed}: {result['seconds']:.1f} s, "
                          f"test accuracy {result['accuracy']:.4f}", flush=True)

    images = (f"{2 * args.train_per_class} training photos ({args.train_per_class} per class, 20% of them for "
              f"validation) and {2 * args.test_per_class} test photos, the first of each class")
    print(f"\n{images}; the study's head: {EPOCHS} epochs; medians over seeds {args.seeds} for the accuracy runs\n")
    print(f"{'backbone':<31}{'way':<22}{'wall time s':>12}{'speed-up':>10}{'test accuracy':>15}{'runs':>6}")
    summary = {}
    for result in results:
        summary.setdefault((result["backbone"], result["weights"], result["way"]), []).append(result)
    for (backbone, weights, way), runs in summary.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        study = statistics.median(r["seconds"] for r in summary[backbone, weights, "study"])
        accuracy = statistics.median(r["accuracy"] for r in runs)
        print(f"{backbone + ' (' + weights + ')':<31}{way:<22}{seconds:12.1f}{study / seconds:9.1f}x"
              f"{accuracy:15.4f}{len(runs):6d}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"images": images, "epochs": EPOCHS, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
