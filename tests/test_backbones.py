"""The backbone registry: genuine EfficientNet-Lite0/1/2 ImageNet weights, ResNet-50 with random and file weights."""

import keras
import numpy as np
import pytest

from catsdogs.data.images import load_image
from catsdogs.engine import finetune
from catsdogs.errors import WeightsError
from catsdogs.models import backbones, efficientnet_lite, precision, weights
from catsdogs.models.folding import fold_batch_normalization
from catsdogs.models.layers import resize_layer
from catsdogs.models.torch_checkpoint import read_torch_checkpoint
from catsdogs.utils import host
from conftest import photo

DOMESTIC_CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
DOGS = range(151, 269)


LITE_VARIANTS = sorted(efficientnet_lite.VARIANTS)


def imagenet_top1(name, paths):
    """The ImageNet class each photo gets from a Lite variant with its classifier, at its training resolution."""
    scaling = efficientnet_lite.VARIANTS[name]
    inputs = keras.Input((scaling.resolution, scaling.resolution, 3))
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128)(inputs)
    model = keras.Model(inputs, efficientnet_lite.build_efficientnet_lite(x, scaling, include_top=True))
    efficientnet_lite.load_torch_weights(model, read_torch_checkpoint(weights.lite_checkpoint(name)))
    resize = resize_layer(scaling.resolution)
    pixels = np.concatenate([resize(load_image(path)[None].astype("float32")) for path in paths])
    return model.predict(pixels, verbose=0).argmax(axis=1)


@pytest.mark.parametrize("name", LITE_VARIANTS)
def test_lite_ports_recognise_real_photos_as_imagenet_classes(name):
    cats = imagenet_top1(name, [photo("test", "cats", 4001), photo("test", "cats", 4005)])
    dogs = imagenet_top1(name, [photo("test", "dogs", 4003), photo("test", "dogs", 4004)])
    assert all(c in DOMESTIC_CATS for c in cats) and all(d in DOGS for d in dogs), (cats, dogs)


def test_lite_variants_scale_lite0_as_their_checkpoints_do():
    # Block counts and widths read off the checkpoints: Lite1 is deeper, Lite2 also wider, stem and head fixed.
    scaled = {name: efficientnet_lite.scaled_stages(efficientnet_lite.VARIANTS[name]) for name in LITE_VARIANTS}
    assert [[stage[0] for stage in scaled[name]] for name in LITE_VARIANTS] == [
        [1, 2, 2, 3, 3, 4, 1], [1, 3, 3, 4, 4, 5, 1], [1, 3, 3, 4, 4, 5, 1]]
    assert [stage[-1] for stage in scaled["efficientnet_lite2"]] == [16, 24, 48, 88, 120, 208, 352]
    assert [stage[-1] for stage in scaled["efficientnet_lite1"]] == [16, 24, 40, 80, 112, 192, 320]


def test_checkpoint_of_another_variant_is_refused():
    inputs = keras.Input((64, 64, 3))
    lite1 = efficientnet_lite.build_efficientnet_lite(inputs, efficientnet_lite.VARIANTS["efficientnet_lite1"])
    lite1 = keras.Model(inputs, lite1)  # 21 blocks, Lite0 has 16: 5 x 15 parameters missing
    lite0_state = read_torch_checkpoint(weights.lite_checkpoint("efficientnet_lite0"))
    with pytest.raises(ValueError, match="does not fit this EfficientNet-Lite variant: 75 parameters missing"):
        efficientnet_lite.load_torch_weights(lite1, lite0_state)


@pytest.mark.parametrize("name", LITE_VARIANTS)
def test_lite_extractor_is_frozen_explainable_tunable_and_its_converted_weights_are_cached(name, isolated_cache):
    backbone = backbones.get_backbone(name)
    extractor = backbones.build_feature_extractor(name)
    size = backbone.default_image_size
    assert extractor.output_shape == (None, backbone.feature_dim) == (None, 1280) and not extractor.trainable_weights
    # Grad-CAM's layer: the head's activations, on a grid 32 times smaller than the input.
    assert extractor.get_layer(backbone.last_conv_layer).output.shape == (None, -(-size // 32), -(-size // 32), 1280)
    converted = isolated_cache / "weights" / f"{name}_imagenet.weights.h5"
    stamp = converted.stat().st_mtime_ns
    again = backbones.build_feature_extractor(name, image_size=224)
    assert converted.stat().st_mtime_ns == stamp
    assert again.input_shape == (None, 224, 224, 3)
    assert weights.weights_fingerprint(again) == weights.weights_fingerprint(extractor)

    # Fine-tuning unfreezes the last blocks and the head, BatchNormalization excepted.
    tunable = backbones.build_feature_extractor(name, weights="random", image_size=96, fold_batch_norm=False)
    finetune.unfreeze_top(tunable, 3)
    last = len(backbone.blocks) - 1
    assert last == efficientnet_lite.num_blocks(efficientnet_lite.VARIANTS[name]) - 1
    assert {layer.name.split("_")[0] for layer in tunable.layers if layer.trainable_weights} == {
        f"block{last - 2}", f"block{last - 1}", f"block{last}", "head"}


def test_resnet50_random_and_weights_file_round_trip(tmp_path):
    keras.utils.set_random_seed(1)
    # Weights files hold the original layers, BatchNormalization included, as Keras' download does.
    random = backbones.build_feature_extractor("resnet50", weights="random", fold_batch_norm=False)
    assert random.output_shape == (None, 2048) and not random.trainable_weights
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    expected = random.predict(pixels, verbose=0)

    new_format = tmp_path / "resnet.weights.h5"
    random.save_weights(new_format)
    import h5py
    from keras.src.legacy.saving import legacy_h5_format  # the format of Keras' own download

    legacy = tmp_path / "resnet50_notop.h5"
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, random)

    keras.utils.set_random_seed(2)
    for weights_file in (new_format, legacy):
        loaded = backbones.build_feature_extractor("resnet50", weights=str(weights_file), fold_batch_norm=False)
        assert weights.weights_fingerprint(loaded) == weights.weights_fingerprint(random)
        np.testing.assert_allclose(loaded.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-5)
    folded = backbones.build_feature_extractor("resnet50", weights=str(new_format))
    np.testing.assert_allclose(folded.predict(pixels, verbose=0), expected, rtol=1e-4, atol=1e-4)


def test_resnet50_offline_says_how_to_proceed(tmp_path, monkeypatch):
    from keras.src.applications import resnet
    from keras.src.backend import config

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path))  # nothing cached
    monkeypatch.setattr(resnet, "BASE_WEIGHTS_PATH", "http://127.0.0.1:9/")  # nothing listens there
    with pytest.raises(WeightsError) as error:
        backbones.build_feature_extractor("resnet50")
    message = str(error.value)
    assert "--weights FILE" in message and "efficientnet_lite0" in message
    assert weights.RESNET50_WEIGHTS_URL in message


def test_missing_weights_file_and_unknown_backbone(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        backbones.build_feature_extractor("efficientnet_lite0", weights=str(tmp_path / "none.h5"))
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        backbones.build_feature_extractor("vgg16")


def test_caffe_preprocessing_matches_keras():
    from catsdogs.models.layers import CaffePreprocessing

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(CaffePreprocessing()(pixels))
    np.testing.assert_allclose(ours, keras.applications.resnet50.preprocess_input(pixels.copy()), atol=1e-4)


def real_pixels(*photos):
    return np.concatenate([resize_layer(224)(load_image(p)[None].astype("float32")) for p in photos])


def test_folding_batch_normalization_keeps_the_features():
    keras.utils.set_random_seed(0)
    original = backbones.build_feature_extractor("efficientnet_lite0", image_size=224, fold_batch_norm=False)
    folded = fold_batch_normalization(original)
    assert not [layer for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(original.layers) - len(folded.layers) == 49  # every BatchNormalization of Lite0 follows a convolution
    assert folded.name == "efficientnet_lite0" and folded.get_layer(efficientnet_lite.LAST_CONV_LAYER)
    pixels = real_pixels(photo("test", "cats", 4001), photo("test", "dogs", 4003))
    np.testing.assert_allclose(folded.predict(pixels, verbose=0), original.predict(pixels, verbose=0),
                               rtol=1e-4, atol=1e-4)


def test_batch_normalization_whose_input_is_also_used_elsewhere_is_not_folded():
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    normalized = keras.layers.BatchNormalization(name="bn")(conv)
    model = keras.Model(inputs, keras.layers.Add()([normalized, conv]))
    bn = model.get_layer("bn")
    bn.set_weights([np.full(4, 2.0), np.ones(4), np.full(4, 0.5), np.full(4, 4.0)])
    folded = fold_batch_normalization(model)
    assert folded.get_layer("bn") and not folded.get_layer("conv").use_bias
    pixels = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(folded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), rtol=1e-5)


def test_bfloat16_backbone_computes_in_bfloat16_and_returns_float32():
    extractor = backbones.build_feature_extractor("efficientnet_lite0", image_size=224, precision="bfloat16")
    convolutions = [layer for layer in extractor.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and all(layer.compute_dtype == "bfloat16" for layer in convolutions)
    assert all(weight.dtype == "float32" for weight in extractor.weights)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone
    pixels = real_pixels(photo("test", "cats", 4001), photo("test", "dogs", 4003))
    features = extractor.predict(pixels, verbose=0)
    assert features.dtype == np.float32
    exact = backbones.build_feature_extractor("efficientnet_lite0", image_size=224).predict(pixels, verbose=0)
    cosine = (features * exact).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(exact, axis=1)
    assert (cosine > 0.99).all() and not np.allclose(features, exact, rtol=1e-4)  # close, and really bf16


def test_precision_auto_is_bfloat16_only_where_it_was_measured_faster(tmp_path, monkeypatch):
    zen4, xeon_amx, xeon_no_amx, old = (tmp_path / name for name in ("zen4", "xeon_amx", "xeon", "old"))
    zen4.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    xeon_amx.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    xeon_no_amx.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    old.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert host.cpu_has_bfloat16(zen4) and host.cpu_has_bfloat16(xeon_no_amx) and not host.cpu_has_bfloat16(old)
    assert not host.cpu_has_bfloat16(tmp_path / "missing")
    assert host.cpu_has_fast_bfloat16(zen4) and host.cpu_has_fast_bfloat16(xeon_amx)
    assert not host.cpu_has_fast_bfloat16(xeon_no_amx) and not host.cpu_has_fast_bfloat16(old)
    for fast, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: fast)
        assert precision.resolve_precision("auto") == expected
        assert precision.resolve_precision("float32") == "float32"
    with pytest.raises(ValueError, match="unknown precision 'float16'"):
        precision.resolve_precision("float16")
