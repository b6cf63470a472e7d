"""Settings of a training run: one dataclass, saved as config.json in every run directory."""

import dataclasses
import json
import os


# Choices offered by the command line, here so that parsing it needs no TensorFlow.
PRECISIONS = ("float32", "bfloat16")  # compute precision of a backbone
HEADS = ("linear", "dense")  # classifiers on the backbone's features (see heads.py)
EXPORT_FORMATS = ("keras", "savedmodel", "onnx", "tflite")
QUANTIZATIONS = ("float32", "float16", "int8")  # of TFLite exports
ENGINES = ("local", "ray")  # where features are extracted and photos scored: this process, or a Ray cluster
RUNTIMES = EXPORT_FORMATS  # what runs a model: Keras itself, or the runtime of an export format
# Images per forward pass when extracting features or predicting: measured fastest of 16, 32 and 64
# for both backbones and precisions on a 2-core Zen CPU (docs/BENCHMARKS.md), and small enough in memory.
INFERENCE_BATCH_SIZE = 64
BENCH_BATCH_SIZES = (16, 32, 64)  # what `catsdogs bench` compares by default


def default_cache_dir():
    """Where features and converted weights are cached: $CATSDOGS_CACHE, else the user cache."""
    if os.environ.get("CATSDOGS_CACHE"):
        return os.environ["CATSDOGS_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "catsdogs")


@dataclasses.dataclass
class TrainConfig:
    """Everything that decides what `catsdogs train` does."""

    data_dir: str
    backbone: str = "resnet50"
    weights: str = "imagenet"  # "imagenet", "random" or a weights file
    image_size: int = 0  # 0: the backbone's own
    precision: str = "auto"  # of the backbone: "float32", "bfloat16", or "auto" (bfloat16 where the CPU has it)
    head: str = "linear"  # "linear" (logistic regression; best on validation) or "dense" (the study's)
    hidden_units: tuple = (256,)
    dropout: float = 0.5
    l2: float = 0.0  # dense head only: the linear head chooses its own by cross-validation
    learning_rate: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 10
    fine_tune: bool = False  # stage 2; off by default: minutes per epoch on a CPU
    fine_tune_blocks: int = 0  # 0: the backbone's default (ResNet-50: stage conv5)
    fine_tune_learning_rate: float = 1e-5
    fine_tune_epochs: int = 8
    fine_tune_patience: int = 2
    fine_tune_batch_size: int = 32
    augment: bool = True  # random flips, rotations, zooms, shifts, contrast while fine-tuning
    tta: bool = False  # also report validation and test with test-time augmentation
    low_resolution: bool = False  # also train the head on each training photo seen at 160 px (small photos)
    calibrate: bool = True  # temperature scaling on the validation split
    target: str = ""  # "precision:CLASS=VALUE" or "recall:CLASS=VALUE": threshold chosen on validation
    exclude: str = ""  # file listing training images to leave out (confirmed label errors)
    open_set: str = "auto"  # in-distribution score: "auto" (the measured default), "none", or methods joined by "+"
    open_set_keep: float = 0.99  # share of known (training) photos the rejection threshold keeps
    unknown_data: str = ""  # a folder of photos of no trained class, only to report how many are rejected
    val_fraction: float = 0.2
    test_fraction: float = 0.2  # only when the dataset has no test folder
    seed: int = 42
    extract_batch_size: int = INFERENCE_BATCH_SIZE
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)
    runs_dir: str = "runs"
    name: str = ""
    engine: str = "local"  # "ray": missing features computed, and fine-tuning run, on a Ray cluster
    ray_address: str = ""  # the cluster for engine "ray" ("" : $RAY_ADDRESS, else a new local one)
    ray_workers: int = 0  # extractor actors and fine-tuning workers for engine "ray" (0: one per node)

    def to_dict(self):
        return dataclasses.asdict(self)

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            values = json.load(f)
        known = {f.name for f in dataclasses.fields(cls)}
        values["hidden_units"] = tuple(values.get("hidden_units", ()))
        return cls(**{k: v for k, v in values.items() if k in known})
