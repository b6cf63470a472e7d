"""Label-issue flags (photos whose label the model confidently contradicts); an `Evaluation` from outputs."""

import multiprocessing

import numpy as np
import pytest

from catsdogs.evaluation.metrics import label_issues


def test_confidently_contradicted_labels_are_flagged_in_this_process(monkeypatch):
    def no_worker_processes(*args, **kwargs):
        raise AssertionError("label_issues must not start worker processes")

    monkeypatch.setattr(multiprocessing, "Pool", no_worker_processes)
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 100)
    dog = np.where(truth == 1, rng.uniform(0.8, 0.99, 200), rng.uniform(0.01, 0.2, 200))
    dog[[3, 150]] = 0.005, 0.995  # the model is sure of both photos below
    probabilities = np.stack([1 - dog, dog], axis=1)
    labels = truth.copy()
    labels[[3, 150]] = 1 - labels[[3, 150]]  # a cat filed as a dog, a dog filed as a cat
    flagged = label_issues(labels, probabilities)
    assert flagged.dtype == bool and np.flatnonzero(flagged).tolist() == [3, 150]
    assert not label_issues(truth, probabilities).any()


def test_evaluation_from_logits_derives_calibrated_views_tta_and_validation():
    from catsdogs.evaluation.evaluate import Evaluation
    from catsdogs.evaluation.metrics import compute_metrics
    from catsdogs.models import calibration

    rng = np.random.default_rng(0)
    names = ["cats", "dogs"]
    y, val_y = np.repeat([0, 1], 20), np.repeat([0, 1], 10)
    logits = rng.normal(size=(2, 40, 1)) + (2 * y - 1)[None, :, None]  # two views: photo and mirror image
    val_logits = rng.normal(size=(2, 20, 1)) + (2 * val_y - 1)[None, :, None]
    paths = [f"/photos/{i}.jpg" for i in range(40)]
    ev = Evaluation.from_outputs(paths, y, names, logits=logits, temperature=1.7, threshold=0.4,
                                 validation=(val_y, val_logits), title="t")
    views = [calibration.probabilities(v, names, 1.7) for v in logits]
    np.testing.assert_array_equal(ev.probabilities, views[0])
    np.testing.assert_array_equal(ev.tta_probabilities, np.mean(views, axis=0))
    np.testing.assert_array_equal(ev.uncalibrated, calibration.probabilities(logits[0], names))
    val_views = [calibration.probabilities(v, names, 1.7) for v in val_logits]
    assert ev.validation == compute_metrics(val_y, val_views[0], names, 0.4)
    assert ev.validation_tta == compute_metrics(val_y, np.mean(val_views, axis=0), names, 0.4)
    assert ev.temperature == 1.7 and ev.threshold == 0.4 and ev.title == "t" and ev.paths == paths
    assert set(ev.metrics) >= {"tta", "validation", "validation_tta", "calibration"}

    single = Evaluation.from_outputs(paths, y, names, logits=logits[:1], temperature=1.7,
                                     validation=(val_y, val_logits[:1]))
    assert single.tta_probabilities is None and single.validation_tta is None and "tta" not in single.metrics


def test_evaluation_from_probabilities_takes_them_as_they_are():
    from catsdogs.evaluation.evaluate import Evaluation

    probabilities = np.array([[[0.9, 0.1], [0.3, 0.7]], [[0.7, 0.3], [0.1, 0.9]]])  # (views, photos, classes)
    ev = Evaluation.from_outputs(["a.jpg", "b.jpg"], np.array([0, 1]), ["cats", "dogs"],
                                 probabilities=probabilities, threshold=0.5, data_dir="/data")
    np.testing.assert_array_equal(ev.probabilities, probabilities[0])
    np.testing.assert_array_equal(ev.tta_probabilities, probabilities.mean(axis=0))
    assert ev.uncalibrated is None and ev.temperature is None and ev.validation is None and ev.data_dir == "/data"
    assert "calibration" not in ev.metrics and ev.metrics["tta"]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="either logits or probabilities"):
        Evaluation.from_outputs(["a.jpg"], np.array([0]), ["cats", "dogs"])
