"""Stage 2: fine-tuning the top of the backbone end to end, with augmentation, BatchNorm frozen."""

import logging

import keras
import tensorflow as tf
from keras import layers

from catsdogs.backbones import get_backbone, resize_layer
from catsdogs.data import ImagePipeline
from catsdogs.heads import compile_classifier

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


def labelled_batches(paths, labels, image_size, batch_size, augment=None, shuffle_seed=None):
    """A tf.data.Dataset of (images, labels) batches, optionally shuffled and augmented."""
    pipeline = ImagePipeline(resize_layer(image_size), batch_size)
    labels = tf.constant(labels, tf.int32)

    def select(images, ok, indices):
        batch_labels = tf.gather(labels, indices)
        images, batch_labels = tf.boolean_mask(images, ok), tf.boolean_mask(batch_labels, ok)
        if augment is not None:
            images = augment(images, training=True)
        return images, batch_labels

    ds = pipeline.dataset(paths, shuffle_seed)
    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def fine_tune(extractor, head, train, val, config, callbacks):
    """Trains the top of the backbone and the head together on images.

    Args:
        extractor: the backbone; its top blocks are unfrozen here.
        head: the stage-1 head, trained on.
        train: (paths, labels) of the training images.
        val: (paths, labels) of the validation images.
        config: a `TrainConfig` (fine_tune_* settings, seed, augment).
        callbacks: more Keras callbacks (history, progress).

    Returns:
        the Keras History of the fit; the best epoch's weights are restored.
    """
    blocks = config.fine_tune_blocks or get_backbone(extractor.name).default_fine_tune_blocks
    count = unfreeze_top(extractor, blocks)
    log.info("fine-tuning the last %d blocks of %s (%d weight tensors) and the head", blocks, extractor.name, count)
    size = extractor.input_shape[1]
    image = keras.Input((size, size, 3), name="image")
    trainer = keras.Model(image, head(extractor(image, training=False)), name="fine_tune")
    compile_classifier(trainer, config.fine_tune_learning_rate)
    augment = augmentation(config.seed) if config.augment else None
    train_ds = labelled_batches(*train, size, config.fine_tune_batch_size, augment, config.seed)
    val_ds = labelled_batches(*val, size, config.fine_tune_batch_size)
    try:
        return trainer.fit(train_ds, validation_data=val_ds, epochs=config.fine_tune_epochs, verbose=0,
                           shuffle=False, callbacks=[  # shuffled by tf.data
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.fine_tune_patience,
                                          restore_best_weights=True),
            *callbacks,
        ])
    finally:
        extractor.trainable = False
