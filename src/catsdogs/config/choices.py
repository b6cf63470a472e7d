"""The choices and defaults every module shares, in a module that imports
only the standard library, so that the command line parses before TensorFlow loads."""

import os

PRECISIONS = ("float32", "bfloat16")  # compute precision of a backbone in Keras
BACKBONE_RUNTIMES = ("keras", "onnx")  # what runs the frozen backbone (`backbone_runtimes`)
BACKBONE_PRECISIONS = (*PRECISIONS, "int8")  # int8: ONNX Runtime, statically quantized
HEADS = ("linear", "dense")  # classifiers on the backbone's features (see heads.py)
CLASS_WEIGHTS = ("balanced", "none")  # of the head's training loss: every class weighs alike, or every photo
EXPORT_FORMATS = ("keras", "savedmodel", "onnx", "tflite")
QUANTIZATIONS = ("float32", "float16", "int8")  # of TFLite exports
ENGINES = ("local", "ray")  # where features are extracted and photos scored: this process, or a Ray cluster
RUNTIMES = EXPORT_FORMATS  # what runs a model: Keras itself, or the runtime of an export format
# Images per forward pass when extracting features or predicting: measured fastest of 16, 32 and 64
# for both backbones and precisions on a 2-core Zen CPU (docs/BENCHMARKS.md), and small enough in memory.
INFERENCE_BATCH_SIZE = 64
BENCH_BATCH_SIZES = (16, 32, 64)  # what `catsdogs bench` compares by default
REVIEW_MISTAKES = 50  # most confident mistakes `catsdogs review` lists besides the flagged photos


def default_cache_dir():
    """Where features and converted weights are cached: $CATSDOGS_CACHE, else the user cache."""
    if os.environ.get("CATSDOGS_CACHE"):
        return os.environ["CATSDOGS_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "catsdogs")
