"""Prediction sets with a guarantee (models/conformal.py): the promised coverage held on held-out synthetic
scores, with and without open-set rejections, per label for multi-label models; and every output path of a
real run answering the same sets (predict, its CSV and JSON, evaluate's metrics and report, serve)."""

import json
import re

import httpx
import numpy as np
import pytest

import catsdogs
from catsdogs.cli import main
from catsdogs.errors import ConfigError, UnsupportedError
from catsdogs.evaluation.coverage import coverage_interval, set_metrics
from catsdogs.models import conformal
from catsdogs.utils.csvfiles import read_csv
from conftest import photo, unknown_photo

TRIALS = 4000  # calibrations drawn, each with its own held-out photos
CALIBRATION = 30  # few photos, where the (n + 1) of the rank matters: 28/31 = 0.903 promised, 27/31 = 0.871 without it
HELD_OUT = 200


def miscalibrated(rng, shape, classes=4):
    """Probabilities of a model that is sure too often (softmax of logits twice too large), and true classes drawn
    from the truth (half the logits): the guarantee must hold whatever the model."""
    logits = rng.normal(0, 2.0, (*shape, classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    truth = np.exp(logits / 2) / np.exp(logits / 2).sum(-1, keepdims=True)
    y = (truth.cumsum(-1) > rng.random((*shape, 1))).argmax(-1)
    return probabilities, y


def covered_share(probabilities, y, members):
    return members[np.arange(len(y)), y].mean()


def test_sets_hold_the_true_class_of_the_promised_share_of_held_out_photos():
    rng = np.random.default_rng(0)
    coverage = 0.9
    probabilities, y = miscalibrated(rng, (TRIALS, CALIBRATION + HELD_OUT))
    shares, full_rule, sizes = [], [], []
    for p, labels in zip(probabilities, y):
        calibration, held = slice(0, CALIBRATION), slice(CALIBRATION, None)
        threshold = conformal.class_threshold(p[calibration][np.arange(CALIBRATION), labels[calibration]], coverage)
        shares.append(covered_share(p[held], labels[held], p[held] >= threshold))  # the score alone (LAC)
        members = conformal.prediction_sets(p[held], threshold, p[held].argmax(1))
        full_rule.append(covered_share(p[held], labels[held], members))
        sizes.append(members.sum(1).mean())
    # Over many calibrations, the share covered is k / (n + 1) on average, k = ceil((n + 1) * coverage).
    k = np.ceil((CALIBRATION + 1) * coverage)
    error = 3 * np.std(shares) / np.sqrt(TRIALS)
    assert coverage - error <= np.mean(shares) <= k / (CALIBRATION + 1) + error
    assert np.mean(full_rule) >= np.mean(shares)  # the predicted class always in: never less covered
    assert 1 <= np.mean(sizes) < 4  # and informative: most sets are smaller than every class


def test_photos_the_open_set_score_rejects_get_the_empty_set_and_the_promise_still_holds():
    rng = np.random.default_rng(1)
    coverage, calibration_photos = 0.8, 100  # enough photos that the rejections leave room for the coverage
    probabilities, y = miscalibrated(rng, (TRIALS, calibration_photos + HELD_OUT))
    accepted = rng.random((TRIALS, calibration_photos + HELD_OUT)) >= 0.05  # one known photo in 20 rejected
    with_rejection, calibrated_without = [], []
    for p, labels, kept in zip(probabilities, y, accepted):
        calibration, held = slice(0, calibration_photos), slice(calibration_photos, None)
        true_class = p[calibration][np.arange(calibration_photos), labels[calibration]]
        threshold = conformal.class_threshold(true_class, coverage, kept[calibration])
        members = conformal.prediction_sets(p[held], threshold, p[held].argmax(1), kept[held])
        assert not members[~kept[held]].any() and members[kept[held]].any(axis=1).all()  # empty iff rejected
        with_rejection.append(covered_share(p[held], labels[held], members))
        # The score alone, calibrated as if no photo were rejected, on the accepted photos:
        members = (p[held] >= conformal.class_threshold(true_class, coverage)) & kept[held][:, None]
        calibrated_without.append(covered_share(p[held], labels[held], members))
    error = 3 * np.std(with_rejection) / np.sqrt(TRIALS)
    assert np.mean(with_rejection) >= coverage - error
    assert np.mean(calibrated_without) < coverage - error  # ignoring the rejections would break the promise


def test_each_label_a_photo_has_is_in_its_set_with_the_promised_coverage():
    rng = np.random.default_rng(2)
    coverage, labels_count = 0.9, 3
    logits = rng.normal(0, 2.5, (TRIALS, CALIBRATION * 3 + HELD_OUT, labels_count))
    probabilities = 1 / (1 + np.exp(-logits))
    present = rng.random(logits.shape) < 1 / (1 + np.exp(-logits / 2))  # the model is sure too often here too
    shares = [[] for _ in range(labels_count)]
    for p, has in zip(probabilities, present):
        calibration, held = slice(0, CALIBRATION * 3), slice(CALIBRATION * 3, None)
        members = conformal.label_sets(p[held], conformal.label_thresholds(p[calibration], has[calibration], coverage))
        for k in range(labels_count):
            shares[k].append(members[has[held][:, k], k].mean())
    for label_shares in shares:
        assert np.mean(label_shares) >= coverage - 3 * np.std(label_shares) / np.sqrt(TRIALS)
    with pytest.raises(ConfigError, match="label 1: coverage 0.9: 3 calibration"):
        conformal.label_thresholds(np.full((10, 2), 0.5), np.array([[1, 1, 1] + [1] * 7, [1, 1, 1] + [0] * 7]).T,
                                   coverage)


def test_coverages_that_cannot_be_promised_are_refused_with_what_to_do():
    with pytest.raises(ConfigError, match=re.escape("coverage 0.95: 10 calibration (validation) photos can promise "
                                                    "at most 0.9091")):
        conformal.class_threshold(np.full(10, 0.9), 0.95)
    with pytest.raises(ConfigError, match=re.escape("the open-set score rejects 3 of the 20 validation photos, more "
                                                    "than the coverage allows to miss; choose a coverage of at most "
                                                    "0.8095")):
        conformal.class_threshold(np.full(20, 0.9), 0.9, np.arange(20) >= 3)
    for coverage in (0, 1, 1.5):
        with pytest.raises(ConfigError, match=f"coverage {coverage}: expected a share between 0 and 1"):
            conformal.class_threshold(np.full(20, 0.9), coverage)


def test_set_metrics_measure_coverage_with_an_exact_interval_and_the_sizes():
    members = np.array([[True, False], [True, True], [False, False], [False, True]])
    metrics = set_metrics(members, [0, 1, 0, 0], 0.9, 0.2, 50)
    assert metrics["measured"] == 0.5 and metrics["photos"] == 4 and metrics["mean_size"] == 1.0
    assert metrics["sizes"] == {"0": 0.25, "1": 0.5, "2": 0.25}
    assert metrics["interval"] == pytest.approx([0.0676, 0.9324], abs=1e-4)  # Clopper-Pearson, 2 of 4
    assert coverage_interval(2000, 2000)[1] == 1.0


# A real run: lite0_run (conftest) keeps its validation photos' calibration, trained without a coverage.

def test_predict_answers_sets_that_read_like_the_open_set_decision(lite0_run, tmp_path, capsys):
    run_dir = lite0_run[0]
    photos = [str(photo("test", "cats", 4300)), str(photo("test", "dogs", 4301)),
              str(unknown_photo("cars", "00029.jpg"))]
    classifier = catsdogs.load(run_dir)
    record = classifier.info.conformal
    assert record["coverage"] is None and len(record["true_class_probabilities"]) == 40
    assert all(p.prediction_set is None for p in classifier.predict(photos))  # no coverage asked, none by default
    predictions = classifier.predict(photos, coverage=0.9)
    for p in predictions:
        assert p.coverage == 0.9 and (p.prediction_set == []) == (p.accepted is False)
        assert p.accepted is False or p.label in p.prediction_set
    assert predictions[2].prediction_set == [] and predictions[2].label == "unknown"
    threshold = conformal.record_threshold(classifier.info.conformal, 0.9, classifier.info.reject_threshold)
    for p in predictions[:2]:
        assert p.prediction_set == [name for name, probability in p.probabilities.items()
                                    if probability >= threshold or name == p.label]
    with pytest.raises(ConfigError, match="the open-set score rejects 40 of the 40 validation photos"):
        classifier.predict(photos, coverage=0.9, reject_threshold=1.0)  # a promise nothing could keep: refused
    unrejected = classifier.predict(photos, coverage=0.9, reject=False)  # calibrated without rejections then
    assert all(p.label in p.prediction_set for p in unrejected)

    assert main(["predict", str(run_dir), *photos, "--coverage", "0.9", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["prediction_set"] for row in rows] == [p.prediction_set for p in predictions]
    assert main(["predict", str(run_dir), *photos, "--coverage", "0.9"]) == 0
    table = capsys.readouterr().out
    assert "set at coverage 0.9" in table and "{}" in table.splitlines()[3]
    csv_file = tmp_path / "sets.csv"
    assert main(["predict", str(run_dir), *photos, "--coverage", "0.9", "--csv", str(csv_file)]) == 0
    assert [row["prediction_set"] for row in read_csv(csv_file)] == [";".join(p.prediction_set) for p in predictions]
    assert main(["predict", str(run_dir), *photos, "--coverage", "0.999"]) == 2  # 40 validation photos promise less
    assert "coverage 0.999: 40 calibration (validation) photos can promise at most 0.9756" in capsys.readouterr().err
    assert "prediction_set" not in read_csv(run_dir / "predictions.csv")[0]  # trained without a coverage


def test_evaluate_measures_the_coverage_and_the_report_shows_it(lite0_run, tmp_path):
    run_dir, _, data = lite0_run
    evaluation = catsdogs.evaluate(run_dir, data, coverage=0.9)
    sets = evaluation.metrics["prediction_sets"]
    assert sets["coverage"] == 0.9 and sets["photos"] == 200 and sets["calibration_photos"] == 40
    low, high = sets["interval"]
    assert low <= sets["measured"] <= high and sets["measured"] >= 0.85
    rows = evaluation.rows
    assert sets["measured"] == np.mean([row["true"] in row["prediction_set"].split(";") for row in rows])
    assert all((row["prediction_set"] == "") == (not row["accepted"]) for row in rows)
    assert sum(sets["sizes"].values()) == pytest.approx(1)
    assert "prediction sets at coverage 0.9" in str(evaluation)
    evaluation.save(tmp_path)
    report = (tmp_path / "report.html").read_text()
    assert "Prediction sets with a guarantee" in report and "of 200" in report
    assert "prediction_sets" in json.loads((tmp_path / "metrics.json").read_text())
    assert "prediction_sets" not in catsdogs.evaluate(run_dir, data).metrics  # none asked, none trained with


def test_serve_answers_sets_per_request_and_refuses_what_it_cannot_promise(lite0_server):
    url, _ = lite0_server
    image = photo("test", "dogs", 4301).read_bytes()
    with httpx.Client(base_url=url, timeout=60) as client:
        status = client.get("/v1/models/lite0").json()
        assert status["prediction_sets"] is True and status["coverage"] is None
        plain = client.post("/predict", files={"files": ("dog.jpg", image)}).json()["predictions"][0]
        assert "prediction_set" not in plain
        answer = client.post("/predict?coverage=0.9", files={"files": ("dog.jpg", image)}).json()["predictions"][0]
        assert answer["coverage"] == 0.9 and answer["label"] in answer["prediction_set"]
        refused = client.post("/predict?coverage=0.999", files={"files": ("dog.jpg", image)})
        assert refused.status_code == 400
        assert refused.json()["error"].startswith("coverage: coverage 0.999: 40 calibration (validation) photos")
        assert client.post("/predict?coverage=1", files={"files": ("dog.jpg", image)}).status_code == 400


def test_a_model_without_the_calibration_says_to_train_again(lite0_run):
    import dataclasses

    classifier = catsdogs.load(lite0_run[0])
    classifier.info = dataclasses.replace(classifier.info, conformal=None)  # as models trained before sets
    assert classifier.predict([str(photo("test", "cats", 4300))])[0].prediction_set is None
    with pytest.raises(UnsupportedError, match="no calibration for prediction sets"):
        classifier.predict([str(photo("test", "cats", 4300))], coverage=0.9)
