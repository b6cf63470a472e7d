"""Intervals of the test metrics and the tests of a difference between two runs, against values known
from the literature or computed another way."""

import numpy as np
import pytest
from scipy import stats

from catsdogs.evaluation import statistics


def test_wilson_intervals_are_the_published_ones():
    # Brown, Cai and DasGupta (2001) and Newcombe (1998): 0 of 10 gives [0, 0.2775]; 81 of 263 [0.2553, 0.3662].
    assert statistics.wilson_interval(0, 10) == pytest.approx([0, 0.2775], abs=1e-4)
    assert statistics.wilson_interval(81, 263) == pytest.approx([0.2553, 0.3662], abs=1e-4)
    assert statistics.wilson_interval(20, 20)[1] == 1  # inside [0, 1], the measured value included
    assert statistics.wilson_interval(0, 0) is None


def test_the_interval_of_a_mean_of_proportions():
    # One class: near its Jeffreys interval (the quantiles of Beta(k + 1/2, n - k + 1/2)).
    jeffreys = stats.beta.ppf([0.025, 0.975], 50.5, 50.5)
    assert statistics.mean_interval([50], [100]) == pytest.approx(jeffreys, abs=0.005)
    # Two classes of 1000 photos: narrower than either class alone, around the mean.
    low, high = statistics.mean_interval([990, 996], [1000, 1000])
    assert low < 0.993 < high and high - low < np.diff(statistics.wilson_interval(990, 1000))[0]
    # Every photo right: the interval reaches up to the measured 1, it does not collapse onto it.
    low, high = statistics.mean_interval([20, 20], [20, 20])
    assert 0.9 < low < 0.97 and high == pytest.approx(1, abs=1e-4)
    # Weights: a class with no weight does not count; seeded, so the same every time.
    unweighted = statistics.mean_interval([10, 1000], [20, 1000], weights=[0, 1])
    assert unweighted == pytest.approx(statistics.mean_interval([1000], [1000]), abs=1e-3)
    assert unweighted == statistics.mean_interval([10, 1000], [20, 1000], weights=[0, 1])
    assert statistics.mean_interval([0], [0]) is None


def test_every_accuracy_like_metric_has_its_interval_around_it():
    from catsdogs.evaluation.metrics import compute_metrics, format_metrics

    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(4), [50, 50, 50, 10])
    probabilities = rng.dirichlet(np.ones(4), len(y_true))
    probabilities[np.arange(len(y_true)), y_true] += rng.random(len(y_true))  # mostly right
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    metrics = compute_metrics(y_true, probabilities, ["a", "b", "c", "d"])

    def around(value, interval):
        return interval[0] <= value <= interval[1] and interval[1] - interval[0] > 0.01

    assert around(metrics["accuracy"], metrics["accuracy_ci"])
    assert metrics["accuracy_ci"] == statistics.wilson_interval(len(y_true) - metrics["errors"], len(y_true))
    assert around(metrics["balanced_accuracy"], metrics["balanced_accuracy_ci"])
    for row in metrics["per_class"].values():
        assert around(row["precision"], row["precision_ci"]) and around(row["recall"], row["recall_ci"])
    for average in ("macro_avg", "weighted_avg"):
        assert around(metrics[average]["precision"], metrics[average]["precision_ci"])
        assert around(metrics[average]["recall"], metrics[average]["recall_ci"])
    assert metrics["smallest_class"]["recall_ci"] == metrics["per_class"]["d"]["recall_ci"]
    assert around(metrics["top_k_accuracy"]["3"], metrics["top_k_accuracy_ci"]["3"])
    assert metrics["intervals"]["proportions"] == "Wilson score interval"
    low, high = metrics["accuracy_ci"]
    assert f"accuracy {metrics['accuracy']:.4f} [{low:.4f}, {high:.4f}]" in format_metrics(metrics)


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_photos():
    a_right = [True] * 90 + [False] * 10 + [True] * 2
    b_right = [True] * 90 + [True] * 10 + [False] * 2
    result = statistics.mcnemar(a_right, b_right)
    assert (result["only_a_right"], result["only_b_right"]) == (2, 10)
    assert result["p_value"] == pytest.approx(2 * stats.binom.cdf(2, 12, 0.5))  # 0.0386
    assert statistics.mcnemar([True, False], [True, False])["p_value"] == 1  # no photo differs


def test_the_paired_bootstrap_of_log_loss():
    rng = np.random.default_rng(0)
    a = rng.exponential(0.1, 2000)
    better = statistics.paired_bootstrap(a, a * 0.8)
    assert better["difference"] == pytest.approx(-0.2 * a.mean())
    assert better["ci"][1] < 0 and better["p_value"] < 0.001
    noise = statistics.paired_bootstrap(a, a + rng.normal(0, 0.05, len(a)))
    assert noise["ci"][0] < 0 < noise["ci"][1] and noise["p_value"] > 0.05
    same = statistics.paired_bootstrap(a, a)
    assert same == {"difference": 0, "ci": [0, 0], "p_value": 1}
