"""Open-set rejection: a photo of neither class is answered "unknown", everywhere a prediction leaves."""

import json

import numpy as np
import pytest

import catsdogs
from catsdogs.cli import main
from catsdogs.models import openset
from conftest import photo, unknown_photo

CAR, BUILDING = ("cars", "00029.jpg"), ("buildings", "urban_img_001.jpg")


def clusters(rng, centre, count):
    return rng.normal(centre, 1.0, size=(count, 16)).astype(np.float32)


@pytest.mark.parametrize("methods", [("knn",), ("mahalanobis",), ("knn", "mahalanobis"), ("msp",), ("energy",)])
def test_the_threshold_keeps_the_requested_share_of_training_photos_and_rejects_far_ones(methods):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (2, 16)) * 4 + 20
    features = np.concatenate([clusters(rng, centres[0], 1000), clusters(rng, centres[1], 1000)])
    labels = np.repeat([0, 1], 1000)
    logits = ((features - features.mean(0)) @ (centres[1] - centres[0]))[:, None] / 50
    fit = openset.fit_open_set(features, labels, logits, 2, methods, keep=0.9, seed=0)
    assert 0.9 <= fit.training_kept <= 0.91
    # New photos of the same classes, scored by the layer that goes into the model, are kept at the
    # rate the out-of-fold training scores promised.
    fresh = np.concatenate([clusters(rng, centres[0], 1000), clusters(rng, centres[1], 1000)])
    fresh_logits = ((fresh - features.mean(0)) @ (centres[1] - centres[0]))[:, None] / 50
    scores = np.asarray(fit.layer([fresh, fresh_logits]))
    assert 0 <= scores.min() and scores.max() <= 1
    assert abs((scores >= fit.threshold).mean() - 0.9) < 0.03
    far = clusters(rng, -centres[0], 50) if "msp" not in methods and "energy" not in methods else features[:0]
    if len(far):
        far_logits = ((far - features.mean(0)) @ (centres[1] - centres[0]))[:, None] / 50
        assert (np.asarray(fit.layer([far, far_logits])) < fit.threshold).all()


def test_unknown_methods_and_impossible_imagenet_scores_are_refused_before_training():
    with pytest.raises(catsdogs.ConfigError, match="methods joined by"):
        openset.resolve_methods("knn+bogus", "efficientnet_lite0", "imagenet", ["cats", "dogs"])
    with pytest.raises(catsdogs.ConfigError, match="map to ImageNet"):
        openset.resolve_methods("imagenet", "efficientnet_lite0", "imagenet", ["apples", "pears"])
    assert openset.resolve_methods("auto", "efficientnet_lite0", "imagenet", ["cats", "dogs"]) == ("knn", "imagenet")
    assert openset.resolve_methods("auto", "efficientnet_lite0", "imagenet", ["apples", "pears"]) == ("knn",)
    assert openset.resolve_methods("auto", "resnet50", "random", ["cats", "dogs"]) == ("knn",)
    assert openset.resolve_methods("none", "efficientnet_lite0", "imagenet", ["cats", "dogs"]) == ()


def test_the_run_reports_its_open_set_and_keeps_known_photos(lite0_run):
    run_dir, metrics, _ = lite0_run
    o = metrics["open_set"]
    assert o["methods"] == ["knn", "imagenet"] and o["keep"] == 0.99 and o["training_kept"] >= 0.99
    assert o["validation_kept"] >= 0.9 and o["test_kept"] >= 0.9
    assert (run_dir / "open_set.png").exists() and (run_dir / "rejections.png").exists()
    assert "Open set" in (run_dir / "report.html").read_text()


def test_a_car_is_unknown_and_no_reject_restores_a_class(lite0_run, capsys):
    run_dir = lite0_run[0]
    clf = catsdogs.load(run_dir)
    car, building, cat = unknown_photo(*CAR), unknown_photo(*BUILDING), photo("test", "cats", 4001)
    predictions = clf.predict([car, building, cat])
    assert [p.label for p in predictions] == ["unknown", "unknown", "cats"]
    assert [p.accepted for p in predictions] == [False, False, True]
    assert predictions[0].in_distribution_score < clf.info.reject_threshold <= predictions[2].in_distribution_score
    assert predictions[0].probabilities.keys() == {"cats", "dogs"}  # the known classes' probabilities stay
    assert [p.label for p in clf.predict([car], reject=False)] != ["unknown"]
    assert clf.predict([cat], reject_threshold=1.01)[0].label == "unknown"  # a stricter threshold per call

    assert main(["predict", str(run_dir), str(car), str(cat)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[-2] == "unknown" and "in-distribution" in table[0]
    assert main(["predict", str(run_dir), str(car), "--json", "--unknown-label", "neither"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["label"] == "neither" and row["accepted"] is False and 0 <= row["in_distribution_score"] < 1
    assert main(["predict", str(run_dir), str(car), "--json", "--no-reject"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in ("cats", "dogs")


def test_evaluate_measures_unknown_photos(lite0_run, tmp_path, capsys):
    run_dir, _, data = lite0_run
    unknown = tmp_path / "unknown"
    for folder, name in (CAR, BUILDING, ("ants-and-bees", "ants_1073564163_225a64f170.jpg")):
        target = unknown / folder
        target.mkdir(parents=True, exist_ok=True)
        (target / name).symlink_to(unknown_photo(folder, name))
    (unknown / "README.md").write_text("not a photo")
    out = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--data", str(data), "--output", str(out), "--unknown-data", str(unknown)]) == 0
    assert "unknown photos: 3" in capsys.readouterr().out
    measured = json.loads((out / "metrics.json").read_text())["open_set"]["unknown"]
    assert measured["photos"] == 3 and measured["auroc"] > 0.9 and measured["accepted"] <= 1 / 3
