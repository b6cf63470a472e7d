"""Multi-worker fine-tuning on Ray: `finetune.fine_tune` on every worker of a Ray Train
`TensorflowTrainer`, under `tf.distribute.MultiWorkerMirroredStrategy`.

Ray Train starts the workers and gives each its TF_CONFIG (the workers' addresses); each builds
the tunable backbone and the head with the driver's weights, reads and decodes only its share of
every global batch, and the gradients are all-reduced, so one step of N workers is one step of
one process on the same global batch. After every epoch the rank-0 worker checkpoints the
weights, the optimizer and early stopping; when a worker dies, Ray Train restarts the group
(up to `MAX_FAILURES` times) and the workers go on from the last checkpoint. The driver gets the
tuned extractor and head weights back, and `engine.train.fine_tune` goes on as after local
fine-tuning.

Checkpoints go to <cache dir>/fine-tune-checkpoints/<run>: for --engine ray the cache is a
folder every node shares. They are deleted once the run has succeeded.
"""

import json
import logging
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from catsdogs.engine.ray.cluster import alive_nodes, connect
from catsdogs.errors import ConfigError
from catsdogs.utils.files import timestamp

log = logging.getLogger(__name__)


# Restarts of the worker group after a worker or its node dies, each from the last checkpoint.
MAX_FAILURES = 3
CHECKPOINT_FOLDER = "fine-tune-checkpoints"
STATE_FILE, ARRAYS_FILE = "state.json", "arrays.npz"


def check_global_batch(batch_size, workers):
    """Raises ConfigError unless the global batch shares equally among the workers."""
    if batch_size % workers:
        raise ConfigError(f"fine_tune_batch_size {batch_size}: with {workers} Ray workers, give a multiple of "
                          f"{workers} (it is the global batch, shared equally by the workers)")


def fine_tune(extractor, head, train, val, settings, precision, cache_dir, address="", workers=0):
    """Fine-tunes on a Ray cluster; the multi-worker counterpart of `finetune.fine_tune`.

    Args:
        extractor: the tunable backbone (BatchNormalization not folded); gets the tuned weights.
        head: the stage-1 Keras head; gets the tuned weights.
        train, val: (paths, labels) of the training and validation images, readable at these
            paths on every node.
        settings: a `config.FineTuneSettings`; its batch_size is the global batch, a multiple of
            the workers.
        precision: the extractor's compute precision ("float32" or "bfloat16"): each worker builds it alike.
        cache_dir: the cache folder every node shares; checkpoints go below it.
        address: the Ray cluster ("": $RAY_ADDRESS, else a new one on this machine).
        workers: Ray workers (0: one per node).

    Returns:
        the epoch rows (epoch, loss, accuracy, val_loss, val_accuracy, seconds), as
        `heads.EpochHistory.rows`.
    """
    ray = connect(address or None)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    workers = workers or len(alive_nodes(ray))
    check_global_batch(settings.batch_size, workers)  # known only now when one worker per node
    # Each worker reserves an equal share of the cluster's CPUs: one worker per node gets the
    # whole node, and Ray sets the worker's OMP_NUM_THREADS (which TensorFlow follows) to its share.
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    storage = os.path.join(os.path.abspath(cache_dir), CHECKPOINT_FOLDER)
    name = f"{extractor.name}-{timestamp()}-{os.getpid()}"
    # What each worker gets (pickled by Ray): the settings, how to build the extractor, the weights.
    loop_config = {"fine_tune": settings, "train": (list(train[0]), np.asarray(train[1]).tolist()),
                   "val": (list(val[0]), np.asarray(val[1]).tolist()),
                   "extractor_build": {"name": extractor.name, "image_size": extractor.input_shape[1],
                                       "precision": precision, "cache_dir": cache_dir},
                   "extractor": ray.put(extractor.get_weights()), "head": ray.put(head.get_weights()),
                   "head_json": head.to_json()}
    start = time.perf_counter()
    trainer = TensorflowTrainer(
        worker_loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=name, storage_path=storage, failure_config=FailureConfig(max_failures=MAX_FAILURES),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state, arrays = read_checkpoint(folder)
    if not state["done"]:
        raise RuntimeError(f"fine-tuning on Ray ended without its final checkpoint ({result.checkpoint.path})")
    extractor.set_weights(arrays["extractor"])
    head.set_weights(arrays["head"])
    shutil.rmtree(os.path.join(storage, name), ignore_errors=True)
    log.info("fine-tuned on %d Ray workers (%d CPUs each) in %.1f s; restarts from a checkpoint: %d", workers, cpus,
             time.perf_counter() - start, state["restarts"])
    return state["history"]


def write_checkpoint(folder, state, arrays):
    """Writes a checkpoint: `state` (JSON) and `arrays` (name -> list of numpy arrays)."""
    with open(os.path.join(folder, STATE_FILE), "w") as f:
        json.dump(state, f)
    np.savez(os.path.join(folder, ARRAYS_FILE),
             **{f"{name}/{i}": array for name, values in arrays.items() for i, array in enumerate(values)})


def read_checkpoint(folder):
    """(state, arrays) of `write_checkpoint`."""
    with open(os.path.join(folder, STATE_FILE)) as f:
        state = json.load(f)
    arrays = {}
    with np.load(os.path.join(folder, ARRAYS_FILE)) as stored:
        keys = sorted(stored.files, key=lambda key: (key.rsplit("/", 1)[0], int(key.rsplit("/", 1)[1])))
        for key in keys:
            arrays.setdefault(key.rsplit("/", 1)[0], []).append(stored[key])
    return state, arrays


def worker_loop(settings):
    """One Ray Train worker: builds the models in the strategy's scope, then `finetune.fine_tune`.

    Runs on a fresh start and again after every restart, then from `ray.train.get_checkpoint()`.

    Args:
        settings: the driver's `train_loop_config` (see `fine_tune`): "fine_tune" (the
            `FineTuneSettings`), "extractor_build" (`backbones.build_feature_extractor` arguments),
            "train" and "val" (paths, labels), the weights and the head's JSON.
    """
    # Ray Train sets this for Keras 2 (tf_keras); catsdogs runs Keras 3, which TensorFlow's
    # tf.keras would then no longer be.
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    import ray
    import ray.train
    import tensorflow as tf

    from catsdogs.engine import finetune
    from catsdogs.models import backbones
    from catsdogs.models.heads import EpochHistory
    from catsdogs.utils import progress

    fine_tune_settings, build = settings["fine_tune"], settings["extractor_build"]
    keras.utils.set_random_seed(fine_tune_settings.seed)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG, set by Ray Train
    checkpoint = ray.train.get_checkpoint()
    state, arrays = {"epoch": 0, "history": [], "restarts": 0, "stopping": None, "done": False}, {}
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state, arrays = read_checkpoint(folder)
        state["restarts"] += 1
    with strategy.scope():
        extractor = backbones.build_feature_extractor(build["name"], "random", build["image_size"], build["precision"],
                                                      build["cache_dir"], fold_batch_norm=False)
        head = keras.models.model_from_json(settings["head_json"])
        extractor.set_weights(arrays.get("extractor") or ray.get(settings["extractor"]))
        head.set_weights(arrays.get("head") or ray.get(settings["head"]))
        stopping = finetune.EarlyStopping(fine_tune_settings.patience, state["stopping"] and {
            **state["stopping"], "best_weights": arrays.get("best")})
        checkpointer = Checkpointer(extractor, head, stopping, state, arrays.get("optimizer"))
        # A run that had stopped early, or done every epoch, only restores its best weights.
        epochs = fine_tune_settings.epochs
        initial_epoch = epochs if (state["stopping"] or {}).get("stopped_epoch") else state["epoch"]
        if checkpoint is not None:
            print(f"catsdogs: resuming fine-tuning after epoch {state['epoch']} (restart {state['restarts']})",
                  flush=True)
        callbacks = [checkpointer]
        if ray.train.get_context().get_world_rank() == 0:  # one worker tells; Ray passes its output to the driver
            progress.show_lines()
            callbacks.append(EpochHistory(epochs, "fine-tune (Ray)", steps=True))
        finetune.fine_tune(extractor, head, settings["train"], settings["val"], fine_tune_settings, callbacks,
                           strategy, stopping, min(initial_epoch, epochs))
    checkpointer.report(done=True)


class Checkpointer(keras.callbacks.Callback):
    """Reports every epoch to Ray Train, with a checkpoint from the rank-0 worker.

    Every worker reports (Ray Train's report is a barrier); the weights are the same on every
    worker (mirrored), so rank 0 alone writes them.
    """

    def __init__(self, extractor, head, stopping, state, optimizer_values=None):
        super().__init__()
        self.extractor, self.head, self.stopping, self.state = extractor, head, stopping, state
        self.optimizer_values = optimizer_values

    def on_train_begin(self, logs=None):
        if self.optimizer_values is not None:  # Adam's moments and step count, as they were
            for variable, value in zip(self.model.optimizer.variables, self.optimizer_values):
                variable.assign(value)

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.state["history"].append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
                                      "seconds": round(time.perf_counter() - self.start, 2)})
        self.state["epoch"] = epoch + 1
        self.report(done=False)

    def report(self, done):
        import ray.train

        self.state["done"] = done
        metrics = {"epoch": self.state["epoch"], "done": done, **(self.state["history"] or [{}])[-1]}
        if ray.train.get_context().get_world_rank() != 0:
            ray.train.report(metrics)
            return
        stopping = self.stopping.state()
        best = stopping.pop("best_weights")
        self.state["stopping"] = {k: (None if v is None else float(v) if k == "best" else int(v))
                                  for k, v in stopping.items()}
        arrays = {"extractor": self.extractor.get_weights(), "head": self.head.get_weights()}
        if not done:  # what a resumed run needs besides the weights
            arrays["optimizer"] = [np.asarray(v) for v in self.model.optimizer.variables]
            if best is not None:
                arrays["best"] = best
        with tempfile.TemporaryDirectory() as folder:
            write_checkpoint(folder, self.state, arrays)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
