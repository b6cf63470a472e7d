"""`catsdogs export`: a trained model in another format, checked against the Keras model on real photos.

Each export is a folder: the exported file, `export.json` (what the model needs and returns, see
`runtimes`) and `parity.json` (how closely it agrees with the Keras model on real test photos, and
how fast and large it is). The formats are written by Keras' own exporters (`Model.export`: tf2onnx
for ONNX, the TFLite converter for TFLite).
"""

import dataclasses
import datetime
import importlib
import os
import shutil
import time

import numpy as np

from catsdogs.config.choices import FORMATS, INFERENCE_BATCH_SIZE, QUANTIZATIONS
from catsdogs.data import dataset as data
from catsdogs.engine.timing import forward_rate
from catsdogs.errors import ConfigError, DataError, ImageError
from catsdogs.inference import model_formats as runtimes
from catsdogs.inference.backbone_runtime import export_onnx_file
from catsdogs.inference.pipeline import decoded_images
from catsdogs.models import model as model_lib
from catsdogs.store import export_dir, run_dir
from catsdogs.utils.extras import EXTRAS, require

# Whose versions export.json records: what wrote the export and what runs it.
VERSIONED_MODULES = {
    "keras": ("keras", "tensorflow"),
    "savedmodel": ("keras", "tensorflow"),
    "onnx": ("keras", "tensorflow", "tf2onnx", "onnxruntime"),
    "tflite": ("keras", "tensorflow", "ai_edge_litert"),
}


def sample(paths, count, seed=0):
    """`count` of the paths drawn at random with `seed`, in their original order; all for count <= 0."""
    if count <= 0 or count >= len(paths):
        return list(paths)
    chosen = np.random.default_rng(seed).choice(len(paths), count, replace=False)
    return [paths[i] for i in sorted(chosen)]


def known_photos(model_path, data_dir=None):
    """Training and test photos for calibrating and checking an export.

    Args:
        model_path: the model's file; its run directory's splits.csv lists the photos it used.
        data_dir: a dataset folder instead (train and test folders, or one folder of classes).

    Returns:
        (training photo paths, test photo paths).
    """
    if data_dir:
        dataset = data.discover(data_dir)
        train = dataset.splits.get("train") or dataset.splits.get("all") or []
        test = dataset.splits.get("test") or dataset.splits.get("all") or []
        train, test = [s.path for s in train], [s.path for s in test]
        source = data_dir
    else:
        run = run_dir.RunDirectory(os.path.dirname(model_path))
        source = run.file(run_dir.SPLITS)
        if not run.has(run_dir.SPLITS):
            raise DataError(f"{model_path} is not in a run directory with {run_dir.SPLITS}, so the photos to check "
                            f"the export on are unknown: pass --data DATASET_DIR")
        try:  # splits.csv paths are relative to the data folder that config.json names
            root, rows = run.data_dir(), run.photo_rows(run_dir.SPLITS, run_dir.SPLITS_COLUMNS)
        except DataError as error:
            raise DataError(f"{error}; or pass --data DATASET_DIR") from None
        train = [os.path.join(root, r["path"]) for r in rows if r["split"] == "train"]
        test = [os.path.join(root, r["path"]) for r in rows if r["split"] == "test"]
        if test and not os.path.exists(test[0]):
            raise DataError(f"the photos that {source} lists are not found from here (e.g. {test[0]}): run from "
                            f"the folder where the model was trained, or pass --data DATASET_DIR")
    if not test:
        raise DataError(f"{source}: no test photos to check the export on")
    return train, test


def _tflite_options(quantization, calibration_images):
    """TFLite converter settings: float32; float16 weights; or int8 weights and activations, calibrated.

    Only builtin TFLite operations are allowed, so that the plain LiteRT interpreter runs the model.
    Input and output stay float32 in every case (int8 quantizes and dequantizes inside the model).
    """
    import tensorflow as tf

    if quantization == "float32":
        return {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantization == "float16":
        return {"optimizations": [tf.lite.Optimize.DEFAULT],
                "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS], "supported_types": [tf.float16]}}
    return {"optimizations": [tf.lite.Optimize.DEFAULT],
            "representative_dataset": lambda: ([image[None]] for image in calibration_images),
            "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}}


def write_export(model, export_format, path, quantization="float32", calibration_images=None):
    """Writes the model in a format.

    Args:
        model: the end-to-end Keras model.
        export_format: one of `config.choices.FORMATS`.
        path: the file (a folder for savedmodel) to write.
        quantization: for TFLite, one of `config.choices.QUANTIZATIONS`.
        calibration_images: for TFLite int8, resized training images (n, size, size, 3).
    """
    import tensorflow as tf

    if export_format == "keras":  # the end-to-end model itself: any image size, resizing inside
        model_lib.save(model, path)
        return
    fixed = model_lib.fixed_size_model(model)
    signature = [tf.TensorSpec(fixed.input_shape, tf.float32, name="pixels")]
    if export_format == "savedmodel":
        fixed.export(path, format="tf_saved_model", input_signature=signature, verbose=False)
    elif export_format == "onnx":
        export_onnx_file(fixed, path, signature)
    else:
        fixed.export(path, format="litert", input_signature=signature, verbose=False,
                     **_tflite_options(quantization, calibration_images))


def size_in_bytes(path):
    """Size of a file, or of all files below a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def compare_predictions(expected, got, class_names):
    """How closely two models' predictions of the same photos agree, photo by photo.

    Args:
        expected: `Prediction.to_dict()` of each photo by the reference model.
        got: rows by the other model, same photos in the same order.
        class_names: the models' classes.

    Returns:
        dict: images compared, max and mean absolute probability difference, agreement rate of
        the predicted labels, and the photos where the labels differ.
    """
    pairs = [(e, g) for e, g in zip(expected, got) if "error" not in e and "error" not in g]
    if not pairs:
        failed = next(row for row in expected + got if "error" in row)
        raise ImageError(failed["path"], f"{failed['error']}; none of the {len(expected)} photos to compare the "
                                         f"export on could be read")
    first = np.array([[e["probabilities"][c] for c in class_names] for e, _ in pairs])
    second = np.array([[g["probabilities"][c] for c in class_names] for _, g in pairs])
    difference = np.abs(first - second)
    # The same answer: the class, or a multi-label model's set of labels.
    agree = np.array([(e.get("label"), e.get("labels")) == (g.get("label"), g.get("labels")) for e, g in pairs])
    result = {
        "images": len(pairs),
        "max_abs_probability_difference": float(difference.max()),
        "mean_abs_probability_difference": float(difference.mean()),
        "agreement": float(agree.mean()),
        "disagreements": [{"path": e["path"], "keras": e["probabilities"], "exported": g["probabilities"]}
                          for (e, g), same in zip(pairs, agree) if not same],
    }
    if all("accepted" in e and "accepted" in g for e, g in pairs):  # the open-set decision
        result["decision_agreement"] = float(np.mean([e["accepted"] == g["accepted"] for e, g in pairs]))
        result["max_abs_score_difference"] = float(max(abs(e["in_distribution_score"] - g["in_distribution_score"])
                                                       for e, g in pairs))
    return result


def _predictions(runtime, photos, batch_size):
    from catsdogs.inference.classifier import Classifier

    return [p.to_dict() for p in Classifier(runtime).predict(photos, batch_size=batch_size)]


def _prepare_folder(folder):
    """An empty folder for an export; replaces an earlier export there, never anything else."""
    if os.path.exists(folder):
        if not export_dir.is_export(folder) and os.listdir(folder):
            raise ConfigError(f"{folder} exists and is not an earlier export; choose another --output")
        shutil.rmtree(folder)
    os.makedirs(folder)


def export_model(run_or_model, export_format, output=None, quantization="float32", data_dir=None, parity_images=200,
                 calibration_images=200, batch_size=INFERENCE_BATCH_SIZE):
    """Exports a model, then checks the export against the Keras model on real test photos.

    Args:
        run_or_model: a run directory or .keras file.
        export_format: one of `config.choices.FORMATS`.
        output: the export folder (default: `export_dir.default_folder`).
        quantization: for TFLite: float32, float16 (weights) or int8 (weights and activations).
        data_dir: a dataset to take photos from, instead of the run's splits.csv.
        parity_images: test photos to compare on, drawn at random (0: all).
        calibration_images: training photos that calibrate int8 quantization.
        batch_size: images per forward pass.

    Returns:
        (export folder, parity dict as written to parity.json).
    """
    if export_format not in FORMATS:
        raise ConfigError(f"unknown format {export_format!r}; choose one of {FORMATS}")
    if quantization not in QUANTIZATIONS or (export_format != "tflite" and quantization != "float32"):
        raise ConfigError(f"quantization {quantization!r}: TFLite takes one of {QUANTIZATIONS}, other formats float32")
    if export_format in EXTRAS:  # a SavedModel needs nothing beyond TensorFlow
        require(export_format, f"the {export_format} format")
    model_path = model_lib.resolve_model_path(run_or_model)
    model = model_lib.load(model_path)
    info = model_lib.describe(model)
    train_paths, test_paths = known_photos(model_path, data_dir)
    calibration = None
    if quantization == "int8":
        if not train_paths:
            raise DataError("int8 quantization is calibrated on training photos, and none are known: "
                            "pass --data DATASET_DIR with a training folder")
        calibration = decoded_images(sample(train_paths, calibration_images), info.image_size, batch_size)

    folder = output or export_dir.default_folder(model_path, export_format, quantization)
    _prepare_folder(folder)
    start = time.perf_counter()
    write_export(model, export_format, export_dir.exported_file(folder, export_format), quantization, calibration)
    seconds = time.perf_counter() - start
    metadata = {
        "format": export_format,
        "quantization": quantization,
        "file": export_dir.FILE_NAMES[export_format],
        "model": dataclasses.asdict(info),
        "input": "keras end-to-end model: (batch, height, width, 3) RGB pixels in [0, 255], any size" if export_format == "keras"
                 else f"pixels: (batch, {info.image_size}, {info.image_size}, 3) float32 RGB in [0, 255], resized from "
                      f"the photo by bilinear interpolation with antialiasing (tf.image.resize, antialias=True), no crop",
        "output": f"{'independent probabilities (multi-label)' if info.multi_label else 'probabilities'} of "
                  f"{info.class_names}" + (
            "" if info.reject_threshold is None else
            (", in-distribution score" if export_format == "keras" else
             f", then one more column: the in-distribution score (below {info.reject_threshold:.4f}: unknown)")),
        "source": os.path.abspath(model_path),
        "source_precision": model_lib.compute_precision(model),
        "calibration_images": len(calibration) if calibration is not None else 0,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": {module: importlib.import_module(module).__version__ for module in VERSIONED_MODULES[export_format]},
    }
    export_dir.write_info(folder, metadata)

    # The reference is the Keras model in the precision of the export: float32, unless it is the
    # Keras model itself. A model that computes in bfloat16 is also compared as it is.
    exported = runtimes.load(folder)
    photos = sample(test_paths, parity_images)
    got = _predictions(exported, photos, batch_size)
    as_saved = _predictions(runtimes.KerasModel(model), photos, batch_size)
    precision = model_lib.compute_precision(model)
    if export_format == "keras" or precision == "float32":
        parity = {"reference": f"the Keras model ({precision})", **compare_predictions(as_saved, got, info.class_names)}
    else:
        float32 = _predictions(runtimes.KerasModel(model_lib.float32_model(model)), photos, batch_size)
        parity = {"reference": "the Keras model computing in float32",
                  **compare_predictions(float32, got, info.class_names),
                  "saved_bfloat16_model": compare_predictions(as_saved, got, info.class_names)}
    batch = decoded_images(test_paths[:batch_size], info.image_size, batch_size)
    parity.update({
        "format": export_format,
        "quantization": quantization,
        "bytes": size_in_bytes(export_dir.exported_file(folder, export_format)),
        "export_seconds": round(seconds, 1),
        "batch_size": len(batch),
        "images_per_second": forward_rate(exported, batch),
        "keras_images_per_second": forward_rate(runtimes.compiled_forward(model), batch),
    })
    export_dir.write_parity(folder, parity)
    return folder, parity


def format_parity(folder, parity):
    """A few lines for the terminal: agreement, probability difference, speed and size."""
    def agreement(result, reference):
        return (f"parity with {reference} on {result['images']} test photos: {result['agreement']:.2%} same label, "
                f"max probability difference {result['max_abs_probability_difference']:.2e} "
                f"(mean {result['mean_abs_probability_difference']:.2e})")

    lines = [f"exported {parity['format']}" + (f" ({parity['quantization']})" if parity["format"] == "tflite" else "")
             + f" to {folder}", agreement(parity, parity["reference"])]
    lines += [f"  differs: {d['path']}" for d in parity["disagreements"][:10]]
    if "saved_bfloat16_model" in parity:
        lines.append(agreement(parity["saved_bfloat16_model"], "the Keras model as saved (bfloat16)"))
    lines.append(f"speed (forward pass, batch {parity['batch_size']}): {parity['images_per_second']:.1f} images/s "
                 f"(Keras: {parity['keras_images_per_second']:.1f})   size: {parity['bytes'] / 1e6:.1f} MB")
    return "\n".join(lines)
