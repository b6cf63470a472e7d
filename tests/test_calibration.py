"""Temperature scaling, expected calibration error and thresholds chosen for a target."""

import numpy as np
import pytest

from catsdogs.models import calibration

NAMES = ["cats", "dogs"]


def overconfident_logits(n=4000, seed=0, overconfidence=4.0):
    """Labels drawn from sigmoid(z), reported as logits 4z: right often, but far too sure."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 2.0, n)
    labels = (rng.uniform(size=n) < 1 / (1 + np.exp(-true_logits))).astype(int)
    return (overconfidence * true_logits)[:, None], labels


def test_temperature_scaling_undoes_overconfidence_and_lowers_ece():
    logits, labels = overconfident_logits()
    before = calibration.expected_calibration_error(calibration.probabilities(logits, NAMES), labels)
    temperature = calibration.fit_temperature(logits, labels, NAMES)
    after = calibration.expected_calibration_error(calibration.probabilities(logits, NAMES, temperature), labels)
    assert 3.2 < temperature < 4.8
    assert before > 0.05 and after < before / 3


def test_temperature_scaling_works_for_several_classes():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 1.5, (3000, 3))
    p = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in p])
    temperature = calibration.fit_temperature(3 * true_logits, labels, ["a", "b", "c"])
    assert 2.4 < temperature < 3.6


def test_reliability_bins_and_ece_of_a_perfect_and_a_wrong_model():
    probs = np.array([[0.9, 0.1]] * 10)
    labels = np.array([0] * 9 + [1])  # 90% confident and right 9 times in 10: calibrated
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.0)
    assert calibration.expected_calibration_error(probs, np.ones(10, int)) == pytest.approx(0.9)
    confidence, accuracy, count = calibration.reliability(probs, labels)
    assert confidence.tolist() == pytest.approx([0.9]) and accuracy.tolist() == [0.9] and count.tolist() == [10]


@pytest.mark.parametrize("metric", ["precision", "recall"])
@pytest.mark.parametrize("class_index", [0, 1])
def test_threshold_meets_the_target_on_the_images_it_was_chosen_on(metric, class_index):
    logits, labels = overconfident_logits(2000, seed=2, overconfidence=1.0)
    probs = calibration.probabilities(logits, NAMES)
    threshold = calibration.threshold_for_target(probs, labels, class_index, metric, 0.97)
    predicted = (probs[:, 1] >= threshold).astype(int)
    hits = (predicted == class_index) & (labels == class_index)
    achieved = hits.sum() / ((predicted if metric == "precision" else labels) == class_index).sum()
    assert achieved >= 0.97
    # A tighter target moves the threshold away from that class.
    stricter = calibration.threshold_for_target(probs, labels, class_index, metric, 0.99)
    if metric == "precision":
        assert (stricter >= threshold) if class_index == 1 else (stricter <= threshold)
    else:
        assert (stricter <= threshold) if class_index == 1 else (stricter >= threshold)


def test_unreachable_target_says_so():
    probs = np.array([[0.4, 0.6], [0.6, 0.4]])
    with pytest.raises(ValueError, match="no threshold gives precision >= 0.99"):
        calibration.threshold_for_target(probs, np.array([0, 1]), 1, "precision", 0.99)


def test_a_small_validation_split_without_mistakes_barely_moves_the_temperature():
    logits = np.array([[3.0], [-2.0], [4.0], [-5.0]])
    assert 0.6 < calibration.fit_temperature(logits, np.array([1, 0, 1, 0]), NAMES) <= 1.0
