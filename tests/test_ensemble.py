"""Feature ensembles (issue 11): several backbones' cached features, one head, one end-to-end model."""

import json

import httpx
import numpy as np
import pytest

import catsdogs
from catsdogs.data.images import load_image
from catsdogs.engine import export
from catsdogs.errors import ConfigError
from catsdogs.inference.explain import Explainer
from catsdogs.models import backbones
from catsdogs.store import export_dir
from conftest import ServerThread, photo

ENSEMBLE = "efficientnet_lite0+efficientnet_lite1"


def _chunks(cache, backbone):
    return {p.name for p in cache.glob(f"features/{backbone}-*/chunk-*.npz")}


@pytest.fixture(scope="module")
def ensemble_run(lite0_run, isolated_cache, tmp_path_factory):
    """The ensemble trained on lite0_run's photos: Lite0's features come from the cache.

    An ensemble's members run in Keras; lite0_run's backbone may have run in ONNX Runtime (the
    default on most CPUs), whose features are cached apart, so a Keras run of Lite0 fills the cache first.
    """
    catsdogs.train(lite0_run[2], backbone="efficientnet_lite0", runtime="keras", runs_dir=None)
    lite0_chunks = _chunks(isolated_cache, "efficientnet_lite0")
    run = catsdogs.train(lite0_run[2], backbone=ENSEMBLE, runs_dir=str(tmp_path_factory.mktemp("runs")),
                         name="ensemble")
    return run, lite0_chunks


def test_each_member_is_cached_on_its_own_and_reused(ensemble_run, isolated_cache):
    run, lite0_chunks = ensemble_run
    assert run.config.image_size == 380  # the largest member's size, shared
    assert _chunks(isolated_cache, "efficientnet_lite0") == lite0_chunks  # nothing recomputed for Lite0
    assert _chunks(isolated_cache, "efficientnet_lite1")  # Lite1's features, in their own folder
    assert not list(isolated_cache.glob("features/*_and_*")) and not list(isolated_cache.glob("features/*+*"))


def test_one_model_carries_both_backbones_and_predicts_as_in_training(ensemble_run, lite0_run):
    run, _ = ensemble_run
    assert run.metrics["accuracy"] >= 0.97  # 200 test photos
    loaded = catsdogs.load(run.run_dir)
    assert loaded.info.backbone == ENSEMBLE and loaded.info.reject_threshold is not None
    extractor = loaded.model.get_layer(backbones.extractor_name(ENSEMBLE))
    assert [m.name for m in backbones.extractor_members(extractor)] == ["efficientnet_lite0", "efficientnet_lite1"]
    assert extractor.output_shape[-1] == 2 * 1280
    paths = run.evaluation.paths[:4]
    got = np.array([p.probabilities["dogs"] for p in loaded.predict(paths)])
    assert np.allclose(got, run.evaluation.probabilities[:4, 1], atol=2e-3)


def test_ensemble_is_explained_exported_and_served(ensemble_run):
    run, _ = ensemble_run
    explainer = Explainer(run.model)
    batch = np.stack([explainer.prepare(np.asarray(load_image(photo("test", c, 4001))))
                      for c in ("cats", "dogs")])
    heatmaps = explainer.heatmaps(batch, [0, 1])
    assert heatmaps.shape == (2, 12, 12) and np.isclose(heatmaps.max(axis=(1, 2)), 1).all()

    folder, _ = export.export_model(run.run_dir, "onnx", parity_images=6, batch_size=6)
    parity = json.loads(open(f"{folder}/{export_dir.PARITY}").read())
    assert parity["agreement"] == 1.0 and parity["max_abs_probability_difference"] < 1e-4

    from catsdogs.apps.serve.app import create_app, load_served_model

    with ServerThread(create_app(*load_served_model(run.run_dir))) as url:
        answer = httpx.post(f"{url}/predict", params={"heatmap": "true"}, timeout=120,
                            files={"files": ("cat.jpg", photo("test", "cats", 4001).read_bytes())}).json()
    assert answer["predictions"][0]["label"] == "cats" and answer["predictions"][0]["heatmap_png"]


def test_ensemble_imagenet_classifier_averages_the_members_logits():
    kernel, bias = backbones.imagenet_classifier(ENSEMBLE)
    members = [backbones.imagenet_classifier(name) for name in backbones.member_names(ENSEMBLE)]
    features = np.random.default_rng(0).normal(size=(3, 2 * 1280)).astype(np.float32)
    expected = np.mean([f @ k + b for f, (k, b) in zip(np.split(features, 2, axis=1), members)], axis=0)
    assert np.allclose(features @ kernel + bias, expected, atol=1e-4)
    assert backbones.imagenet_classifier("resnet50+efficientnet_lite0") is None


@pytest.mark.parametrize("settings, message", [
    ({"backbone": "efficientnet_lite0+nope"}, "unknown backbone 'nope'"),
    ({"backbone": "efficientnet_lite0+efficientnet_lite0"}, "only once"),
    ({"backbone": ENSEMBLE, "fine_tune": True}, "fine-tuning takes one backbone"),
    ({"backbone": ENSEMBLE, "weights": __file__}, "imagenet or random weights"),
])
def test_ensemble_settings_are_refused_before_any_image_is_read(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        catsdogs.train(tmp_path / "no-such-folder", runs_dir=None, **settings)
