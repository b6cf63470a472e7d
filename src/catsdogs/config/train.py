"""Settings of a training run: one dataclass, saved as config.json in every run directory."""

import dataclasses
import json
import os

from catsdogs.config.choices import CLASS_WEIGHTS, ENGINES, HEADS, INFERENCE_BATCH_SIZE, default_cache_dir
from catsdogs.errors import ConfigError

# Settings checked alike by `TrainConfig.check` (in the manner of Ultralytics' CFG_FRACTION_KEYS).
FRACTION_KEYS = ("val_fraction", "test_fraction", "open_set_keep")  # strictly between 0 and 1
COUNT_KEYS = ("batch_size", "extract_batch_size", "fine_tune_batch_size", "max_epochs", "fine_tune_epochs")  # >= 1
CHOICE_KEYS = {"head": HEADS, "class_weight": CLASS_WEIGHTS, "engine": ENGINES}


@dataclasses.dataclass(frozen=True)
class FineTuneSettings:
    """What stage 2 (`finetune.fine_tune`) needs: `TrainConfig.fine_tune_settings()` derives it.

    Attributes:
        blocks: the backbone's last blocks to unfreeze (0: the backbone's default).
        learning_rate: of the optimizer.
        epochs: at most this many epochs.
        patience: early stopping patience in epochs, on the validation loss.
        batch_size: images per step (on several workers: the global batch, all of them together).
        augment: random flips, rotations, zooms, shifts and contrast on the training images.
        seed: of the augmentation and the shuffling.
    """

    blocks: int
    learning_rate: float
    epochs: int
    patience: int
    batch_size: int
    augment: bool
    seed: int


@dataclasses.dataclass
class TrainConfig:
    """Everything that decides what `catsdogs train` does."""

    data_dir: str
    # CSV files: a labels table (path, label[, split]) instead of class folders, then corrections
    # tables (`catsdogs review`'s), applied in order; see labels.py. The library also takes a table in memory.
    labels: tuple = ()
    path_column: str = "path"
    label_column: str = "label"
    split_column: str = "split"
    backbone: str = "resnet50"
    weights: str = "imagenet"  # "imagenet", "random" or a weights file
    image_size: int = 0  # 0: the backbone's own
    runtime: str = "auto"  # of the frozen backbone: "keras", "onnx" (ONNX Runtime), or "auto" (backbone_runtimes.choose)
    precision: str = "auto"  # of the backbone: "float32", "bfloat16" (Keras), "int8" (ONNX Runtime), or "auto"
    head: str = "linear"  # "linear" (logistic regression; best on validation) or "dense" (the study's)
    class_weight: str = "balanced"  # of the head's loss: "balanced" (classes weigh alike) or "none"; docs/BENCHMARKS.md
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
    mlflow: bool = False  # also log the run to MLflow (tracking.py); on as well when MLFLOW_TRACKING_URI is set
    engine: str = "local"  # "ray": missing features computed, and fine-tuning run, on a Ray cluster
    ray_address: str = ""  # the cluster for engine "ray" ("" : $RAY_ADDRESS, else a new local one)
    ray_workers: int = 0  # extractor actors and fine-tuning workers for engine "ray" (0: one per node)

    def check(self):
        """Checks every setting that does not depend on the data, before anything is read.

        Raises:
            ConfigError: naming the setting, the value and what is accepted.
        """
        # Lazy: config.py is imported where TensorFlow (which backbones imports) is not wanted.
        from catsdogs.models import backbones
        from catsdogs.utils.extras import require

        ensemble = len(backbones.member_names(self.backbone)) > 1
        self.backbone_runtime()
        if ensemble and self.fine_tune:
            raise ConfigError(f"backbone {self.backbone}: fine-tuning takes one backbone; an ensemble's members "
                              f"stay frozen (train one backbone with --fine-tune instead)")
        for name, choices in CHOICE_KEYS.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choose one of {choices}")
        backbones.check_weights(self.backbone, self.weights)
        if self.image_size and self.image_size < 32:
            raise ConfigError(f"image size {self.image_size}: at least 32 pixels (0 for the backbone's own)")
        for name in FRACTION_KEYS:
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)}: expected a fraction between 0 and 1")
        for name in COUNT_KEYS:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)}: expected at least 1")
        if self.unknown_data and not os.path.isdir(self.unknown_data):
            raise ConfigError(f"unknown_data {self.unknown_data!r}: not a folder")
        for table in self.labels:
            if not os.path.isfile(table):
                raise ConfigError(f"labels table {table!r} not found")
        if self.exclude and not os.path.isfile(self.exclude):
            raise ConfigError(f"exclude file {self.exclude!r} not found")
        if self.mlflow:
            require("mlflow", "--mlflow")
        if self.engine == "ray":
            require("ray", "--engine ray")
            if self.ray_workers < 0:
                raise ConfigError(f"ray_workers {self.ray_workers}: expected 0 (one per node) or more")
            if self.fine_tune and self.ray_workers:
                from catsdogs.engine.ray.finetune import check_global_batch

                check_global_batch(self.fine_tune_batch_size, self.ray_workers)

    def fine_tune_settings(self) -> FineTuneSettings:
        """The settings of stage 2 (fine_tune_blocks, fine_tune_learning_rate, ..., augment, seed)."""
        return FineTuneSettings(
            blocks=self.fine_tune_blocks, learning_rate=self.fine_tune_learning_rate, epochs=self.fine_tune_epochs,
            patience=self.fine_tune_patience, batch_size=self.fine_tune_batch_size, augment=self.augment,
            seed=self.seed)

    def label_columns(self):
        """The column names of the labels table (`labels.Columns`)."""
        from catsdogs.data.labels import Columns

        return Columns(self.path_column, self.label_column, self.split_column)

    def backbone_runtime(self):
        """The runtime and precision of the frozen backbone, "auto" resolved (`backbone_runtimes.choose`).

        Ensembles, fine-tuning and --engine ray compute features in Keras (the Ray workers and the
        fine-tuned backbone run there), so "auto" is Keras for them.
        """
        from catsdogs.inference.backbone_runtime import choose
        from catsdogs.models.backbones import member_names

        keras_only = (f"the ensemble {self.backbone} runs its members in Keras" if len(member_names(self.backbone)) > 1
                      else "fine-tuning trains the backbone in Keras" if self.fine_tune
                      else "--engine ray computes features in Keras on its workers" if self.engine == "ray" else None)
        return choose(self.runtime, self.precision, keras_only)

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
        for name in ("hidden_units", "labels"):
            values[name] = tuple(values.get(name, ()))
        return cls(**{k: v for k, v in values.items() if k in known})
