"""Settings of a training run: one dataclass, saved as config.json in every run directory.

Each field declares its command-line option of `catsdogs train` too (`fields.setting`): cli.py generates
the options from them. `TrainConfig.check` checks types, ranges and files; what needs the backbone
registry, the CPU or an optional extra is checked by the training workflow (`engine.train.check_config`).
"""

import dataclasses
import json
import os

from catsdogs.config.choices import (
    BACKBONE_PRECISIONS,
    BACKBONE_RUNTIMES,
    CLASS_WEIGHTS,
    DENSE_BATCH_SIZE,
    DENSE_DROPOUT,
    DENSE_HIDDEN_UNITS,
    DENSE_LEARNING_RATE,
    DENSE_MAX_EPOCHS,
    DENSE_PATIENCE,
    ENGINES,
    HEADS,
    INFERENCE_BATCH_SIZE,
    LABEL_SEPARATOR,
    OPEN_SET_KEEP,
    OPEN_SET_METHODS,
    SEED,
    check_coverage,
    default_cache_dir,
)
from catsdogs.config.fields import setting
from catsdogs.errors import ConfigError

# The backbone trained when none is named: the most accurate one here, whose ImageNet weights come with pip
# (works offline). `--backbone resnet50` is the original study's.
DEFAULT_BACKBONE = "efficientnet_lite2"
# Settings checked alike by `TrainConfig.check` (in the manner of Ultralytics' CFG_FRACTION_KEYS).
FRACTION_KEYS = ("val_fraction", "test_fraction", "open_set_keep")  # strictly between 0 and 1
COUNT_KEYS = ("batch_size", "extract_batch_size", "fine_tune_batch_size", "max_epochs", "fine_tune_epochs")  # >= 1


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

    data_dir: str = setting(help="dataset folder: Kaggle cat-and-dog layout, train/[val/]test/ folders of classes, "
                                 "or one folder of class folders", option=False)
    # A labels table, then corrections tables (`catsdogs review`'s), applied in order (data/labels.py); the
    # library also takes a table in memory.
    labels: tuple[str, ...] = setting(
        (), "labels from a table instead of class folders: a CSV with columns path (relative to the data folder; a "
        "name without extension is looked for as .jpg, .png, ...), label and optionally split (train/val/test). Give "
        "it again for a corrections table from `catsdogs review` (relabels and exclusions, applied after the labels)",
        metavar="CSV")
    # Not an option: what `prepare` found, recorded in config.json, as data_dir is (store/run_dir.py confines to them).
    discovered_sources: tuple[str, ...] = setting((), "the folders that photos added from discovered clusters came "
                                                  "from (a corrections table of `catsdogs discover`)", option=False)
    path_column: str = setting("path", "the labels table's path column")
    label_column: str = setting("label", "the labels table's label column (e.g. breed)")
    split_column: str = setting("split", "the labels table's split column, if it has one")
    multi_label: bool = setting(False, "photos with any number of labels (a cat, a dog, both, none): the labels "
                                "table's label cells hold several labels joined by --label-separator (cats;dogs), or "
                                "a photo has one row per label, an empty cell none; one yes-or-no per label, each "
                                "with its threshold chosen on validation (docs/multi-label.md)")
    label_separator: str = setting(LABEL_SEPARATOR, "what joins a multi-label table's labels in one cell")
    backbone: str = setting(DEFAULT_BACKBONE, "efficientnet_lite0/1/2 (ImageNet weights from pip, works offline; "
                            "lite2 is the most accurate), resnet50 (the original study's; its weights need a "
                            "download or --weights FILE), or an ensemble of several joined by + (one head on their "
                            "concatenated features, each cached on its own); see `catsdogs backbones`")
    weights: str = setting("imagenet", "imagenet, random (no pretraining, for trying the pipeline), or a weights "
                           "file: .pth (EfficientNet-Lite, read by a restricted reader) or Keras .weights.h5")
    image_size: int = setting(0, "input side in pixels (0: the backbone's own; an ensemble's largest member's)")
    runtime: str = setting("auto", "what runs the frozen backbone: keras (TensorFlow), onnx (ONNX Runtime, the "
                           "backbone converted once and cached); auto: the fastest measured on this kind of CPU "
                           "(docs/speed.md). predict and serve then run the model's backbone the same way",
                           choices=("auto", *BACKBONE_RUNTIMES))
    precision: str = setting("auto", "compute precision of the backbone: float32; bfloat16 (keras); int8 (onnx: "
                             "static quantization calibrated on training photos); auto: with the runtime, by CPU "
                             "(docs/speed.md). The head and the model's output are float32 either way",
                             choices=("auto", *BACKBONE_PRECISIONS))
    head: str = setting("linear", "linear (best by cross-validation on the training photos): logistic regression "
                        "on standardised features, L2 strength chosen by cross-validation; dense: the study's fully "
                        "connected layers with dropout", choices=HEADS)
    class_weight: str = setting("balanced", "balanced: every class weighs alike in the head's loss, so that a small "
                                "class is not sacrificed to a large one; none: every photo weighs alike",
                                choices=CLASS_WEIGHTS)
    hidden_units: tuple[int, ...] = setting(DENSE_HIDDEN_UNITS, "hidden layer sizes of a dense head, comma "
                                            "separated", metavar="N[,N...]")
    dropout: float = setting(DENSE_DROPOUT, "dropout after each hidden layer of a dense head")
    l2: float = setting(0.0, "L2 penalty on a dense head's weights (the linear head chooses its own by "
                        "cross-validation)")
    learning_rate: float = setting(DENSE_LEARNING_RATE, "a dense head's learning rate (Adam)")
    batch_size: int = setting(DENSE_BATCH_SIZE, "a dense head's training batch size")
    max_epochs: int = setting(DENSE_MAX_EPOCHS, "a dense head's most epochs")
    patience: int = setting(DENSE_PATIENCE, "a dense head's early stopping patience in epochs")
    fine_tune: bool = setting(False, "stage 2: after the head, train the top blocks of the backbone end to end with "
                              "augmentation (off by default: on a CPU each epoch takes minutes; the better model on "
                              "validation is kept)")
    fine_tune_blocks: int = setting(0, "how many of the backbone's last blocks to unfreeze (0: the backbone's own; "
                                    "ResNet-50: 3, its stage conv5)")
    fine_tune_learning_rate: float = setting(1e-5, "the fine-tuning learning rate (Adam)")
    fine_tune_epochs: int = setting(8, "most fine-tuning epochs")
    fine_tune_patience: int = setting(2, "fine-tuning's early stopping patience in epochs")
    fine_tune_batch_size: int = setting(32, "images per fine-tuning step (with --engine ray: the global batch)")
    augment: bool = setting(True, "random flips, small rotations, zooms, shifts and contrast while fine-tuning")
    tta: bool = setting(False, "also report validation and test with test-time augmentation (photo and mirror "
                        "image averaged)")
    low_resolution: bool = setting(False, "also train the head on each training photo brought down to 160 px and "
                                   "up again, for small photos (features cached like the others)")
    calibrate: bool = setting(True, "temperature scaling on the validation split, so probabilities mean what they "
                              "say")
    target: str = setting("", "choose the decision threshold on validation for a target, e.g. precision:dogs=0.99 "
                          "or recall:cats=0.995 (two classes only; default: threshold 0.5); with --multi-label, "
                          "one per label, comma separated (the others: best F1)",
                          metavar="METRIC:CLASS=VALUE")
    exclude: str = setting("", "leave out of training the photos a file lists: a corrections table from `catsdogs "
                           "review` (its exclusions) or one photo a line (a path relative to the data folder, an "
                           "absolute path, or a file name); never test photos", metavar="FILE")
    open_set: str = setting("auto", "the in-distribution score that answers 'unknown' for photos of no trained "
                            "class; auto: knn+imagenet where the backbone has ImageNet weights and the classes map to "
                            f"ImageNet (cats, dogs), else knn; methods: {', '.join(OPEN_SET_METHODS)}; none: off",
                            metavar="auto|none|METHOD[+METHOD]")
    open_set_keep: float = setting(OPEN_SET_KEEP, "share of known photos the rejection threshold keeps, set on the "
                                   "training photos")
    coverage: float = setting(0.0, "answer prediction sets that hold the true class of this share of photos, e.g. "
                              "0.95 (split conformal prediction calibrated on the validation split; the report measures "
                              "it on the test photos). The calibration is kept in every model: predict and serve can ask "
                              "for any coverage; this one is their default (0: sets only when asked for)")
    unknown_data: str = setting("", "a folder of photos of no trained class: the report says how many are rejected "
                                "(never used to fit anything)", metavar="DIR")
    near_duplicates: bool = setting(True, "find near-duplicate photos (re-encoded, resized, cropped a little, "
                                    "mirrored, recoloured) by a perceptual hash and the backbone's features: kept on "
                                    "one side of the splits catsdogs makes, reported where they cross the splits given")
    learning_curve: bool = setting(False, "also refit the head on growing shares of the training photos (stratified, "
                                   "repeated) and report test accuracy and log-loss against photos per class, with "
                                   "what more photos would likely bring")
    val_fraction: float = setting(0.2, "fraction of the training images held out for validation (stratified)")
    test_fraction: float = setting(0.2, "fraction held out for testing when the dataset has no test folder")
    seed: int = setting(SEED, "makes splits and training repeatable")
    extract_batch_size: int = setting(INFERENCE_BATCH_SIZE, "images per forward pass of the backbone")
    cache_dir: str = setting(help="feature and weights cache ($CATSDOGS_CACHE, else the user cache)",
                             default_factory=default_cache_dir)
    runs_dir: str = setting("runs", "where run directories are created")
    name: str = setting("", "run directory name (default: backbone and time)")
    mlflow: bool = setting(False, "also log the run to MLflow: settings, metrics, the run directory (on as well "
                           "when MLFLOW_TRACKING_URI is set; without it, a local store in RUNS_DIR/.mlflow; pip "
                           "install 'catsdogs[mlflow]')")
    engine: str = setting("local", "local: this process; ray: the missing features computed on a Ray cluster into "
                          "--cache-dir (a folder every node shares), the head fitted here as usual; with --fine-tune, "
                          "fine-tuning on --workers Ray workers (pip install 'catsdogs[ray]')", choices=ENGINES)
    ray_address: str = setting("", "with --engine ray: auto, HOST:PORT of a head node or ray://HOST:10001 (default: "
                               "$RAY_ADDRESS, else a new cluster on this machine)", flag="--address")
    ray_workers: int = setting(0, "with --engine ray: model actors, or fine-tuning workers (0: one per node)", metavar="N",
                               flag="--workers")

    def check(self):
        """Checks the types, ranges and files of the settings, before anything is read or imported.

        Raises:
            ConfigError: naming the setting, the value and what is accepted.
        """
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            if choices and getattr(self, field.name) not in choices:
                raise ConfigError(f"unknown {field.name} {getattr(self, field.name)!r}; choose one of {choices}")
        if self.image_size and self.image_size < 32:
            raise ConfigError(f"image size {self.image_size}: at least 32 pixels (0 for the backbone's own)")
        for name in FRACTION_KEYS:
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)}: expected a fraction between 0 and 1")
        for name in COUNT_KEYS:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} {getattr(self, name)}: expected at least 1")
        if self.coverage:
            check_coverage(self.coverage)
        if self.ray_workers < 0:
            raise ConfigError(f"ray_workers {self.ray_workers}: expected 0 (one per node) or more")
        if self.unknown_data and not os.path.isdir(self.unknown_data):
            raise ConfigError(f"unknown_data {self.unknown_data!r}: not a folder")
        for table in self.labels:
            if not os.path.isfile(table):
                raise ConfigError(f"labels table {table!r} not found")
        if self.multi_label and (self.head != "linear" or self.fine_tune):
            raise ConfigError("multi_label: one logistic regression per label is fitted on the cached features "
                              "(--head linear, no --fine-tune)")
        if self.multi_label and self.coverage:
            raise ConfigError("coverage: prediction sets are for one class a photo; a multi-label model answers each "
                              "label yes or no at its own threshold (leave out --coverage)")
        if self.multi_label and self.learning_curve:
            raise ConfigError("learning_curve: drawn for runs with one class a photo, not with multi_label")
        if not self.label_separator.strip():
            raise ConfigError(f"label_separator {self.label_separator!r}: expected a character such as ';'")
        if self.exclude and not os.path.isfile(self.exclude):
            raise ConfigError(f"exclude file {self.exclude!r} not found")

    def fine_tune_settings(self) -> FineTuneSettings:
        """The settings of stage 2 (fine_tune_blocks, fine_tune_learning_rate, ..., augment, seed)."""
        return FineTuneSettings(
            blocks=self.fine_tune_blocks, learning_rate=self.fine_tune_learning_rate, epochs=self.fine_tune_epochs,
            patience=self.fine_tune_patience, batch_size=self.fine_tune_batch_size, augment=self.augment,
            seed=self.seed)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            values = json.load(f)
        known = {f.name for f in dataclasses.fields(cls)}
        for name in ("hidden_units", "labels", "discovered_sources"):
            values[name] = tuple(values.get(name, ()))
        return cls(**{k: v for k, v in values.items() if k in known})
