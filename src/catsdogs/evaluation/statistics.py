"""How sure a measured number is: 95% intervals of the test metrics, and whether two runs differ by more than chance.

On 2000 test photos one photo is 0.05 points of accuracy, and a difference of a few photos is what
a different random split or seed gives. So every accuracy-like metric gets its interval, and two
runs are compared on the same photos, photo by photo.

- A proportion (accuracy, the recall and the precision of a class, top-k accuracy, the accuracy on
  the photos the open-set score accepts, the share of unknown photos accepted): the Wilson score
  interval (Wilson, 1927), which stays inside [0, 1] and keeps its coverage near 0 and 1 where the
  textbook normal interval does not (Brown, Cai and DasGupta, 2001); scipy's `binomtest(...).proportion_ci`.
- A mean of proportions (balanced accuracy, macro-averaged recall and precision, weighted
  precision): the shortest interval holding 95% of `DRAWS` draws of the same mean of the classes'
  proportions, each drawn from its Jeffreys distribution Beta(k + 1/2, n - k + 1/2) independently
  (the classes' photos are distinct). For one class this is close to the Jeffreys interval, which
  Brown, Cai and DasGupta recommend beside Wilson's; unlike a bootstrap it does not shrink to a
  point when every photo of every class is right. The draws are seeded: the interval is the same on
  every run.
- Two runs on the same photos: McNemar's exact test on the photos exactly one of them gets right
  (a two-sided binomial test of those discordant pairs at 1/2; scipy's `binomtest`), and a paired
  bootstrap (photos resampled with replacement, `RESAMPLES` times) of the difference in mean
  log-loss, with its 95% percentile interval and a two-sided p-value.
"""

import numpy as np
from scipy.stats import binomtest

LEVEL = 0.95
DRAWS = 20000  # of a mean of proportions
RESAMPLES = 10000  # of the paired bootstrap
SEED = 0
PROPORTIONS = "Wilson score interval"
MEANS = (f"shortest interval holding {LEVEL:.0%} of {DRAWS} draws of the mean of the classes' proportions, each from "
         f"its Jeffreys distribution Beta(k+1/2, n-k+1/2)")
PAIRED_TEST = "McNemar's exact test (two-sided binomial test of the discordant photos at 1/2)"
PAIRED_LOG_LOSS = f"paired bootstrap of the photos, {RESAMPLES} resamples, percentile interval"


def wilson_interval(successes, trials, level=LEVEL):
    """The Wilson score interval of a proportion, as [low, high]; None for no trials."""
    if trials == 0:
        return None
    interval = binomtest(int(successes), int(trials)).proportion_ci(level, method="wilson")
    return [float(interval.low), float(interval.high)]


def mean_interval(successes, trials, weights=None, level=LEVEL, draws=DRAWS, seed=SEED):
    """The interval of a (weighted) mean of independent proportions (see the module): [low, high].

    Args:
        successes, trials: per class; classes without trials are left out of the mean.
        weights: of each class in the mean (default: equal).

    Returns:
        [low, high], or None when no class has trials.
    """
    successes, trials = np.asarray(successes, float), np.asarray(trials, float)
    weights = np.ones(len(trials)) if weights is None else np.asarray(weights, float)
    present = trials > 0
    if not present.any():
        return None
    rng = np.random.default_rng(seed)
    proportions = rng.beta(successes[present] + 0.5, trials[present] - successes[present] + 0.5,
                           size=(draws, int(present.sum())))
    means = np.sort(proportions @ (weights[present] / weights[present].sum()))
    # The shortest interval holding `level` of the draws: where every class is nearly always right,
    # the draws pile up just under 1, and a central interval would leave out the measured value.
    inside = int(np.ceil(level * draws))
    start = int(np.argmin(means[inside - 1:] - means[:draws - inside + 1]))
    return [float(means[start]), float(means[start + inside - 1])]


def add_intervals(metrics, confusion, top_k_correct=None):
    """Adds the 95% interval of every accuracy-like metric of `compute_metrics` to it, beside each value
    (`NAME_ci`: [low, high]), and "intervals": the level and the methods.

    Args:
        metrics: the dict `compute_metrics` builds (accuracy, balanced_accuracy, per_class, macro_avg,
            weighted_avg, smallest_class, top_k_accuracy); changed in place.
        confusion: its confusion matrix (true class by row).
        top_k_correct: {k: photos whose true class is among the k most probable}, for top_k_accuracy.
    """
    confusion = np.asarray(confusion)
    right, support, predicted = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    images = int(support.sum())
    metrics["accuracy_ci"] = wilson_interval(right.sum(), images)
    metrics["balanced_accuracy_ci"] = mean_interval(right, support)
    for i, row in enumerate(metrics["per_class"].values()):
        row["precision_ci"] = wilson_interval(right[i], predicted[i])
        row["recall_ci"] = wilson_interval(right[i], support[i])
    # The averages over the classes present (as balanced accuracy's): macro weighs them alike, weighted by photos.
    metrics["macro_avg"]["recall_ci"] = metrics["balanced_accuracy_ci"]
    metrics["macro_avg"]["precision_ci"] = mean_interval(right, predicted, weights=support > 0)
    metrics["weighted_avg"]["recall_ci"] = metrics["accuracy_ci"]  # the recall weighted by photos is the accuracy
    metrics["weighted_avg"]["precision_ci"] = mean_interval(right, predicted, weights=support)
    smallest = metrics["smallest_class"]
    smallest["recall_ci"] = metrics["per_class"][smallest["name"]]["recall_ci"]
    if top_k_correct:
        metrics["top_k_accuracy_ci"] = {str(k): wilson_interval(correct, images)
                                        for k, correct in top_k_correct.items()}
    metrics["intervals"] = {"level": LEVEL, "proportions": PROPORTIONS, "means_of_proportions": MEANS}


def mcnemar(a_right, b_right) -> dict:
    """McNemar's exact test of two classifiers' answers on the same photos.

    Args:
        a_right, b_right: per photo, whether each classifier answered it right.

    Returns:
        {"only_a_right", "only_b_right": the discordant photos, "p_value": two-sided (1 where none differ)}.
    """
    a_right, b_right = np.asarray(a_right, bool), np.asarray(b_right, bool)
    only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
    p_value = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_a_right": only_a, "only_b_right": only_b, "p_value": float(p_value)}


def paired_bootstrap(a_values, b_values, level=LEVEL, resamples=RESAMPLES, seed=SEED) -> dict:
    """The difference b - a of the means of a per-photo quantity (log-loss) of two runs on the same photos,
    its percentile interval and a two-sided p-value from the same resamples of the photos.

    The p-value is the share of resampled differences at least as far from the measured one as the
    measured one is from 0 (the resampled distribution shifted to 0 under the hypothesis of no
    difference), counted with the measured one (never 0).

    Returns:
        {"difference", "ci": [low, high], "p_value"}.
    """
    differences = np.asarray(b_values, float) - np.asarray(a_values, float)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(differences))  # resamples at a time: about 16 MB of indices
    means = np.concatenate([differences[rng.integers(0, len(differences), size=(min(chunk, resamples - start),
                                                                                 len(differences)))].mean(axis=1)
                            for start in range(0, resamples, chunk)])
    measured = float(differences.mean())
    tail = (1 - level) / 2
    p_value = (1 + np.count_nonzero(np.abs(means - measured) >= abs(measured))) / (1 + resamples)
    return {"difference": measured, "ci": [float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))],
            "p_value": float(p_value)}
