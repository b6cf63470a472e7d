"""`catsdogs bench`: how fast each backbone runs on this machine, in every runtime, against what its CPU can do.

For every backbone, each runtime and precision side by side in one run (`RUNTIME_PRECISIONS`; each measurement in a fresh
process, so that its peak memory is its own and no state is left by the one before):

- Keras in float32, and in bfloat16 where the CPU computes it natively (`--precision` chooses);
  whether TensorFlow ran its oneDNN kernels is recorded with each result;
- ONNX Runtime in float32, the backbone converted once and cached (`backbone_runtimes`);
- ONNX Runtime in int8: static post-training quantization of that file, calibrated on the
  bench's own photos (they are what it times; calibration sets ranges, so this is right for
  speed and says nothing of accuracy, which `catsdogs train --precision int8` measures);
- OpenVINO in float32 on the same ONNX file, where it is installed, with its inference precision
  hint set to f32 (by default it computes in bfloat16 on bfloat16 CPUs, which would not compare).

Every runtime runs the backbone alone, as feature extraction does (a head is a few hundred
thousand operations of billions). An ensemble ("a+b") runs in Keras only.

- forward: images/s of the model alone on ready batches (real photos, decoded and resized
  beforehand): the median of several timed calls after two warm-up calls; GFLOP/s from the
  Keras float32 model's FLOP count (TensorFlow's profiler on the frozen graph: multiply-adds
  count 2), the same count for every runtime and precision.
- from files: images/s of feature extraction as `catsdogs train` runs it, the very function
  (`inference.features.compute_features`: the photo pipeline of `catsdogs predict` too, and the
  feature cache's writes), decoding and resizing included, in steady state: from the end of the
  first batch to the end of the last, so start-up and tear-down are left out. What it says for a
  backbone, runtime and precision is what training extracts at (docs/BENCHMARKS.md).

"% of peak" compares with the peak of the runtime's precision, measured in the same run by a
tuned kernel that is not the one being measured:

- float32: numpy's matrix multiplication (OpenBLAS sgemm; the report names the kernel OpenBLAS
  chose for this CPU, which OPENBLAS_CORETYPE can force);
- bfloat16 (only where measured): TensorFlow's bfloat16 matrix multiplication, i.e. oneDNN's;
- int8: ONNX Runtime's integer matrix multiplication (MatMulInteger, uint8 x int8, MLAS's VNNI
  or AMX kernels where the CPU has them), 2 n^3 operations.

The report names the CPU's flags that decide which kernels run (AVX2, FMA, AVX-512, VNNI,
bfloat16), the environment variables that override them, and the fastest runtime from files per
backbone. Without pretrained weights (ResNet-50 offline) the backbone runs with random ones, which
takes exactly as long, and the report says so.
"""

import concurrent.futures
import datetime
import importlib.util
import logging
import multiprocessing
import os
import tempfile

import numpy as np

from catsdogs.config.choices import BENCH_BATCH_SIZES, BENCH_RUNTIMES, PRECISIONS, default_cache_dir
from catsdogs.engine.timing import files_rate, forward_rate, median_seconds, peak_rss_mb
from catsdogs.errors import ConfigError, MissingDependency
from catsdogs.utils.host import cpu_flags, cpu_has_bfloat16, cpu_name, usable_cpus

# The precisions each runtime is timed in (`--runtimes` and `--precisions` choose among them).
RUNTIME_PRECISIONS = {"keras": PRECISIONS, "onnx": ("float32", "int8"), "openvino": ("float32",)}
# The CPU flags that decide which kernels run: FMA units, vector width, int8 dot products, bfloat16.
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
# Environment variables that force a lesser kernel than the CPU has (to emulate another CPU) or turn oneDNN on or off.
KERNEL_ENVIRONMENT = ("OPENBLAS_CORETYPE", "ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS")
PEAK_SIZE = 2048  # side of the peak's square matrices: large enough for the tuned kernels' full speed


def cpu_kind(flags=None):
    """A short description of the CPU by the flags of CPU_FLAGS_OF_INTEREST, e.g. "AVX-512, VNNI, bfloat16"."""
    flags = cpu_flags() if flags is None else set(flags)
    if "avx512f" in flags:
        kind = ["AVX-512"]
    elif {"avx2", "fma"} <= flags:
        kind = ["AVX2+FMA"]
    else:
        return "no AVX2+FMA"
    if flags & {"avx512_vnni", "avx_vnni"}:
        kind.append("VNNI" if "avx512_vnni" in flags else "AVX-VNNI")
    if flags & {"avx512_bf16", "amx_bf16"}:
        kind.append("bfloat16" + (" (AMX)" if "amx_bf16" in flags else ""))
    return ", ".join(kind)


def openblas_info():
    """The BLAS numpy uses: library, version, the kernel it chose for this CPU ("architecture"), threads."""
    from threadpoolctl import threadpool_info

    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    if not blas:
        return {"library": "unknown"}
    # numpy's wheels bring their own OpenBLAS (in numpy.libs); scipy's, loaded too, may be another version.
    pool = next((pool for pool in blas if os.path.basename(os.path.dirname(pool["filepath"])).startswith("numpy")),
                blas[0])
    return {"library": pool["internal_api"], "version": pool.get("version"),
            "architecture": pool.get("architecture", "unknown"), "threads": pool["num_threads"]}


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


def sgemm_gflops(size=PEAK_SIZE, repeats=5):
    """GFLOP/s of numpy's float32 matrix multiplication (OpenBLAS sgemm) on every usable core: the float32 peak."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    out = np.empty((size, size), np.float32)
    with threadpool_limits(usable_cpus(), user_api="blas"):
        return 2 * size**3 / median_seconds(lambda: np.matmul(a, b, out=out), repeats) / 1e9


def tensorflow_matmul_gflops(precision="bfloat16", size=PEAK_SIZE, repeats=5):
    """GFLOP/s of TensorFlow's matrix multiplication in a precision (oneDNN's kernel where oneDNN is on)."""
    import tensorflow as tf

    dtype = {"float32": tf.float32, "bfloat16": tf.bfloat16}[precision]
    a = tf.cast(tf.random.stateless_uniform((size, size), (0, 1)), dtype)
    b = tf.cast(tf.random.stateless_uniform((size, size), (0, 2)), dtype)
    multiply = tf.function(tf.linalg.matmul)
    return 2 * size**3 / median_seconds(lambda: multiply(a, b).numpy(), repeats) / 1e9


def int8_gemm_gops(size=PEAK_SIZE, repeats=5):
    """Billions of int8 operations per second of ONNX Runtime's integer matrix multiplication: the int8 peak.

    A one-node ONNX graph, MatMulInteger of uint8 activations by constant int8 weights (as the
    quantized backbone's convolutions are: uint8 x int8), in `inference.backbone_runtime.onnx_session`;
    a multiply-add counts 2, so a size^3 product is 2 size^3 operations.
    """
    from onnx import TensorProto, helper, numpy_helper

    from catsdogs.inference.backbone_runtime import onnx_session

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.integers(-128, 128, (size, size), dtype=np.int8), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what every ONNX Runtime since 1.10 reads
    a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "int8_gemm.onnx")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        session = onnx_session(path)
        return 2 * size**3 / median_seconds(lambda: session.run(None, {"a": a}), repeats) / 1e9


def peak(precision, repeats):
    """The peak of one precision and what measured it (run in a fresh process).

    Returns:
        dict: gflops (billions of operations per second; for int8 integer ones), measured_by.
    """
    if precision == "float32":
        blas = openblas_info()
        return {"gflops": sgemm_gflops(repeats=repeats),
                "measured_by": f"numpy sgemm {PEAK_SIZE}x{PEAK_SIZE} ({blas['library']} {blas.get('version')}, "
                               f"{blas.get('architecture')} kernel)"}
    if precision == "bfloat16":
        native = "" if cpu_has_bfloat16() else "; this CPU has no native bfloat16: emulated, not a peak"
        return {"gflops": tensorflow_matmul_gflops("bfloat16", repeats=repeats),
                "measured_by": f"TensorFlow bfloat16 matmul {PEAK_SIZE}x{PEAK_SIZE} (oneDNN{native})"}
    if precision == "int8":
        return {"gflops": int8_gemm_gops(repeats=repeats),
                "measured_by": f"ONNX Runtime MatMulInteger uint8 x int8 {PEAK_SIZE}x{PEAK_SIZE} (MLAS)"}
    raise ValueError(f"no peak for precision {precision!r}")


def extractor_with_available_weights(backbone, precision, image_size=0, fold_batch_norm=True):
    """The backbone with ImageNet weights, or with random ones where those cannot be had.

    Returns:
        (extractor, "imagenet" or "random", why not ImageNet or "").
    """
    from catsdogs.errors import WeightsError
    from catsdogs.models.backbones import build_feature_extractor

    try:
        return build_feature_extractor(backbone, "imagenet", image_size, precision,
                                       fold_batch_norm=fold_batch_norm), "imagenet", ""
    except WeightsError as error:
        reason = str(error).splitlines()[0]
        return build_feature_extractor(backbone, "random", image_size, precision,
                                       fold_batch_norm=fold_batch_norm), "random", reason


def _onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels in this process (None where it cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def _rows(forward, paths, image_size, batch_sizes, repeats):
    """Forward and from-files images/s of a callable at each batch size."""
    from catsdogs.inference.pipeline import decoded_images

    photos = decoded_images(paths[:max(batch_sizes)], image_size)
    rows = []
    for batch_size in batch_sizes:
        batch = np.resize(photos, (batch_size, *photos.shape[1:]))  # repeats photos when there are fewer
        from_files = files_rate(forward, paths, image_size, batch_size)
        rows.append({"batch_size": batch_size, "forward": forward_rate(forward, batch, repeats),
                     "from_files": from_files["steady"], "from_files_total": from_files["total"]})
    return rows


def measure(backbone, precision, image_size, batch_sizes, paths, repeats):
    """Forward and from-files speed of one backbone in Keras in one precision (run in a fresh process).

    Returns:
        dict: weights used (and why not ImageNet), GFLOP per image, whether oneDNN was on, peak
        RSS, and one row per batch size with forward and from-files images/s.
    """
    from catsdogs.inference.model_formats import compiled_forward

    extractor, weights, weights_note = extractor_with_available_weights(backbone, precision, image_size)
    image_size = extractor.input_shape[1]
    rows = _rows(compiled_forward(extractor), paths, image_size, batch_sizes, repeats)  # as training extracts
    return {"backbone": backbone, "image_size": image_size, "precision": precision, "runtime": "keras",
            "weights": weights, "weights_note": weights_note,
            "gflop_per_image": count_flops(extractor, image_size) / 1e9, "onednn": _onednn_enabled(),
            "rows": rows, "peak_rss_mb": peak_rss_mb()}


def prepare_onnx(backbone, image_size, cache_dir, calibration_paths, scratch_dir):
    """The backbone as float32 ONNX, and as int8 if `calibration_paths` (run in a fresh process: conversion takes gigabytes).

    Both are cached (`inference.backbone_runtime.onnx_backbone_file`, `quantized_backbone_file`) in
    `cache_dir` for ImageNet weights; random ones (a new draw each run) in `scratch_dir`, the
    bench's temporary folder.

    Returns:
        dict: float32 and int8 (None without calibration photos) file paths, weights used, why not
        ImageNet, the input side, GFLOP per image of the Keras float32 backbone.
    """
    from catsdogs.inference.backbone_runtime import onnx_backbone_file, quantized_backbone_file

    extractor, weights, weights_note = extractor_with_available_weights(backbone, "float32", image_size)
    image_size = extractor.input_shape[1]
    if weights != "imagenet":
        cache_dir = scratch_dir
    float32_file = onnx_backbone_file(extractor, cache_dir)
    int8_file = (quantized_backbone_file(float32_file, calibration_paths, image_size, cache_dir)
                 if calibration_paths else None)
    return {"float32": float32_file, "int8": int8_file, "weights": weights, "weights_note": weights_note,
            "image_size": image_size, "gflop_per_image": count_flops(extractor, image_size) / 1e9}


def openvino_forward(path):
    """An ONNX backbone compiled by OpenVINO for this CPU in float32: a callable on pixels, and what it reports.

    Returns:
        (forward, its INFERENCE_PRECISION_HINT as OpenVINO reports it after compiling).
    """
    import openvino

    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                           "INFERENCE_NUM_THREADS": usable_cpus()})
    request = compiled.create_infer_request()

    def forward(images):
        return np.array(request.infer({0: np.asarray(images, np.float32)})[0])  # a copy: the request reuses its buffer

    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return forward, hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)


def measure_runtime(backbone, runtime, precision, path, image_size, batch_sizes, paths, repeats):
    """Forward and from-files speed of an ONNX backbone in ONNX Runtime or OpenVINO (run in a fresh process).

    Args:
        runtime: "onnx" (ONNX Runtime; precision "float32" or "int8", as the file is) or "openvino" (float32).
    """
    from catsdogs.inference.backbone_runtime import OnnxBackbone

    extra = {}
    if runtime == "openvino":
        forward, extra["openvino_precision"] = openvino_forward(path)
    else:
        forward = OnnxBackbone(path, precision)
    return {"backbone": backbone, "image_size": image_size, "precision": precision, "runtime": runtime,
            "rows": _rows(forward, paths, image_size, batch_sizes, repeats), "peak_rss_mb": peak_rss_mb(), **extra}


def available_runtimes(runtimes):
    """The runtimes to measure, and a note for each left out because it is not installed.

    Args:
        runtimes: names from `config.choices.BENCH_RUNTIMES`, or None for all that are installed.

    Raises:
        MissingDependency: a runtime asked for by name is not installed.
    """
    from catsdogs.utils.extras import require

    asked = runtimes is not None
    runtimes = list(BENCH_RUNTIMES if runtimes is None else runtimes)
    unknown = [name for name in runtimes if name not in BENCH_RUNTIMES]
    if unknown:
        raise ConfigError(f"unknown runtime {', '.join(unknown)}; choose from {', '.join(BENCH_RUNTIMES)}"
                          + (" (int8 is a precision: --runtimes onnx --precisions int8)" if "int8" in unknown else ""))
    missing_onnx = [name for name in ("tf2onnx", "onnxruntime", "onnx") if importlib.util.find_spec(name) is None]
    notes = []
    onnx_based = [name for name in runtimes if name != "keras"]  # OpenVINO too reads the converted ONNX file
    if missing_onnx and onnx_based:
        if asked:
            require("onnx", f"timing {', '.join(onnx_based)}")
            raise MissingDependency(f"timing {', '.join(onnx_based)} needs {' and '.join(missing_onnx)}: "
                                    f"pip install {' '.join(missing_onnx)}")
        notes.append(f"{', '.join(onnx_based)} not measured: they need {' and '.join(missing_onnx)}, not installed "
                     f"(pip install \"catsdogs[onnx]\")")
        runtimes = [name for name in runtimes if name == "keras"]
    if "openvino" in runtimes and importlib.util.find_spec("openvino") is None:
        if asked:
            raise MissingDependency("timing OpenVINO needs openvino, which is not installed: pip install openvino")
        notes.append("OpenVINO not measured: openvino is not installed (pip install openvino)")
        runtimes.remove("openvino")
    return runtimes, notes


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


def machine():
    """The CPU, its flags of interest, numpy's BLAS kernel and the environment variables that override kernels."""
    flags = cpu_flags()
    return {"cpu": cpu_name(), "usable_cores": usable_cpus(), "native_bfloat16": cpu_has_bfloat16(),
            "cpu_kind": cpu_kind(flags), "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST},
            "blas": openblas_info(),
            "environment": {name: os.environ[name] for name in KERNEL_ENVIRONMENT if name in os.environ}}


def run_bench(backbones=None, precisions=None, batch_sizes=BENCH_BATCH_SIZES, images=256,
              data_dir=None, repeats=5, quick=False, runtimes=None, image_size=0, cache_dir=None):
    """Measures every backbone in every runtime; each measurement in its own process.

    Args:
        backbones: names from `backbones.BACKBONES`, or ensembles of them ("a+b"); default all.
        precisions: from `config.choices.BACKBONE_PRECISIONS`; each runtime is timed in those it has
            (`RUNTIME_PRECISIONS`); default float32, int8, and bfloat16 where the CPU has it natively.
        batch_sizes: images per forward pass to measure.
        images: photos to predict from files at each batch size (and to calibrate int8 on).
        data_dir: a folder of photos (searched below); default: synthetic 500x375 JPEG photos.
        repeats: timed calls per forward measurement (the median is reported).
        quick: a smoke test, not a measurement: 2 timed repeats.
        runtimes: names from `config.choices.BENCH_RUNTIMES`; default all that are installed (the others are noted).
        image_size: input side in pixels; 0 for each backbone's default.
        cache_dir: where converted ONNX backbones are cached; default `config.choices.default_cache_dir()`.

    Returns:
        a JSON-ready dict: machine, settings, peaks and one result per backbone, runtime and precision.
    """
    from catsdogs.data.dataset import expand_inputs
    from catsdogs.data.splits import spread
    from catsdogs.inference.backbone_runtime import CALIBRATION_PHOTOS
    from catsdogs.models.backbones import BACKBONES, member_names

    runtimes, notes = available_runtimes(runtimes)  # before minutes of measuring, not after
    backbones = list(backbones or BACKBONES)
    for name in backbones:  # unknown names fail here, not later; ensembles ("a+b") are measured as one extractor
        member_names(name)
    precisions = precisions or ("float32", "int8", *(("bfloat16",) if cpu_has_bfloat16() else ()))
    runs = [(runtime, precision) for runtime in runtimes for precision in RUNTIME_PRECISIONS[runtime]
            if precision in precisions]
    if not runs:
        raise ConfigError(f"no runtime of {', '.join(runtimes)} computes in {', '.join(precisions)} "
                          f"(keras: float32, bfloat16; onnx: float32, int8; openvino: float32)")
    keras_precisions = [precision for runtime, precision in runs if runtime == "keras"]
    single = any(len(member_names(name)) == 1 for name in backbones)  # ensembles run in Keras only
    onnx_runs = [(runtime, precision) for runtime, precision in runs if runtime != "keras" and single]
    measured = {*keras_precisions, *(precision for _, precision in onnx_runs)}  # the precisions that need a peak
    repeats = 2 if quick else repeats
    images = max(images, 3 * max(batch_sizes))  # at least three batches, to see a steady state
    cache_dir = cache_dir or default_cache_dir()
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {"backbones": list(backbones), "runtimes": runtimes, "precisions": list(precisions),
                     "batch_sizes": list(batch_sizes), "images": images, "repeats": repeats, "quick": quick,
                     "image_size": image_size or "backbone default"},
        "results": [],
        "notes": notes,
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
        if ("onnx", "int8") in onnx_runs:
            notes.append(f"int8: statically quantized with the bench's own {min(len(paths), CALIBRATION_PHOTOS)} photos as "
                         f"calibration (right for speed; accuracy is measured by training with --precision int8)")

        def in_fresh_process(function, *args):
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                return pool.submit(function, *args).result()

        peaks = {precision: in_fresh_process(peak, precision, repeats)
                 for precision in ("float32", "bfloat16", "int8") if precision in measured}
        report["peak_gflops"] = {precision: p["gflops"] for precision, p in peaks.items()}
        report["peak_measured_by"] = {precision: p["measured_by"] for precision, p in peaks.items()}
        for backbone in backbones:
            for precision in keras_precisions:
                report["results"].append(in_fresh_process(measure, backbone, precision, image_size, batch_sizes,
                                                          paths, repeats))
            onnx_runtimes = sorted({runtime for runtime, _ in runs if runtime != "keras"})
            if onnx_runtimes and len(member_names(backbone)) > 1:
                notes.append(f"{backbone}: an ensemble runs in Keras only; {', '.join(onnx_runtimes)} not measured")
                continue
            if not onnx_runs:
                continue
            files = in_fresh_process(prepare_onnx, backbone, image_size, cache_dir,
                                     paths if ("onnx", "int8") in onnx_runs else [], folder)
            common = {"weights": files["weights"], "weights_note": files["weights_note"],
                      "gflop_per_image": files["gflop_per_image"]}
            for runtime, precision in onnx_runs:
                result = in_fresh_process(measure_runtime, backbone, runtime, precision, files[precision],
                                          files["image_size"], batch_sizes, paths, repeats)
                report["results"].append({**result, **common})
    # GFLOP per image from the Keras float32 model, the same work whatever runs it.
    gflop = {r["backbone"]: r["gflop_per_image"] for r in report["results"]
             if r["runtime"] == "keras" and r["precision"] == "float32"}
    for result in report["results"]:
        result["gflop_per_image"] = gflop.get(result["backbone"], result["gflop_per_image"])
        peak_gflops = report["peak_gflops"][result["precision"]]
        for row in result["rows"]:
            row["gflops"] = row["forward"] * result["gflop_per_image"]
            row["percent_of_peak"] = 100 * row["gflops"] / peak_gflops
    report["fastest_from_files"] = fastest_from_files(report["results"])
    return report


def fastest_from_files(results):
    """Per backbone, the runtime and precision with the most images/s from files (at its best batch size).

    Returns:
        backbone -> dict: runtime, precision, batch_size, from_files, and versus_keras_float32 (its
        ratio to Keras float32's best, or None where that was not measured).
    """
    fastest = {}
    for backbone in dict.fromkeys(r["backbone"] for r in results):
        best = {}
        for result in (r for r in results if r["backbone"] == backbone):
            row = max(result["rows"], key=lambda row: row["from_files"])
            best[result["runtime"], result["precision"]] = row
        (runtime, precision), row = max(best.items(), key=lambda item: item[1]["from_files"])
        keras = best.get(("keras", "float32"))
        fastest[backbone] = {"runtime": runtime, "precision": precision, "batch_size": row["batch_size"],
                             "from_files": row["from_files"],
                             "versus_keras_float32": row["from_files"] / keras["from_files"] if keras else None}
    return fastest


def format_report(report):
    """The results as one table with a runtime column, with the machine, the peaks and what measured them."""
    machine_ = report["machine"]
    flags = machine_["cpu_flags"]
    blas = machine_["blas"]
    lines = [f"{report['date']}  {machine_['cpu']}, {machine_['usable_cores']} cores: {machine_['cpu_kind']}",
             "CPU flags: " + " ".join(f"{flag}{'+' if present else '-'}" for flag, present in flags.items()),
             f"numpy BLAS: {blas['library']} {blas.get('version') or ''}, {blas.get('architecture', 'unknown')} kernel, "
             f"{blas.get('threads', '?')} threads"
             + "".join(f"; {name}={value}" for name, value in machine_["environment"].items()),
             f"photos: {report['photos']}",
             "peak, measured in this run:"]
    for precision, gflops in report["peak_gflops"].items():
        unit = "GOP/s" if precision == "int8" else "GFLOP/s"
        lines.append(f"  {precision:<9}{gflops:8.0f} {unit:<8} {report['peak_measured_by'][precision]}")
    lines.append("")
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
    for backbone, best in report["fastest_from_files"].items():
        versus = (f", {best['versus_keras_float32']:.2f}x Keras float32" if best["versus_keras_float32"] is not None
                  else "")
        lines.append(f"fastest from files, {backbone}: {best['runtime']} {best['precision']}, "
                     f"{best['from_files']:.1f} img/s at batch {best['batch_size']}{versus}")
    lines += [f"{r['backbone']} at {r['image_size']} px: {r['gflop_per_image']:.2f} GFLOP per image (Keras float32 model)"
              for r in report["results"] if r["precision"] == "float32" and r["runtime"] == "keras"]
    onednn = {r["onednn"] for r in report["results"] if r["runtime"] == "keras" and r.get("onednn") is not None}
    if onednn:
        lines.append(f"Keras: TensorFlow's oneDNN kernels {'on' if onednn == {True} else 'off' if onednn == {False} else 'on in some runs only'}")
    for r in report["results"]:
        if r["runtime"] == "openvino" and r.get("openvino_precision"):
            lines.append(f"OpenVINO computed in {r['openvino_precision']} (its precision hint set to f32: by default it takes bf16 on bfloat16 CPUs)")
            break
    notes = {f"{r['backbone']} ran with random weights: its ImageNet weights are unavailable here (the JSON "
             f"output says why); speed does not depend on the weights' values"
             for r in report["results"] if r["weights"] == "random"}
    lines += sorted(notes) + list(report["notes"])
    lines.append("forward: the model alone on ready batches (median); files: decoding and resizing included, "
                 "steady state, as catsdogs train extracts features; every runtime runs the backbone alone (a head "
                 "is a few hundred thousand operations); % peak: against "
                 "the peak of the runtime's precision (int8: GOP/s against the int8 peak)")
    return "\n".join(lines)
