"""Stage 2: fine-tuning keeps BatchNorm frozen, augments only training, never keeps a worse model."""

import dataclasses
import json
import pickle

import keras
import numpy as np
import pytest

import catsdogs
from catsdogs.config.train import FineTuneSettings, TrainConfig
from catsdogs.engine import finetune
from catsdogs.models import backbones
from catsdogs.models.heads import build_head
from conftest import photo, real_dataset


def small_split(numbers):
    paths = [str(photo("train", cls, n)) for cls in ("cats", "dogs") for n in numbers]
    return paths, np.array([0] * len(numbers) + [1] * len(numbers))


def batch_norm_statistics(model):
    return [w.copy() for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
            for w in (keras.ops.convert_to_numpy(layer.moving_mean), keras.ops.convert_to_numpy(layer.moving_variance))]


def test_fine_tuning_trains_the_top_blocks_only_and_keeps_batch_norm_statistics():
    extractor = backbones.build_feature_extractor("efficientnet_lite0", image_size=160, fold_batch_norm=False)
    head = build_head(1280, 2, hidden_units=(32,))
    statistics = batch_norm_statistics(extractor)
    assert len(statistics) == 2 * 49  # every BatchNormalization of Lite0 is there to be checked
    frozen_before = extractor.get_layer("block10_project_conv").get_weights()[0].copy()
    top_before = extractor.get_layer("block15_project_conv").get_weights()[0].copy()
    settings = TrainConfig(data_dir="", fine_tune_epochs=2, fine_tune_batch_size=8, fine_tune_learning_rate=1e-3,
                           fine_tune_blocks=2).fine_tune_settings()
    history = finetune.fine_tune(extractor, head, small_split(range(1, 9)), small_split(range(9, 13)), settings, [])
    assert len(history.epoch) == 2
    for before, after in zip(statistics, batch_norm_statistics(extractor)):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(extractor.get_layer("block10_project_conv").get_weights()[0], frozen_before)
    assert not np.allclose(extractor.get_layer("block15_project_conv").get_weights()[0], top_before)
    assert not extractor.trainable_weights  # frozen again afterwards


def test_fine_tuning_takes_its_own_settings_derived_from_the_train_config():
    config = TrainConfig(data_dir="", fine_tune_blocks=2, fine_tune_learning_rate=1e-4, fine_tune_epochs=3,
                         fine_tune_patience=1, fine_tune_batch_size=16, augment=False, seed=7)
    settings = config.fine_tune_settings()
    assert settings == FineTuneSettings(blocks=2, learning_rate=1e-4, epochs=3, patience=1, batch_size=16,
                                        augment=False, seed=7)
    assert pickle.loads(pickle.dumps(settings)) == settings  # what Ray sends its fine-tuning workers
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.epochs = 1


def test_unfreeze_counts_blocks_from_the_top():
    resnet = backbones.build_feature_extractor("resnet50", weights="random", fold_batch_norm=False)
    finetune.unfreeze_top(resnet, 3)  # ResNet-50's default: stage conv5
    trainable = {layer.name for layer in resnet.layers if layer.trainable and layer.weights}
    assert trainable and all(name.startswith("conv5_") for name in trainable)
    assert not any(isinstance(resnet.get_layer(n), keras.layers.BatchNormalization) for n in trainable)


def test_augmentation_applies_to_training_batches_only():
    paths, labels = small_split([1, 2])
    plain = next(iter(finetune.labelled_batches(paths, labels, 96, 4)))[0].numpy()
    again = next(iter(finetune.labelled_batches(paths, labels, 96, 4)))[0].numpy()
    augmented = next(iter(finetune.labelled_batches(paths, labels, 96, 4,
                                                    augment=finetune.augmentation(seed=0))))[0].numpy()
    np.testing.assert_array_equal(plain, again)
    assert augmented.shape == plain.shape and not np.allclose(augmented, plain)


def test_a_fine_tuning_that_hurts_is_discarded(tmp_path):
    root = real_dataset(tmp_path / "data", train_per_class=20, test_per_class=10)
    config = TrainConfig(data_dir=str(root), backbone="efficientnet_lite0", image_size=160, runs_dir=str(tmp_path),
                         name="ft", fine_tune=True, fine_tune_epochs=1, fine_tune_learning_rate=5.0,
                         fine_tune_blocks=4, calibrate=False)
    run_dir = catsdogs.train(config).run_dir
    stages = json.load(open(f"{run_dir}/metrics.json"))["stages"]
    assert set(stages) == {"extract", "head", "fine_tune", "kept"}
    assert stages["fine_tune"]["val_loss"] > stages["head"]["val_loss"] and stages["kept"] == "head"
    # The saved model is the stage-1 model: its validation loss is the head's, not the ruined one's.
    saved = json.load(open(f"{run_dir}/metrics.json"))["validation"]["log_loss"]
    assert abs(saved - stages["head"]["val_loss"]) < 1e-4
