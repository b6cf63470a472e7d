"""Label-issue flags: photos whose label the model confidently contradicts."""

import multiprocessing

import numpy as np

from catsdogs.evaluation import label_issues


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
