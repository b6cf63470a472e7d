"""`catsdogs bench`: how fast each backbone runs on this machine, against what its CPU can do.

For every backbone and precision, in a fresh process (so that its peak memory is its own):

- forward: images/s of the end-to-end model alone on ready batches (real photos, decoded and
  resized beforehand): the median of several timed calls after two warm-up calls; GFLOP/s from
  the model's FLOP count (TensorFlow's profiler on the frozen graph: multiply-adds count 2).
- from files: images/s of `inference.iter_batches`, i.e. of `catsdogs predict` and of feature
  extraction in `catsdogs train`, decoding and resizing included, in steady state: from the end
  of the first batch to the end of the last, so start-up and tear-down are left out.

The peak to compare with is the GFLOP/s of a large matrix multiplication in the same precision,
measured in the same run: what the CPU sustains on the best-tuned kernel there is. Without
pretrained weights (ResNet-50 offline) the backbone runs with random ones, which takes exactly as
long, and the report says so.
"""

import concurrent.futures
import datetime
import logging
import multiprocessing
import os
import tempfile

import numpy as np

from catsdogs.backbones import BACKBONES, member_names
from catsdogs.config import BENCH_BATCH_SIZES, PRECISIONS
from catsdogs.host import cpu_has_bfloat16, cpu_name, usable_cpus
from catsdogs.timing import files_rate, forward_rate, median_seconds, peak_rss_mb


def count_flops(model, image_size):
    """Floating-point operations of one image through a Keras model (TensorFlow's profiler, frozen graph)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(lambda images: model(images, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec((1, image_size, image_size, 3), tf.float32))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    graph = convert_variables_to_constants_v2(concrete).graph
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)  # the TF1 profiler warns that it is TF1
    try:
        return tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops
    finally:
        tf_logger.setLevel(level)


def matmul_gflops(precision, size=2048, repeats=5):
    """GFLOP/s of a size x size matrix multiplication: the practical peak of this CPU in a precision."""
    import tensorflow as tf

    dtype = {"float32": tf.float32, "bfloat16": tf.bfloat16}[precision]
    a = tf.cast(tf.random.stateless_uniform((size, size), (0, 1)), dtype)
    b = tf.cast(tf.random.stateless_uniform((size, size), (0, 2)), dtype)
    multiply = tf.function(tf.linalg.matmul)
    return 2 * size**3 / median_seconds(lambda: multiply(a, b).numpy(), repeats) / 1e9


def extractor_with_available_weights(backbone, precision, image_size=0, fold_batch_norm=True):
    """The backbone with ImageNet weights, or with random ones where those cannot be had.

    Returns:
        (extractor, "imagenet" or "random", why not ImageNet or "").
    """
    from catsdogs.backbones import build_feature_extractor
    from catsdogs.errors import WeightsError

    try:
        return build_feature_extractor(backbone, "imagenet", image_size, precision,
                                       fold_batch_norm=fold_batch_norm), "imagenet", ""
    except WeightsError as error:
        reason = str(error).splitlines()[0]
        return build_feature_extractor(backbone, "random", image_size, precision,
                                       fold_batch_norm=fold_batch_norm), "random", reason


def measure(backbone, precision, image_size, batch_sizes, paths, repeats):
    """Forward and from-files speed of one backbone in one precision (run in a fresh process).

    Returns:
        dict: weights used (and why not ImageNet), GFLOP per image, peak RSS, and one row per
        batch size with forward and from-files images/s.
    """
    import keras

    from catsdogs import model as model_lib
    from catsdogs.heads import build_head
    from catsdogs.inference import decoded_images
    from catsdogs.runtimes import compiled_forward

    extractor, weights, weights_note = extractor_with_available_weights(backbone, precision, image_size)
    image_size = extractor.input_shape[1]
    keras.utils.set_random_seed(0)
    head = build_head(extractor.output_shape[-1], 2)
    model = model_lib.assemble(extractor, head, ["cats", "dogs"])
    forward = compiled_forward(model)
    photos = decoded_images(paths[:max(batch_sizes)], image_size)
    rows = []
    for batch_size in batch_sizes:
        batch = np.resize(photos, (batch_size, *photos.shape[1:]))  # repeats photos when there are fewer
        from_files = files_rate(forward, paths, image_size, batch_size)
        rows.append({"batch_size": batch_size, "forward": forward_rate(forward, batch, repeats),
                     "from_files": from_files["steady"], "from_files_total": from_files["total"]})
    return {"backbone": backbone, "image_size": image_size, "precision": precision, "runtime": "keras",
            "weights": weights,
            "weights_note": weights_note, "gflop_per_image": count_flops(extractor, image_size) / 1e9,
            "rows": rows, "peak_rss_mb": peak_rss_mb()}


def export_onnx(backbone, image_size, path):
    """Writes the backbone in float32 as ONNX (run in a fresh process: conversion takes gigabytes).

    Returns:
        (weights used, why not ImageNet, GFLOP per image).
    """
    import tensorflow as tf

    from catsdogs.backbone_runtimes import export_onnx_file

    extractor, weights, weights_note = extractor_with_available_weights(backbone, "float32", image_size)
    image_size = extractor.input_shape[1]
    signature = [tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name="pixels")]
    export_onnx_file(extractor, path, signature)
    return weights, weights_note, count_flops(extractor, image_size) / 1e9


def measure_onnx(backbone, path, batch_sizes, paths, repeats):
    """Forward speed of an ONNX backbone in ONNX Runtime, the reference runtime (run in a fresh process)."""
    from catsdogs.inference import decoded_images
    from catsdogs.backbone_runtimes import onnx_session

    session = onnx_session(path)
    input_name = session.get_inputs()[0].name
    photos = decoded_images(paths[:max(batch_sizes)], session.get_inputs()[0].shape[1])
    rows = []
    for batch_size in batch_sizes:
        batch = np.resize(photos, (batch_size, *photos.shape[1:]))
        rate = forward_rate(lambda images: session.run(None, {input_name: images})[0], batch, repeats)
        rows.append({"batch_size": batch_size, "forward": rate, "from_files": None, "from_files_total": None})
    return {"backbone": backbone, "image_size": session.get_inputs()[0].shape[1], "precision": "float32",
            "runtime": "onnxruntime", "rows": rows,
            "peak_rss_mb": peak_rss_mb()}


def peaks(precisions, repeats):
    """Matrix multiplication GFLOP/s per precision (run in a fresh process)."""
    return {precision: matmul_gflops(precision, repeats=repeats) for precision in precisions}


def synthetic_photos(folder, count, seed=0):
    """Writes `count` JPEG photos of 500x375 pixels, the usual size of the cats and dogs photos.

    Smooth colour fields with mild noise, so that they compress and decode like photographs.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500] / 500
    paths = []
    for i in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        pixels = np.stack([np.sin(6 * x + 4 * y + p) for p in phase], axis=-1) * 90 + 128
        pixels += rng.normal(0, 6, pixels.shape)
        paths.append(os.path.join(folder, f"photo{i:05d}.jpg"))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def run_bench(backbones=None, precisions=None, batch_sizes=BENCH_BATCH_SIZES, images=256,
              data_dir=None, repeats=5, quick=False, onnx=False, image_size=0):
    """Measures every backbone in every precision; each in its own process.

    Args:
        backbones: names from `backbones.BACKBONES`, or ensembles of them ("a+b"); default all.
        precisions: from `config.PRECISIONS`; default both where the CPU has native bfloat16.
        batch_sizes: images per forward pass to measure.
        images: photos to predict from files at each batch size.
        data_dir: a folder of photos (searched below); default: synthetic 500x375 JPEG photos.
        repeats: timed calls per forward measurement (the median is reported).
        quick: a smoke test, not a measurement: 2 timed repeats.
        onnx: also time the backbones in float32 in ONNX Runtime, as a reference.
        image_size: input side in pixels; 0 for each backbone's default.

    Returns:
        a JSON-ready dict: machine, settings, peaks and one result per backbone and precision.
    """
    from catsdogs.data import expand_inputs, spread
    from catsdogs.extras import require

    if onnx:
        require("onnx", "timing ONNX Runtime")  # before minutes of measuring, not after
    backbones = list(backbones or BACKBONES)
    for name in backbones:  # unknown names fail here, not later; ensembles ("a+b") are measured as one extractor
        member_names(name)
    precisions = precisions or (PRECISIONS if cpu_has_bfloat16() else ("float32",))
    repeats = 2 if quick else repeats
    images = max(images, 3 * max(batch_sizes))  # at least three batches, to see a steady state
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "usable_cores": usable_cpus(), "native_bfloat16": cpu_has_bfloat16()},
        "settings": {"backbones": list(backbones), "precisions": list(precisions), "batch_sizes": list(batch_sizes),
                     "images": images, "repeats": repeats, "quick": quick,
                     "image_size": image_size or "backbone default"},
        "results": [],
    }
    # Each measurement in a fresh process: its own peak memory, no state left by the one before.
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        if data_dir:
            paths = spread(expand_inputs([data_dir]), images)
            report["photos"] = f"{len(paths)} photos from {data_dir}"
        else:
            paths = synthetic_photos(folder, images)
            report["photos"] = f"{len(paths)} synthetic 500x375 JPEG photos (no --data given)"

        def in_fresh_process(function, *args):
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                return pool.submit(function, *args).result()

        report["peak_gflops"] = in_fresh_process(peaks, precisions, repeats)
        for backbone in backbones:
            for precision in precisions:
                report["results"].append(in_fresh_process(measure, backbone, precision, image_size, batch_sizes,
                                                                  paths, repeats))
            if onnx:
                path = os.path.join(folder, f"{backbone}.onnx")
                weights, weights_note, gflop = in_fresh_process(export_onnx, backbone, image_size, path)
                result = in_fresh_process(measure_onnx, backbone, path, batch_sizes, paths, repeats)
                report["results"].append({**result, "weights": weights, "weights_note": weights_note,
                                          "gflop_per_image": gflop})
    for result in report["results"]:
        peak = report["peak_gflops"][result["precision"]]
        for row in result["rows"]:
            row["gflops"] = row["forward"] * result["gflop_per_image"]
            row["percent_of_peak"] = 100 * row["gflops"] / peak
    return report


def format_report(report):
    """The results as a table, with the machine and what was measured on it."""
    machine = report["machine"]
    lines = [f"{report['date']}  {machine['cpu']}, {machine['usable_cores']} cores, "
             f"native bfloat16: {'yes' if machine['native_bfloat16'] else 'no'}",
             f"photos: {report['photos']}",
             "peak (matrix multiplication, measured): "
             + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in report["peak_gflops"].items()), ""]
    width = max(19, *(len(r["backbone"]) + 1 for r in report["results"]))  # ensembles have long names
    lines.append(f"{'backbone':<{width}}{'precision':<10}{'runtime':<12}{'batch':>5}{'forward img/s':>15}"
                 f"{'GFLOP/s':>9}{'% peak':>8}{'files img/s':>13}{'files/fwd':>10}{'peak RSS MB':>13}")
    for result in report["results"]:
        for row in result["rows"]:
            files = f"{row['from_files']:13.1f}{row['from_files'] / row['forward']:10.0%}" if row["from_files"] else f"{'-':>13}{'-':>10}"
            lines.append(f"{result['backbone']:<{width}}{result['precision']:<10}{result['runtime']:<12}{row['batch_size']:>5}"
                         f"{row['forward']:15.1f}{row['gflops']:9.0f}{row['percent_of_peak']:7.0f}%{files}"
                         f"{result['peak_rss_mb']:13.0f}")
    lines.append("")
    lines += [f"{r['backbone']} at {r['image_size']} px: {r['gflop_per_image']:.2f} GFLOP per image" for r in report["results"]
              if r["precision"] == "float32" and r["runtime"] == "keras"]
    notes = {f"{r['backbone']} ran with random weights: its ImageNet weights are unavailable here (the JSON "
             f"output says why); speed does not depend on the weights' values"
             for r in report["results"] if r["weights"] == "random"}
    lines += sorted(notes)
    lines.append("forward: the model alone on ready batches (median); files: decoding and resizing included, "
                 "steady state (as catsdogs predict and feature extraction)")
    return "\n".join(lines)
