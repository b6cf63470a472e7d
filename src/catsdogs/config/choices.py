"""The choices and defaults every layer shares, each declared once, in a module that imports only the
standard library, so that the command line parses (and settings check themselves) before TensorFlow loads.

Words that mean one thing: the *runtime* is what computes the frozen backbone (Keras, or ONNX Runtime), the
*precision* what it computes in, and the *format* how a whole model is stored (`catsdogs export --format`,
`catsdogs predict --format`).
"""

import os

SEED = 42  # of splits, folds and training, unless a run says otherwise
SPLITS = ("train", "val", "test")

# Where and how the frozen backbone runs.
PRECISIONS = ("float32", "bfloat16")  # compute precision of a backbone in Keras
BACKBONE_RUNTIMES = ("keras", "onnx")  # what runs the frozen backbone (inference/backbone_runtime.py)
BACKBONE_PRECISIONS = (*PRECISIONS, "int8")  # int8: ONNX Runtime, statically quantized
ENGINES = ("local", "ray")  # where features are extracted and photos scored: this process, or a Ray cluster
# Images per forward pass when extracting features or predicting: measured fastest of 16, 32 and 64
# for both backbones and precisions on a 2-core Zen CPU (docs/BENCHMARKS.md), and small enough in memory.
INFERENCE_BATCH_SIZE = 64
BENCH_BATCH_SIZES = (16, 32, 64)  # what `catsdogs bench` compares by default
BENCH_RUNTIMES = ("keras", "onnx", "openvino")  # what `catsdogs bench` can time (OpenVINO where installed)

# How a model is stored: the Keras model itself, or an export in another runtime's format.
FORMATS = ("keras", "savedmodel", "onnx", "tflite")
EXPORT_FORMATS = FORMATS  # what `catsdogs export` writes: every format (keras: the end-to-end model itself)
QUANTIZATIONS = ("float32", "float16", "int8")  # of TFLite exports

# Heads on the backbone's features, and the defaults of the dense (the study's) head.
HEADS = ("linear", "dense")
CLASS_WEIGHTS = ("balanced", "none")  # of the head's training loss: every class weighs alike, or every photo
DENSE_HIDDEN_UNITS = (256,)
DENSE_DROPOUT = 0.5
DENSE_LEARNING_RATE = 1e-3
DENSE_BATCH_SIZE = 64
DENSE_MAX_EPOCHS = 100
DENSE_PATIENCE = 10

# Multi-label tables: the labels of a photo in one cell are joined by this ("cats;dogs"), unless a run says otherwise.
LABEL_SEPARATOR = ";"

# The open set: photos of none of the classes.
OPEN_SET_METHODS = ("msp", "energy", "mahalanobis", "knn", "imagenet")  # models/openset.py says what each is
OPEN_SET_KEEP = 0.99  # share of known (training) photos the rejection threshold keeps
UNKNOWN_LABEL = "unknown"  # the label of a photo rejected as none of the classes
# Answers explained by example: the most training photos one answer names (`predict --similar`, `?similar=`),
# and how many the report and the review page show.
MAX_SIMILAR = 20
SIMILAR_SHOWN = 5

# Photos from others: guards against decompression bombs (a photo of about 50 megapixels is already rare)
# and against files that are not photos at all (read whole into memory only to be refused by their pixels).
DEFAULT_MAX_PIXELS = 50_000_000
# The largest photo file read: a photo at the pixel limit stored uncompressed (RGBA, 8 bits a channel).
# Photos are far smaller (JPEGs here under 1 MB, a phone's RAW or TIFF about 50 MB).
DEFAULT_MAX_FILE_BYTES = 4 * DEFAULT_MAX_PIXELS

# `catsdogs review`: the decisions on a photo, and how many confident mistakes are listed besides the flagged photos.
DECISIONS = ("keep", "relabel", "exclude")
REVIEW_MISTAKES = 50


def default_cache_dir():
    """Where features and converted weights are cached: $CATSDOGS_CACHE, else the user cache."""
    if os.environ.get("CATSDOGS_CACHE"):
        return os.environ["CATSDOGS_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "catsdogs")
