"""Prediction sets with a guarantee: split conformal prediction, calibrated on the validation photos.

A set of classes that holds a photo's true class with a chosen probability, the *coverage*
(Vovk et al. 2005; Angelopoulos and Bates, "A gentle introduction to conformal prediction", 2021).
The score is the simplest that keeps the guarantee, LAC (Sadinle, Lei and Wasserman 2019): a
photo's true class fails to qualify when its probability is low. From the n validation photos
(never used to fit the head), the threshold t is the k-th largest probability of their true class,
k = ceil((n + 1) * coverage); a class qualifies for a photo when its probability reaches t. For a
new photo exchangeable with the validation photos, P(its true class qualifies) >= k / (n + 1) >=
coverage, whatever the model and however well calibrated it is.

Two rules keep the sets readable with the open-set decision, each keeping the guarantee:

- A photo the open-set score rejects gets the empty set ("none of the classes"). A rejected
  validation photo counts as one whose true class did not qualify, so t accounts for every known
  photo the rejection loses: the coverage promised includes them.
- The class the model predicts is always in the set of an accepted photo: a larger set can only
  cover more. An empty set therefore means exactly "rejected as none of the classes".

Multi-label models have a set of labels per photo instead; `label_thresholds` calibrates each
label on the validation photos that have it, so that each label a photo has is in its set with
the promised coverage (a guarantee per label).

MAPIE (scikit-learn-contrib) implements the same scores around a scikit-learn estimator; it does
not fit here: the calibration must travel inside the saved model as plain numbers (exports and the
server read it without unpickling anything), the coverage is chosen per call (`--coverage`,
`?coverage=`), and the open-set rejection is part of the score.
"""

import math

import numpy as np

from catsdogs.config.choices import check_coverage
from catsdogs.errors import ConfigError

SET_SEPARATOR = ";"  # between the classes of a prediction set in a table's cell (predictions.csv, predict --csv)


def class_threshold(true_class_probabilities, coverage, accepted=None) -> float:
    """The probability a class needs to be in a photo's set for the coverage to hold.

    Args:
        true_class_probabilities: (n,) each calibration photo's probability of its true class.
        coverage: the share of photos whose set must hold their true class, e.g. 0.95.
        accepted: (n,) whether the open-set score accepts each calibration photo (None: all are).

    Returns:
        t, the k-th largest probability of the true class among the accepted photos,
        k = ceil((n + 1) * coverage); rejected photos count as never covered.

    Raises:
        ConfigError: a coverage outside (0, 1), too few calibration photos for it, or one that the
            open-set rejections alone make impossible.
    """
    check_coverage(coverage)
    values = np.asarray(true_class_probabilities, np.float64)
    if accepted is not None:
        values = np.where(np.asarray(accepted, bool), values, -np.inf)
    n = len(values)
    k = math.ceil((n + 1) * coverage)
    if k > n:
        raise ConfigError(f"coverage {coverage}: {n} calibration (validation) photos can promise at most "
                          f"{n / (n + 1):.4f}; choose a lower coverage or hold out more validation photos "
                          f"(--val-fraction)")
    threshold = float(np.sort(values)[::-1][k - 1])
    if threshold == -np.inf:
        rejected = int((values == -np.inf).sum())
        raise ConfigError(f"coverage {coverage}: the open-set score rejects {rejected} of the {n} validation photos, "
                          f"more than the coverage allows to miss; choose a coverage of at most "
                          f"{(n - rejected) / (n + 1):.4f}, a lower reject threshold, or no rejection")
    return threshold


def prediction_sets(probabilities, threshold, predicted, accepted=None) -> np.ndarray:
    """Which classes are in each photo's set (see the module).

    Args:
        probabilities: (n, classes).
        threshold: from `class_threshold`.
        predicted: (n,) the class the model predicts for each photo, always in the set of an accepted photo.
        accepted: (n,) whether the open-set score accepts each photo (None: all are); a rejected
            photo's set is empty.

    Returns:
        (n, classes) booleans.
    """
    probabilities = np.asarray(probabilities)
    members = probabilities >= threshold
    members[np.arange(len(members)), np.asarray(predicted, int)] = True
    if accepted is not None:
        members &= np.asarray(accepted, bool)[:, None]
    return members


def calibration_record(probabilities, y_true, scores=None, coverage=None) -> dict:
    """What a model keeps to answer sets at any coverage and reject threshold: plain numbers, JSON-ready.

    Args:
        probabilities: (n, classes) of the validation photos, as the model computes them (calibrated).
        y_true: their true class indices.
        scores: (n,) their in-distribution scores, if the model has an open-set score.
        coverage: the coverage answered when none is asked for (None: sets only when asked).

    Returns:
        {"true_class_probabilities": [...], "in_distribution_scores": [...] or None, "coverage": ...}.
    """
    probabilities = np.asarray(probabilities)
    true_class = probabilities[np.arange(len(probabilities)), np.asarray(y_true, int)]
    return {"true_class_probabilities": [float(p) for p in true_class],
            "in_distribution_scores": None if scores is None else [float(s) for s in scores],
            "coverage": coverage}


def record_threshold(record, coverage, reject_threshold=None) -> float:
    """`class_threshold` from a model's `calibration_record`, with the photos that `reject_threshold` rejects
    (None: no rejection) counted as never covered."""
    accepted = None
    if reject_threshold is not None and record["in_distribution_scores"] is not None:
        accepted = np.asarray(record["in_distribution_scores"]) >= reject_threshold
    return class_threshold(record["true_class_probabilities"], coverage, accepted)


def label_thresholds(probabilities, labels, coverage) -> np.ndarray:
    """Multi-label: the probability each label needs to be in a photo's set.

    Label k is calibrated on the validation photos that have it: each label a new photo has is
    in its set with probability at least `coverage` (per label; Sadinle et al. 2019, class-conditional).

    Args:
        probabilities: (n, labels) per-label probabilities (independent sigmoids) of the calibration photos.
        labels: (n, labels) 0/1, which labels each photo has.
        coverage: e.g. 0.95.

    Returns:
        (labels,) thresholds; label k is in a photo's set when its probability reaches the k-th.

    Raises:
        ConfigError: as `class_threshold`, naming the label's index when too few photos have it.
    """
    probabilities, labels = np.asarray(probabilities), np.asarray(labels, bool)
    thresholds = []
    for k in range(probabilities.shape[1]):
        try:
            thresholds.append(class_threshold(probabilities[labels[:, k], k], coverage))
        except ConfigError as error:
            raise ConfigError(f"label {k}: {error}") from None
    return np.array(thresholds)


def label_sets(probabilities, thresholds) -> np.ndarray:
    """Multi-label: (n, labels) booleans, which labels are in each photo's set (`label_thresholds`)."""
    return np.asarray(probabilities) >= np.asarray(thresholds)[None, :]
