"""Stage 2: fine-tuning the top of the backbone end to end, with augmentation, BatchNorm frozen."""

import logging

import keras
import tensorflow as tf
from keras import layers

from catsdogs.inference.pipeline import ImagePipeline
from catsdogs.models.backbones import get_backbone
from catsdogs.models.heads import compile_classifier

log = logging.getLogger(__name__)


def augmentation(seed):
    """Label-preserving random changes applied to training batches only."""
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(0.05, fill_mode="reflect", seed=seed),
        layers.RandomZoom(0.1, fill_mode="reflect", seed=seed),
        layers.RandomTranslation(0.05, 0.05, fill_mode="reflect", seed=seed),
        layers.RandomContrast(0.1, value_range=(0, 255), seed=seed),
    ], name="augmentation")


def unfreeze_top(extractor, blocks):
    """Makes the last `blocks` blocks of the backbone, and the layers after them, trainable.

    BatchNormalization layers stay frozen, so they keep using their ImageNet moving statistics:
    updating them on small batches of a new dataset is the known way to wreck a pretrained model.

    Returns:
        the number of trainable weights.
    """
    backbone = get_backbone(extractor.name)
    prefixes = tuple(backbone.blocks[-blocks:]) + tuple(backbone.top_layers) if blocks > 0 else ()
    extractor.trainable = True
    for layer in extractor.layers:
        layer.trainable = layer.name.startswith(prefixes) and not isinstance(layer, layers.BatchNormalization)
    return len(extractor.trainable_weights)


def labelled_batches(paths, labels, image_size, batch_size, augment=None, shuffle_seed=None, shard=None):
    """A tf.data.Dataset of (images, labels) batches, optionally shuffled, augmented and sharded.

    `shard` (index, count): one worker's share of the images (see `inference.pipeline.ImagePipeline.dataset`).
    """
    pipeline = ImagePipeline(image_size, batch_size)
    labels = tf.constant(labels, tf.int32)

    def select(images, ok, indices):
        batch_labels = tf.gather(labels, indices)
        images, batch_labels = tf.boolean_mask(images, ok), tf.boolean_mask(batch_labels, ok)
        if augment is not None:
            images = augment(images, training=True)
        return images, batch_labels

    ds = pipeline.dataset(paths, shuffle_seed, shard)
    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def distributed_batches(strategy, paths, labels, image_size, batch_size, augment=None, shuffle_seed=None):
    """`labelled_batches` for a multi-worker strategy: each worker reads and decodes only its share.

    `batch_size` is the global batch (all workers together), as on one process, so the learning
    rate means the same; it must be a multiple of the number of workers. Sharding is ours rather
    than tf.distribute's auto-sharding, which on a dataset of paths would decode every image on
    every worker and drop the others' (its DATA policy).
    """
    def worker_dataset(context):
        return labelled_batches(paths, labels, image_size, context.get_per_replica_batch_size(batch_size), augment,
                                shuffle_seed, (context.input_pipeline_id, context.num_input_pipelines))

    return strategy.distribute_datasets_from_function(worker_dataset)


class MultiWorkerModel(keras.Model):
    """A keras.Model whose `fit` runs under `tf.distribute.MultiWorkerMirroredStrategy`.

    Keras 3 (3.15) does not support that strategy as is (keras-team/keras#20585): before
    training it reduces a whole (images, labels) batch with one `strategy.reduce`, which takes
    no nested values, and it averages every step's scalar logs across workers along an axis
    they lack. Here the build takes the batches' shapes, and the step logs get that axis.
    Epoch logs (what callbacks and early stopping read) are the metrics' states summed over
    every worker (Keras' metric variables are sum-aggregated on read): the same on every
    worker, and those of all the images.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Shapes and dtypes are all the build needs: from the dataset's element spec rather than a
        # batch, since pulling one starts a pass over the training data (one reshuffle) that one
        # process does not make, and every epoch's batches would then differ from its.
        if iterator is not None:  # a spec per replica; this worker has one replica (its CPU)
            data_batch = keras.tree.map_structure(lambda spec: spec._value_specs[0],
                                                  iterator._distributed_dataset.element_spec)
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def train_step(self, data):
        return {name: tf.reshape(value, [1]) for name, value in super().train_step(data).items()}

    def test_step(self, data):
        return {name: tf.reshape(value, [1]) for name, value in super().test_step(data).items()}


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' early stopping on the validation loss, restoring the best epoch's weights, whose
    progress can be saved and given back: a fine-tuning resumed from a checkpoint then stops
    and restores as the uninterrupted one would have.
    """

    def __init__(self, patience, state=None):
        """Args:
            patience: epochs without improvement before stopping.
            state: a `state()` of an earlier run to continue from.
        """
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self.resume_from = state

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume_from:
            for name, value in self.resume_from.items():
                setattr(self, name, value)

    def state(self):
        """What to save to resume (best_weights: the model's `get_weights()` at its best epoch)."""
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}


def fine_tune(extractor, head, train, val, settings, callbacks, strategy=None, early_stopping=None, initial_epoch=0):
    """Trains the top of the backbone and the head together on images.

    The one implementation of fine-tuning: this process alone, or each worker of a multi-worker
    run (`distributed_training`), which gives a strategy, its own early stopping (to checkpoint
    it) and the epoch to resume from.

    Args:
        extractor: the backbone; its top blocks are unfrozen here.
        head: the stage-1 head, trained on.
        train: (paths, labels) of the training images.
        val: (paths, labels) of the validation images.
        settings: a `config.FineTuneSettings` (`TrainConfig.fine_tune_settings()`).
        callbacks: more Keras callbacks (history, progress, checkpoints), called after early stopping.
        strategy: a `tf.distribute` strategy whose scope this is called in (extractor and head
            were built in it); each worker then trains on its share of every global batch.
        early_stopping: an `EarlyStopping` (default: a new one with settings.patience).
        initial_epoch: epochs already done (a resumed run).

    Returns:
        the Keras History of the fit; the best epoch's weights are restored.
    """
    blocks = settings.blocks or get_backbone(extractor.name).default_fine_tune_blocks
    count = unfreeze_top(extractor, blocks)
    log.info("fine-tuning the last %d blocks of %s (%d weight tensors) and the head", blocks, extractor.name, count)
    size = extractor.input_shape[1]
    image = keras.Input((size, size, 3), name="image")
    model_class = keras.Model if strategy is None else MultiWorkerModel
    trainer = model_class(image, head(extractor(image, training=False)), name="fine_tune")
    compile_classifier(trainer, settings.learning_rate)
    augment = augmentation(settings.seed) if settings.augment else None
    if strategy is None:
        train_ds = labelled_batches(*train, size, settings.batch_size, augment, settings.seed)
        val_ds = labelled_batches(*val, size, settings.batch_size)
    else:
        train_ds = distributed_batches(strategy, *train, size, settings.batch_size, augment, settings.seed)
        val_ds = distributed_batches(strategy, *val, size, settings.batch_size)
    early_stopping = early_stopping or EarlyStopping(settings.patience)
    try:
        return trainer.fit(train_ds, validation_data=val_ds, epochs=settings.epochs, verbose=0,
                           shuffle=False, initial_epoch=initial_epoch,  # shuffled by tf.data
                           callbacks=[early_stopping, *callbacks])
    finally:
        extractor.trainable = False
