"""Where the frozen backbone runs: Keras (TensorFlow with oneDNN) or ONNX Runtime, and in what precision.

The backbone is nearly all of the cost of extraction, prediction and serving (the head and the
open-set score are a few hundred thousand operations), so it runs in the fastest correct runtime
this CPU has. `choose` says which, by a rule from the CPU's flags that docs/BENCHMARKS.md measured
("Speed per CPU and runtime"):

- Keras in bfloat16 on CPUs with AMX (Intel Sapphire Rapids and later), where TensorFlow's
  bfloat16 kernels were measured 1.9x float32 (ResNet-50) and ONNX Runtime was not measured;
- elsewhere ONNX Runtime: in int8 where the CPU has int8 dot products (VNNI: Intel since Cascade
  Lake, AMD since Zen 4), from files 2.6x Keras float32 on a Xeon and 1.46x Keras bfloat16 on
  Zen 5, with the same test accuracy; in float32 on AVX2 CPUs without them (most laptops), where
  it beat TensorFlow with oneDNN (1.2-1.3x forward, Zen 3);
- Keras wherever the run needs it (an ensemble, fine-tuning, Ray workers), in bfloat16 where that
  was measured faster than float32 (`host.cpu_has_fast_bfloat16`).

An ONNX backbone is converted from the Keras one once (tf2onnx) and cached under the weights'
fingerprint, like the converted ImageNet weights; an int8 one is quantized from it by ONNX
Runtime's static post-training quantization, calibrated on training photos, and cached too.
"""

import logging
import os
import warnings

import numpy as np

from catsdogs.config.choices import BACKBONE_PRECISIONS, BACKBONE_RUNTIMES
from catsdogs.errors import ConfigError
from catsdogs.utils.files import atomic_path, file_sha256, sha256
from catsdogs.utils.host import cpu_has_amx, cpu_has_vnni, usable_cpus
from catsdogs.utils.progress import progress

log = logging.getLogger(__name__)


ONNX_OPSET = 17
# How many training photos calibrate int8 quantization (the ranges of the activations).
CALIBRATION_PHOTOS = 128


def choose(runtime="auto", precision="auto", keras_only=None):
    """The runtime and precision of the frozen backbone (see the module for the rule).

    Args:
        runtime: "auto" or one of `config.choices.BACKBONE_RUNTIMES`.
        precision: "auto", "float32", "bfloat16" (Keras only) or "int8" (ONNX Runtime only).
        keras_only: why this run's backbone must run in Keras (an ensemble, fine-tuning, Ray), or None.

    Returns:
        (runtime, precision), neither "auto".

    Raises:
        ConfigError: an unknown value, or a precision the runtime does not have.
    """
    from catsdogs.models.precision import resolve_precision

    if runtime not in ("auto", *BACKBONE_RUNTIMES):
        raise ConfigError(f"unknown backbone runtime {runtime!r}; choose auto or one of {BACKBONE_RUNTIMES}")
    if precision not in ("auto", *BACKBONE_PRECISIONS):
        raise ConfigError(f"unknown precision {precision!r}; choose auto or one of {BACKBONE_PRECISIONS}")
    if keras_only and (runtime == "onnx" or precision == "int8"):
        raise ConfigError(f"the backbone runs in ONNX Runtime only on its own: {keras_only} (use --runtime keras "
                          f"and a float precision)")
    if runtime == "auto":
        runtime = "keras" if keras_only or precision == "bfloat16" or (precision == "auto" and cpu_has_amx()) else "onnx"
    if runtime == "keras":
        if precision == "int8":
            raise ConfigError("int8 runs in ONNX Runtime: use --runtime onnx (or auto) with --precision int8")
        return "keras", resolve_precision(precision)
    if precision == "bfloat16":
        raise ConfigError("ONNX Runtime has no bfloat16 convolutions on CPU: use --runtime keras with bfloat16")
    if precision == "auto":
        precision = "int8" if cpu_has_vnni() else "float32"
    return "onnx", precision


def export_onnx_file(model, path, signature):
    """Writes a Keras model as an ONNX file (Keras' exporter, through tf2onnx)."""
    with warnings.catch_warnings():  # Keras' numpy 2 patch of tf2onnx touches np.object
        warnings.filterwarnings("ignore", "In the future `np.object`", FutureWarning)
        model.export(path, format="onnx", input_signature=signature, opset_version=ONNX_OPSET, verbose=False)


def onnx_session(path):
    """An ONNX Runtime session of an .onnx file on this machine's CPU, with every usable core."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = usable_cpus()
    # Its threads would otherwise spin between operators, taking the cores from the decoders that feed it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The memory pattern, planned on the first run, allocates its own block again on the second: 2.4 GB
    # faulted in twice at batch 64. Without it the arena reuses the first run's (measured: no slower).
    options.enable_mem_pattern = False
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnx_backbone_file(extractor, cache_dir):
    """The frozen extractor as a float32 ONNX file, converted once and cached by its weights.

    Args:
        extractor: one frozen backbone (`backbones.build_feature_extractor`), any precision.
        cache_dir: the cache's root folder.

    Returns:
        the path of the .onnx file: (batch, size, size, 3) float32 pixels in, features out.
    """
    import tensorflow as tf

    from catsdogs.models.model import float32_model
    from catsdogs.models.weights import weights_fingerprint

    size = extractor.input_shape[1]
    path = os.path.join(cache_dir, "onnx", f"{extractor.name}-{size}-{weights_fingerprint(extractor)[:16]}.onnx")
    if os.path.exists(path):
        return path
    log.info("converting %s to ONNX (once)", extractor.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as partial, progress(None, f"converting {extractor.name} to ONNX"):
        export_onnx_file(float32_model(extractor), partial,
                         [tf.TensorSpec((None, size, size, 3), tf.float32, name="pixels")])
    return path


def quantized_backbone_file(float32_file, calibration_paths, image_size, cache_dir):
    """The int8 form of an ONNX backbone: static post-training quantization, cached.

    Weights per channel in int8, activations in uint8 with ranges from the calibration photos
    (QDQ format, ONNX Runtime's recommendation for CPUs). The cache key is the float32 file
    and the calibration photos, so a different calibration set makes a different file.

    Args:
        float32_file: from `onnx_backbone_file`.
        calibration_paths: training photos (never test photos); CALIBRATION_PHOTOS of them, spread over
            the sorted list (so over every class folder), are used.
        image_size: the backbone's input side.
        cache_dir: the cache's root folder.

    Returns:
        the path of the int8 .onnx file.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from catsdogs.data.splits import spread
    from catsdogs.inference.pipeline import decoded_images

    paths = spread(sorted(os.fspath(p) for p in calibration_paths), CALIBRATION_PHOTOS)
    if not paths:
        raise ConfigError("int8 quantization is calibrated on training photos, and none were given")
    key = sha256("\n".join([file_sha256(float32_file), *map(file_sha256, paths)]).encode())
    path = f"{float32_file[:-len('.onnx')]}-int8-{key[:16]}.onnx"
    if os.path.exists(path):
        return path
    log.info("quantizing %s to int8 on %d training photos (once)", os.path.basename(float32_file), len(paths))

    class Calibration(CalibrationDataReader):
        """The resized training photos, one at a time, as ONNX Runtime's calibration reads them."""

        def __init__(self, images, bar):
            self._feeds = iter([{"pixels": image[None]} for image in images])
            self._bar = bar

        def get_next(self):
            feed = next(self._feeds, None)
            if feed is not None:
                self._bar.update()
            return feed

    images = decoded_images(paths, image_size)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantizer logs a line per adjusted weight scale on the root logger
    try:
        with atomic_path(path) as partial, progress(len(images), f"quantizing {os.path.basename(float32_file)} to int8",
                                                    "calibration photos") as bar:
            calibration = Calibration(images, bar)
            prepared = partial + ".pre.onnx"
            # Shape inference and graph fusions first, as ONNX Runtime advises for quantization.
            quant_pre_process(float32_file, prepared, skip_symbolic_shape=True)
            try:
                quantize_static(prepared, partial, calibration, quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            finally:
                os.remove(prepared)
    finally:
        root.setLevel(level)
    return path


class OnnxBackbone:
    """A frozen backbone in ONNX Runtime: (batch, size, size, 3) float32 pixels in [0, 255] in, features out.

    Attributes:
        path: the .onnx file it runs.
        precision: "float32" or "int8".
        fingerprint: the file's SHA-256: what the feature cache keys its features by.
    """

    runtime = "onnx"

    def __init__(self, path, precision):
        self.path, self.precision = path, precision
        self.fingerprint = file_sha256(path)
        self.session = onnx_session(path)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images):
        return self.session.run(None, {self.input_name: np.asarray(images, np.float32)})[0]


def onnx_backbone(extractor, precision, cache_dir, calibration_paths=()):
    """An extractor in ONNX Runtime, converted (and quantized for int8) once per cache.

    Args:
        extractor: one frozen backbone.
        precision: "float32" or "int8".
        cache_dir: the cache's root folder.
        calibration_paths: training photos, for int8.

    Returns:
        an `OnnxBackbone`.
    """
    path = onnx_backbone_file(extractor, cache_dir)
    if precision == "int8":
        path = quantized_backbone_file(path, calibration_paths, extractor.input_shape[1], cache_dir)
    return OnnxBackbone(path, precision)
