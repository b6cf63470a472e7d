"""catsdogs: an image classifier from a folder of photos, by transfer learning from ImageNet.

The library in three calls::

    import catsdogs

    run = catsdogs.train("data/cats-and-dogs", backbone="efficientnet_lite0")  # -> Run
    clf = catsdogs.load("runs/NAME")           # -> Classifier (run dir, .keras file or export folder)
    ev = catsdogs.evaluate(clf, "data/cats-and-dogs")  # -> Evaluation, with plot_* methods

Importing catsdogs is cheap: TensorFlow, Keras, scikit-learn and matplotlib are imported when a
function first needs them. The global changes on import: TensorFlow's C++ start-up messages
are silenced (TF_CPP_MIN_LOG_LEVEL=2), its oneDNN kernels are on (TF_ENABLE_ONEDNN_OPTS=1) and
its CPU memory is pooled (TF_CPU_ALLOCATOR_USE_BFC=true), unless already set; errors still show.
"""

import importlib
import os
from typing import TYPE_CHECKING

# TensorFlow's C++ start-up chatter is noise to a command-line user; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 VNNI, bfloat16 or AMX;
# on AVX2 CPUs (most laptops) its generic kernels ran Lite0 2.1x slower and spent 40% of the CPU
# time in the kernel (page faults; docs/BENCHMARKS.md, issue 17). Read when TensorFlow loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow's CPU allocator hands every large tensor back to the system and faults it in again on
# the next batch; its best-fit pool keeps them: the kernel's share of the CPU time fell from about
# half to a fifth, and the generic (AVX2) kernels ran 1.8x faster (docs/BENCHMARKS.md, issue 17).
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first use (PEP 562).
_PUBLIC = {
    "train": "catsdogs.engine.train",
    "Run": "catsdogs.engine.train",
    "load": "catsdogs.inference.classifier",
    "Classifier": "catsdogs.inference.classifier",
    "Prediction": "catsdogs.inference.classifier",
    "evaluate": "catsdogs.evaluation.evaluate",
    "Evaluation": "catsdogs.evaluation.evaluate",
    "TrainConfig": "catsdogs.config.train",
    # Run directories side by side (runs.py reads their JSON files only; compare.py their predictions too).
    **{name: "catsdogs.store.runs" for name in ("list_runs", "format_runs")},
    **{name: "catsdogs.engine.compare" for name in ("compare_runs", "format_comparison")},
    # The errors a user catches (all in errors.py, all `CatsdogsError`s).
    **{name: "catsdogs.errors" for name in (
        "CatsdogsError", "ConfigError", "DataError", "ImageError", "ModelNotFoundError", "UnsupportedError",
        "WeightsError", "CacheError", "MissingDependency")},
}
__all__ = [*_PUBLIC, "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__
    from catsdogs.config.train import TrainConfig
    from catsdogs.engine.train import Run, train
    from catsdogs.errors import (
        CacheError,
        CatsdogsError,
        ConfigError,
        DataError,
        ImageError,
        MissingDependency,
        ModelNotFoundError,
        UnsupportedError,
        WeightsError,
    )
    from catsdogs.evaluation.evaluate import Evaluation, evaluate
    from catsdogs.inference.classifier import Classifier, Prediction, load
    from catsdogs.engine.compare import compare_runs, format_comparison
    from catsdogs.store.runs import format_runs, list_runs


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'catsdogs' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
