"""Training end to end on real photos: accuracy, the run directory, the saved model, the cache."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.special import expit, softmax
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import catsdogs
from catsdogs.cli import format_table
from catsdogs.config.train import TrainConfig
from catsdogs.data.images import load_image
from catsdogs.models import model as model_lib
from catsdogs.models.backbones import get_backbone
from catsdogs.models.heads import LinearHead
from catsdogs.utils.csvfiles import read_csv
from conftest import gradient, image_bytes, link_photos, photo, real_dataset


def train(config):
    run = catsdogs.train(config)
    return run.run_dir, run.metrics


def predict_files(run_dir, paths, **options):
    return [p.to_dict() for p in catsdogs.load(run_dir).predict(paths, **options)]


def saved_paths(run_dir, rows):
    """The photos of predictions.csv rows: their paths are relative to the run's data folder."""
    data_dir = json.loads(open(f"{run_dir}/config.json").read())["data_dir"]
    return [os.path.join(data_dir, r["path"]) for r in rows]


RUN_FILES = {"config.json", "model.keras", "metrics.json", "predictions.csv", "splits.csv", "integrity.json",
             "grid.png", "confusion.png", "errors.png", "reliability.png", "report.html"}


def test_lite0_on_100_photos_per_class_is_far_above_chance(lite0_run):
    run_dir, metrics, _ = lite0_run
    assert metrics["images"] == 200
    assert metrics["accuracy"] >= 0.95
    assert metrics["macro_avg"]["precision"] >= 0.95 and metrics["macro_avg"]["recall"] >= 0.95
    assert metrics["roc_auc"] > 0.98
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"] and len(saved["confusion_matrix"]) == 2
    saved_config = json.loads((run_dir / "config.json").read_text())
    assert saved_config["backbone"] == "efficientnet_lite0"
    assert saved_config["image_size"] == get_backbone("efficientnet_lite0").default_image_size  # 0 resolved
    html = (run_dir / "report.html").read_text()
    assert all(f'src="{name}"' in html for name in ("grid.png", "confusion.png", "errors.png", "reliability.png"))
    assert saved["stages"]["kept"] == "head" and saved["stages"]["head"]["C"] > 0  # linear head, cross-validated
    assert 0.2 < saved["calibration"]["temperature"] < 5 and saved["validation"]["images"] == 40


@pytest.mark.parametrize("classes", [2, 3])
def test_linear_head_is_the_cross_validated_logistic_regression_in_one_dense_layer(classes):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), 30)
    x = rng.normal(size=(len(y), 8)) * rng.uniform(0.1, 10, 8) + rng.normal(0, 5, 8) + y[:, None]
    fitted = LinearHead(seed=0).fit(x, y)
    head, strength = fitted.to_keras(), fitted.C_
    assert [layer.name for layer in head.layers] == ["features", "logits"]  # exports as plain weights
    expected = make_pipeline(StandardScaler(), LogisticRegression(C=strength, max_iter=5000)).fit(x, y)
    logits = head.predict(x, verbose=0)
    probabilities = expit(logits[:, 0]) if classes == 2 else softmax(logits, axis=1)
    expected_probabilities = expected.predict_proba(x)
    np.testing.assert_allclose(probabilities, expected_probabilities[:, 1] if classes == 2 else expected_probabilities,
                               atol=1e-5)


def test_saved_model_is_end_to_end_and_agrees_with_the_run(lite0_run):
    run_dir, _, _ = lite0_run
    model = model_lib.load(run_dir)
    info = model_lib.describe(model)
    assert (info.class_names, info.backbone, info.image_size) == (["cats", "dogs"], "efficientnet_lite0", 380)
    rows = read_csv(run_dir / "predictions.csv")[:16]
    predicted = predict_files(run_dir, saved_paths(run_dir, rows), reject=False)  # predictions.csv: the classes
    for row, new in zip(rows, predicted):
        assert new["label"] == row["predicted"]
        assert abs(new["probabilities"]["dogs"] - float(row["p_dogs"])) < 1e-4
    # Raw pixels of any size go straight in: the model resizes and preprocesses by itself.
    pixels = load_image(saved_paths(run_dir, rows)[0])[None].astype("float32")
    direct = model.predict(pixels, verbose=0)["probabilities"][0]
    assert abs(direct[1] - float(rows[0]["p_dogs"])) < 1e-4


def test_second_run_reuses_the_cached_features(lite0_run, tmp_path):
    run_dir, metrics, data = lite0_run
    cache = pathlib.Path(json.loads((run_dir / "config.json").read_text())["cache_dir"])
    chunks = sorted(cache.glob("features/*/chunk-*.npz"))
    config = TrainConfig(data_dir=str(data), backbone="efficientnet_lite0", runs_dir=str(tmp_path), name="again",
                         cache_dir=str(cache))
    again_dir, again = train(config)
    assert chunks and sorted(cache.glob("features/*/chunk-*.npz")) == chunks
    assert again["accuracy"] == metrics["accuracy"]  # same seed, same features, same head


def test_predict_reports_unreadable_files_and_predicts_the_rest(lite0_run, tmp_path):
    run_dir, _, _ = lite0_run
    folder = tmp_path / "photos"
    link_photos(folder, "test", "dogs", [4101, 4102])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    # Without rejection: a model of 200 photos may call a real dog atypical, and the open-set
    # decision is tested on its own (test_openset.py); here every readable photo must get its class.
    predictions = catsdogs.load(run_dir).predict([photo("test", "cats", 4101), folder], reject=False)
    rows = [p.to_dict() for p in predictions]
    assert [r.get("label") for r in rows] == ["cats", None, "dogs", "dogs"]
    assert rows[1]["path"].endswith("broken.jpg") and "truncated" in rows[1]["error"].lower()
    table = format_table(predictions)
    assert "ERROR" in table and table.count("\n") == 4


def test_broken_files_are_skipped_and_reported(tmp_path):
    root = tmp_path / "data"
    for cls in ("cats", "dogs"):
        link_photos(root / "train" / cls, "train", cls, range(1, 13))
        link_photos(root / "test" / cls, "test", cls, range(4001, 4005))
    cats = root / "train" / "cats"
    (cats / "zero.jpg").write_bytes(b"")
    (cats / "readme.jpg").write_text("this is text")
    (cats / "half.jpg").write_bytes(photo("train", "cats", 20).read_bytes()[:5000])
    (cats / "png_named.jpg").write_bytes(image_bytes(Image.open(photo("train", "cats", 21)), "PNG"))
    (cats / "cmyk.jpg").write_bytes(image_bytes(Image.open(photo("train", "cats", 22)).convert("CMYK"), "JPEG"))
    (root / "train" / "dogs" / "gray.png").write_bytes(image_bytes(gradient(mode="L"), "PNG"))
    shutil.copy(photo("train", "cats", 1), root / "test" / "cats" / "leaked.jpg")
    config = TrainConfig(data_dir=str(root), backbone="efficientnet_lite0", runs_dir=str(tmp_path / "runs"),
                         name="broken", head="dense", max_epochs=5)
    run_dir, metrics = train(config)
    history = read_csv(f"{run_dir}/history.csv")  # the dense head trains in epochs
    assert [row["epoch"] for row in history] == ["1", "2", "3", "4", "5"] and os.path.exists(f"{run_dir}/curves.png")
    integrity = json.loads(open(f"{run_dir}/integrity.json").read())
    skipped = {item["path"].rsplit("/", 1)[1]: item["problem"] for item in integrity["skipped"]}
    assert set(skipped) == {"zero.jpg", "readme.jpg", "half.jpg"}
    assert "empty" in skipped["zero.jpg"] and "not an image" in skipped["readme.jpg"]
    assert "truncated" in skipped["half.jpg"].lower()
    quirks = {item["path"].rsplit("/", 1)[1]: item["quirks"] for item in integrity["handled_quirks"]}
    assert quirks["png_named.jpg"] == ["PNG data named .jpg"] and quirks["cmyk.jpg"] == ["CMYK converted to RGB"]
    assert quirks["gray.png"] == ["L converted to RGB"]
    assert [leak["test"].rsplit("/", 1)[1] for leak in integrity["test_train_leaks"]] == ["leaked.jpg"]
    assert metrics["images"] == 9
    html = open(f"{run_dir}/report.html").read()
    assert all(name in html for name in ("zero.jpg", "readme.jpg", "half.jpg", "leaked.jpg"))


@pytest.mark.slow
def test_resnet50_path_with_random_weights_trains_and_saves(tmp_path):
    root = real_dataset(tmp_path / "data", train_per_class=10, test_per_class=4)
    # Keras and 64 px: the path under test is ResNet-50's; its ONNX conversion and full size cost half a minute.
    config = TrainConfig(data_dir=str(root), backbone="resnet50", weights="random", runs_dir=str(tmp_path),
                         head="linear", max_epochs=3, runtime="keras", image_size=64)
    run_dir, metrics = train(config)
    assert metrics["images"] == 8
    info = model_lib.describe(model_lib.load(run_dir))
    assert (info.backbone, info.image_size) == ("resnet50", 64)


def test_bfloat16_run_saves_a_model_with_float32_output_that_predicts_as_in_training(tmp_path):
    root = real_dataset(tmp_path / "data", train_per_class=20, test_per_class=10)
    config = TrainConfig(data_dir=str(root), backbone="efficientnet_lite0", precision="bfloat16",
                         runs_dir=str(tmp_path / "runs"), name="bf16", max_epochs=20)
    run_dir, metrics = train(config)
    assert json.loads(open(f"{run_dir}/config.json").read())["precision"] == "bfloat16"
    model = model_lib.load(run_dir)  # a fresh load: the dtype policies come from the file
    assert model.get_layer("efficientnet_lite0").get_layer("stem_conv").compute_dtype == "bfloat16"
    outputs = model.output  # the probabilities and the in-distribution score
    assert model.get_layer("head").compute_dtype == "float32"
    assert all(output.dtype == "float32" for output in outputs.values())
    rows = read_csv(f"{run_dir}/predictions.csv")
    predicted = predict_files(run_dir, saved_paths(run_dir, rows), reject=False)
    assert [p["label"] for p in predicted] == [r["predicted"] for r in rows]
    difference = [abs(p["probabilities"]["dogs"] - float(r["p_dogs"])) for p, r in zip(predicted, rows)]
    assert max(difference) < 1e-5  # the same bfloat16 computation as when the features were cached


def test_threshold_for_a_target_is_chosen_on_validation_and_saved_in_the_model(tmp_path):
    root = real_dataset(tmp_path / "data", train_per_class=30, test_per_class=10)
    config = TrainConfig(data_dir=str(root), backbone="efficientnet_lite0", image_size=160, runs_dir=str(tmp_path),
                         target="recall:cats=1.0")
    run_dir, metrics = train(config)
    info = model_lib.describe(model_lib.load(run_dir))
    assert info.threshold == metrics["threshold"] != 0.5
    assert metrics["validation"]["per_class"]["cats"]["recall"] == 1.0


def test_exclusions_drop_listed_training_images_but_never_test_images(tmp_path):
    from catsdogs.data.corrections import apply_listed
    from catsdogs.data.dataset import Sample

    splits = {"train": [Sample("d/train/cats/cat.1.jpg", 0), Sample("d/train/cats/cat.2.jpg", 0)],
              "val": [Sample("d/train/dogs/dog.1.jpg", 1)], "test": [Sample("d/test/cats/cat.9.jpg", 0)]}
    listing = tmp_path / "label_errors.txt"
    listing.write_text("# confirmed label errors\ncat.2.jpg\nd/train/dogs/dog.1.jpg\ncat.9.jpg\n")
    kept = apply_listed(splits, ["cats", "dogs"], "d", listing, exclusions_only=True)
    assert [s.path for s in kept["train"]] == ["d/train/cats/cat.1.jpg"]
    assert kept["val"] == [] and kept["test"] == splits["test"]


def test_test_time_augmentation_keeps_the_output_format(lite0_run):
    run_dir, _, _ = lite0_run
    paths = [photo("test", "cats", 4150), photo("test", "dogs", 4150)]
    plain, averaged = predict_files(run_dir, paths), predict_files(run_dir, paths, tta=True)
    for row, tta_row in zip(plain, averaged):
        assert row.keys() == tta_row.keys() and row["label"] == tta_row["label"]
        assert sum(tta_row["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert tta_row["probabilities"] != row["probabilities"]  # a real second view, averaged in


def test_low_resolution_views_are_cached_and_train_the_head_beside_the_originals(lite0_run, isolated_cache,
                                                                                 monkeypatch):
    _, metrics, data = lite0_run
    fits = []
    fit = LinearHead.fit

    def recording_fit(self, X, y, groups=None):
        fits.append((len(X), groups))
        return fit(self, X, y, groups)

    monkeypatch.setattr(LinearHead, "fit", recording_fit)
    run = catsdogs.train(data, backbone="efficientnet_lite0", low_resolution=True, runs_dir=None)
    rows, groups = fits[0]  # the head itself (the open-set score's folds refit its pipeline, not LinearHead)
    assert rows == 2 * 160  # 200 training photos less 40 for validation, each as it is and at low resolution
    assert (np.bincount(groups) == 2).all()  # a photo's two views stay in one cross-validation fold
    ids = [i for chunk in isolated_cache.glob("features/efficientnet_lite0-380px-*/chunk-*.npz")
           for i in np.load(chunk)["hashes"].tolist()]
    assert sum(i.endswith(":low_resolution") for i in ids) == 160  # cached beside the originals
    assert run.metrics["accuracy"] >= metrics["accuracy"] - 0.02
    assert run.config.low_resolution and run.classifier.info.image_size == 380


@pytest.mark.parametrize("settings, message", [
    ({"val_fraction": 0}, "val_fraction 0: expected a fraction between 0 and 1"),
    ({"test_fraction": 1}, "test_fraction 1: expected a fraction between 0 and 1"),
    ({"open_set_keep": 1.0}, "open_set_keep 1.0: expected a fraction between 0 and 1"),
    ({"fine_tune_epochs": 0}, "fine_tune_epochs 0: expected at least 1"),
    ({"batch_size": -1}, "batch_size -1: expected at least 1"),
    ({"head": "deep"}, "unknown head 'deep'; choose one of ('linear', 'dense')"),
    ({"engine": "spark"}, "unknown engine 'spark'; choose one of ('local', 'ray')"),
    ({"image_size": 16}, "image size 16: at least 32 pixels"),
    ({"precision": "float8"}, "unknown precision 'float8'"),
    ({"exclude": "no-such-list.txt"}, "exclude file 'no-such-list.txt' not found"),
])
def test_train_config_checks_its_own_settings_without_data(settings, message):
    from catsdogs.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(data_dir="", **settings).check()


def test_train_config_defaults_pass_its_check_and_import_no_tensorflow():
    TrainConfig(data_dir="").check()  # the defaults, with no data folder at all
    script = ("import sys; from catsdogs.config.train import TrainConfig; "
              "TrainConfig(data_dir='').fine_tune_settings(); print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]
