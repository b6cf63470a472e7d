"""The frozen backbone in each runtime and precision: the rule `auto` follows, and the same answers everywhere."""

import os
import subprocess
import sys

import numpy as np
import pytest

import catsdogs
from catsdogs.inference import backbone_runtime as backbone_runtimes
from catsdogs.inference.classifier import Classifier
from catsdogs.inference.features import extractor_features
from catsdogs.inference.model_formats import KerasModel
from catsdogs.models import model as model_lib
from catsdogs.models import precision as precision_lib
from catsdogs.models.backbones import extractor_members
from catsdogs.store.run_dir import BACKBONE
from catsdogs.utils import host
from catsdogs.utils.csvfiles import read_csv
from conftest import photo

# 30 cats and 30 dogs of the test folder, none of them seen in training.
PHOTOS = [("test", cls, n) for cls in ("cats", "dogs") for n in range(4300, 4330)]


@pytest.mark.parametrize("amx, fast_bfloat16, vnni, expected", [
    (True, True, True, ("keras", "bfloat16")),  # Intel with AMX: TensorFlow's bfloat16 kernels
    (False, True, True, ("onnx", "int8")),  # AMD Zen 4/5: int8 measured faster than Keras bfloat16
    (False, False, True, ("onnx", "int8")),  # Intel with VNNI and no AMX
    (False, False, False, ("onnx", "float32")),  # AVX2 laptops and servers
])
def test_auto_follows_the_measured_rule_from_the_cpu_flags(monkeypatch, amx, fast_bfloat16, vnni, expected):
    monkeypatch.setattr(backbone_runtimes, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(backbone_runtimes, "cpu_has_vnni", lambda: vnni)
    monkeypatch.setattr(precision_lib, "cpu_has_fast_bfloat16", lambda: fast_bfloat16)
    assert backbone_runtimes.choose() == expected
    assert backbone_runtimes.choose("onnx") == ("onnx", "int8" if vnni else "float32")
    assert backbone_runtimes.choose("onnx", "float32") == ("onnx", "float32")
    assert backbone_runtimes.choose("auto", "int8") == ("onnx", "int8")
    assert backbone_runtimes.choose("auto", "float32") == ("onnx", "float32")
    assert backbone_runtimes.choose("auto", "bfloat16") == ("keras", "bfloat16")
    assert backbone_runtimes.choose("auto", "auto", keras_only="fine-tuning") == (
        "keras", "bfloat16" if fast_bfloat16 else "float32")
    assert backbone_runtimes.choose("keras", "float32") == ("keras", "float32")


@pytest.mark.parametrize("runtime, precision, keras_only, message", [
    ("keras", "int8", None, "int8 runs in ONNX Runtime"),
    ("onnx", "bfloat16", None, "no bfloat16"),
    ("onnx", "auto", "fine-tuning trains the backbone in Keras", "fine-tuning trains the backbone in Keras"),
    ("auto", "int8", "the ensemble a+b runs its members in Keras", "ensemble"),
    ("tensorrt", "auto", None, "unknown backbone runtime"),
    ("auto", "float16", None, "unknown precision"),
])
def test_impossible_runtime_and_precision_are_refused_with_the_reason(runtime, precision, keras_only, message):
    with pytest.raises(catsdogs.ConfigError, match=message):
        backbone_runtimes.choose(runtime, precision, keras_only)


def test_vnni_is_read_from_the_cpu_flags(tmp_path):
    zen3, zen4 = tmp_path / "zen3", tmp_path / "zen4"
    zen3.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    zen4.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16\n")
    assert not host.cpu_has_vnni(zen3) and host.cpu_has_vnni(zen4)


@pytest.fixture(scope="module")
def runtimes_of_the_run(lite0_run, isolated_cache):
    """The lite0 run's model with its backbone in every runtime and precision, and real test photos."""
    run_dir, _, data = lite0_run
    model = model_lib.load(run_dir)
    float32 = model_lib.float32_model(model) if model_lib.compute_precision(model) != "float32" else model
    (extractor,) = extractor_members(model_lib.parts(float32).extractor)
    # The run's own training photos: where the run computed its features in int8, that backbone is in the cache.
    training_photos = [os.path.join(data, row["path"]) for row in read_csv(run_dir / "splits.csv")
                       if row["split"] == "train"]
    runtimes = {
        "keras float32": KerasModel(float32),
        "onnx float32": KerasModel(float32, backbone_runtimes.onnx_backbone(extractor, "float32", isolated_cache)),
        "onnx int8": KerasModel(float32, backbone_runtimes.onnx_backbone(extractor, "int8", isolated_cache,
                                                                           training_photos)),
    }
    return runtimes, [str(photo(*p)) for p in PHOTOS]


def test_every_runtime_and_precision_gives_the_labels_of_float32_keras(runtimes_of_the_run):
    runtimes, photos = runtimes_of_the_run
    predictions = {name: Classifier(runtime).predict(photos, reject=False) for name, runtime in runtimes.items()}
    reference = predictions["keras float32"]
    for name, got in predictions.items():
        same = np.mean([g.label == r.label for g, r in zip(got, reference)])
        if "int8" in name:  # the bar: >= 99.8% the same labels; on 60 photos, all of them
            assert same == 1.0, name
            assert max(abs(g.probability - r.probability) for g, r in zip(got, reference)) < 0.1
        else:
            assert same == 1.0, name
            for g, r in zip(got, reference):
                assert g.probabilities == pytest.approx(r.probabilities, abs=1e-4)
                assert g.in_distribution_score == pytest.approx(r.in_distribution_score, abs=1e-4)


def test_the_int8_backbone_is_calibrated_once_per_calibration_set(runtimes_of_the_run, lite0_run, isolated_cache):
    runtimes, _ = runtimes_of_the_run
    int8 = runtimes["onnx int8"].backbone
    (extractor,) = extractor_members(model_lib.parts(runtimes["keras float32"].model).extractor)
    training_photos = [os.path.join(lite0_run[2], row["path"]) for row in read_csv(lite0_run[0] / "splits.csv")
                       if row["split"] == "train"]
    again = backbone_runtimes.onnx_backbone(extractor, "int8", isolated_cache, training_photos)
    assert again.path == int8.path and again.fingerprint == int8.fingerprint  # from the cache
    other = backbone_runtimes.onnx_backbone(extractor, "int8", isolated_cache, training_photos[:8])
    assert other.path != int8.path
    with pytest.raises(catsdogs.ConfigError, match="calibrated on training photos"):
        backbone_runtimes.onnx_backbone(extractor, "int8", isolated_cache, [])


def test_features_of_each_runtime_are_cached_apart(runtimes_of_the_run, isolated_cache, tmp_path):
    runtimes, photos = runtimes_of_the_run
    extractor = model_lib.parts(runtimes["keras float32"].model).extractor
    paths = photos[:3]
    hashes = [f"{i:064x}" for i in range(3)]
    keras = extractor_features(extractor, "float32", paths, hashes, str(tmp_path), 3)
    onnx = extractor_features(extractor, "float32", paths, hashes, str(tmp_path), 3, runtime="onnx")
    folders = sorted(os.listdir(tmp_path / "features"))
    assert len(folders) == 2 and any("-onnx-float32-" in f for f in folders)
    np.testing.assert_allclose(onnx.values, keras.values, rtol=1e-4, atol=1e-4)


def test_a_run_whose_backbone_ran_in_onnx_runtime_predicts_with_it_again(tmp_path, lite0_run):
    run = catsdogs.train(lite0_run[2], backbone="efficientnet_lite0", runtime="onnx", precision="float32",
                         image_size=160, open_set="none", runs_dir=str(tmp_path), name="onnx")
    assert (tmp_path / "onnx" / BACKBONE).exists()
    assert run.config.runtime == "onnx" and run.classifier.runtime.backbone is not None
    loaded = catsdogs.load(run.run_dir)
    assert loaded.runtime.backbone is not None and loaded.runtime.backbone.precision == "float32"
    keras = catsdogs.load(run.run_dir, "keras")  # all of the model in Keras
    assert keras.runtime.backbone is None
    photos = [str(photo(*p)) for p in PHOTOS[::10]]
    for a, b in zip(loaded.predict(photos), keras.predict(photos)):
        assert a.label == b.label and a.probabilities == pytest.approx(b.probabilities, abs=1e-4)


@pytest.mark.parametrize("given, expected", [(None, "True"), ("0", "False")])
def test_importing_catsdogs_turns_tensorflows_onednn_on_unless_the_user_said_otherwise(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if given is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = given
    script = ("import catsdogs, tensorflow\n"
              "from tensorflow.python.util import _pywrap_util_port\n"
              "print(_pywrap_util_port.IsMklEnabled())")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == expected, result.stderr
