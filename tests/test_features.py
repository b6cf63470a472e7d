"""The feature cache: computed once, reused, recomputed exactly when the image or extractor changes."""

import glob
import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from catsdogs.data.images import load_image
from catsdogs.inference.features import cached_features
from catsdogs.inference.model_formats import compiled_forward
from catsdogs.inference.pipeline import run_on_files
from catsdogs.inference.preprocess import PIPELINE_VERSION, TTA_VIEWS
from catsdogs.models import backbones
from catsdogs.models.weights import weights_fingerprint
from catsdogs.store import feature_cache as features

LITE0_SIZE = backbones.get_backbone("efficientnet_lite0").default_image_size
from conftest import photo


@pytest.fixture(scope="module")
def lite0():
    return backbones.build_feature_extractor("efficientnet_lite0")


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def cache_for(extractor, root):
    return features.FeatureCache(root, features.cache_key(
        extractor.name, extractor.input_shape[1], "float32", weights_fingerprint(extractor), PIPELINE_VERSION))


def stored_entries(cache):
    return sum(len(np.load(chunk)["hashes"]) for chunk in glob.glob(f"{cache.folder}/chunk-*.npz"))


def test_features_are_computed_once_and_recomputed_only_for_changed_images(tmp_path, lite0):
    images = []
    for i, (cls, number) in enumerate([("cats", 4001), ("cats", 4002), ("dogs", 4001), ("dogs", 4002)]):
        images.append(tmp_path / f"img{i}.jpg")
        shutil.copy(photo("test", cls, number), images[-1])
    paths = [str(p) for p in images]
    cache = cache_for(lite0, tmp_path / "cache")
    first = cached_features(lite0, paths, [sha256(p) for p in paths], cache, batch_size=3)
    assert first.values.shape == (1, 4, 1280) and not first.errors and stored_entries(cache) == 4
    first = first.values[0]

    reopened = cache_for(lite0, tmp_path / "cache")
    again = cached_features(lite0, paths, [sha256(p) for p in paths], reopened, batch_size=3)
    assert stored_entries(reopened) == 4  # nothing recomputed
    np.testing.assert_array_equal(again.values[0], first)

    shutil.copy(photo("test", "dogs", 4003), images[1])  # the same path now holds another photo
    changed = cached_features(lite0, paths, [sha256(p) for p in paths], reopened, batch_size=3)
    changed = changed.values[0]
    assert stored_entries(reopened) == 5
    np.testing.assert_array_equal(changed[[0, 2, 3]], first[[0, 2, 3]])
    assert not np.allclose(changed[1], first[1])

    # Features match a direct forward pass of the extractor on the same pipeline.
    direct = run_on_files(compiled_forward(lite0), paths, LITE0_SIZE, 4).values[0]
    np.testing.assert_allclose(changed, direct, rtol=1e-5, atol=1e-5)

    # Test-time augmentation adds the mirror view: only that is computed, and it is the mirror's features.
    both = cached_features(lite0, paths[:2], [sha256(p) for p in paths[:2]], reopened, 2, TTA_VIEWS).values
    assert both.shape == (2, 2, 1280) and stored_entries(reopened) == 7
    np.testing.assert_array_equal(both[0], changed[:2])
    mirrored = tmp_path / "mirrored.png"
    Image.fromarray(load_image(paths[0])[:, ::-1]).save(mirrored)
    direct_mirror = run_on_files(compiled_forward(lite0), [str(mirrored)], LITE0_SIZE, 1).values[0, 0]
    np.testing.assert_allclose(both[1, 0], direct_mirror, rtol=1e-4, atol=1e-4)


def test_the_key_follows_size_precision_weights_and_the_way_photos_are_prepared(lite0):
    fingerprint = weights_fingerprint(lite0)
    keys = {features.cache_key("efficientnet_lite0", 224, "float32", fingerprint, PIPELINE_VERSION),
            features.cache_key("efficientnet_lite0", 260, "float32", fingerprint, PIPELINE_VERSION),
            features.cache_key("efficientnet_lite0", 224, "bfloat16", fingerprint, PIPELINE_VERSION),
            features.cache_key("efficientnet_lite0", 224, "float32", "0" * 64, PIPELINE_VERSION),
            features.cache_key("resnet50", 224, "float32", fingerprint, PIPELINE_VERSION),
            # Version 2's features: Ray's workers had decoded large photos at full size into them.
            features.cache_key("efficientnet_lite0", 224, "float32", fingerprint, 2)}
    assert len(keys) == 6 and PIPELINE_VERSION > 2


def test_undecodable_files_are_errors_not_nan_rows_and_are_not_cached(tmp_path, lite0):
    good = tmp_path / "good.jpg"
    shutil.copy(photo("test", "cats", 4001), good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:2000])
    cache = cache_for(lite0, tmp_path / "cache")
    outputs = cached_features(
        lite0, [str(good), str(bad)], [sha256(good), sha256(bad)], cache, batch_size=2)
    assert outputs.ok.tolist() == [True, False] and np.isfinite(outputs.values).all()
    assert np.abs(outputs.values[0, 0]).sum() > 0
    assert list(outputs.errors) == [str(bad)] and "truncated" in outputs.errors[str(bad)]
    assert stored_entries(cache) == 1
    assert not glob.glob(f"{cache.folder}/*partial*")
