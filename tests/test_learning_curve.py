"""The learning curve: the head fitted on growing shares of the training photos, and what more would bring."""

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from catsdogs.config.train import TrainConfig
from catsdogs.errors import ConfigError
from catsdogs.evaluation import learning_curve as curves


def test_a_power_law_is_recovered_and_said_with_its_caveat():
    n = np.array([10, 20, 40, 80, 160, 320], float)
    law = curves.fit_power_law(n, 0.3 * n ** -0.5 + 0.01)
    assert abs(law["a"] - 0.3) < 0.01 and abs(law["b"] - 0.5) < 0.01 and abs(law["c"] - 0.01) < 0.001
    said = curves.statement(320, 1 - (0.3 * 320 ** -0.5 + 0.01), law)
    gain = 100 * 0.3 * (320 ** -0.5 - 640 ** -0.5)
    assert said.startswith(f"About 320 more photos per class (twice as many) would likely add about {gain:.1f} points")
    assert "extrapolation" in said
    flat = curves.fit_power_law(n, np.full(len(n), 0.02))
    assert curves.statement(320, 0.98, flat).startswith("The curve has flattened at 98.00%")
    assert "too short" in curves.statement(320, 0.98, curves.fit_power_law(n[:3], n[:3] ** -0.5))


def test_shares_are_stratified_repeated_and_scored_on_the_test_photos():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [60, 30, 10])
    assert np.bincount(y[curves.stratified_subsample(y, 0.2, rng)]).tolist() == [12, 6, 2]
    x = rng.normal(size=(len(y), 5)) + y[:, None]  # three classes that more photos tell apart better
    fits = []

    def fit(features, labels):
        fits.append(len(labels))
        return LogisticRegression().fit(features, labels)

    curve = curves.learning_curve(fit, (x, y), (x, y), ["a", "b", "c"], shares=(0.1, 0.5, 1.0), repeats=3)
    assert fits == [10, 10, 10, 50, 50, 50, 100]
    assert [p["photos"] for p in curve["points"]] == [{"a": 6, "b": 3, "c": 1}, {"a": 30, "b": 15, "c": 5},
                                                      {"a": 60, "b": 30, "c": 10}]
    assert [len(p["accuracy"]["runs"]) for p in curve["points"]] == [3, 3, 1]
    assert curve["points"][-1]["accuracy"]["std"] == 0
    assert curve["smallest_classes"] == ["c", "b", "a"] and set(curve["points"][0]["recall"]) == {"a", "b", "c"}
    assert curve["power_law"] is None and "too short" in curve["statement"]  # three points
    json.dumps(curve)


def test_train_draws_the_curve_in_metrics_the_console_and_the_report(planted_run):
    run_dir, _, _, console = planted_run
    curve = json.loads((run_dir / "metrics.json").read_text())["learning_curve"]
    per_class = [p["photos_per_class"] for p in curve["points"]]
    assert per_class == sorted(per_class) and per_class[0] == 1 and per_class[-1] >= 16 and len(per_class) >= 5
    assert curve["head"] == "linear" and curve["evaluated_on"] == "test" and curve["statement"]
    assert all(len(p["accuracy"]["runs"]) == curves.REPEATS for p in curve["points"][:-1])
    assert curve["statement"] in console and "learning curve (test accuracy, mean ± std): 1/class" in console
    html = (run_dir / "report.html").read_text()
    assert "How many photos are enough" in html and "learning_curve.png" in html
    assert (run_dir / "learning_curve.png").stat().st_size > 10_000


def test_a_multi_label_run_is_refused_a_learning_curve_before_any_photo_is_read(tmp_path):
    with pytest.raises(ConfigError, match="learning_curve: .* not with multi_label"):
        TrainConfig(data_dir=str(tmp_path), multi_label=True, learning_curve=True).check()
