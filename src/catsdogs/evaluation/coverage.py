"""How prediction sets did on labelled photos: the coverage measured, its confidence interval, the sizes of the sets."""

import numpy as np

INTERVAL = 0.95  # confidence of the interval around a measured coverage


def coverage_interval(covered, photos, confidence=INTERVAL):
    """The Clopper-Pearson (exact binomial) interval of a coverage measured on `photos` photos, `covered` covered."""
    from scipy.stats import binomtest

    interval = binomtest(int(covered), int(photos)).proportion_ci(confidence, method="exact")
    return [float(interval.low), float(interval.high)]


def set_metrics(members, y_true, coverage, threshold, calibration_photos) -> dict:
    """The promise of prediction sets against what they did.

    Args:
        members: (n, classes) booleans, which classes are in each photo's set (`conformal.prediction_sets`).
        y_true: the photos' true class indices.
        coverage: the coverage promised.
        threshold: the probability a class needed (`conformal.class_threshold`).
        calibration_photos: how many validation photos calibrated it.

    Returns:
        a JSON-ready dict: coverage, measured, its interval, mean set size, share of each set size.
    """
    members, y_true = np.asarray(members, bool), np.asarray(y_true, int)
    covered = int(members[np.arange(len(y_true)), y_true].sum())
    sizes = members.sum(axis=1)
    return {
        "coverage": coverage,
        "measured": covered / len(y_true),
        "interval": coverage_interval(covered, len(y_true)),
        "interval_confidence": INTERVAL,
        "photos": int(len(y_true)),
        "mean_size": float(sizes.mean()),
        "sizes": {str(size): float((sizes == size).mean()) for size in range(members.shape[1] + 1)},
        "threshold": threshold,
        "calibration_photos": int(calibration_photos),
    }


def format_set_metrics(sets) -> str:
    """One line of the console summary: the coverage promised and measured, and the sizes of the sets."""
    low, high = sets["interval"]
    shares = ", ".join(f"{size}: {share:.1%}" for size, share in sets["sizes"].items() if share)
    return (f"prediction sets at coverage {sets['coverage']:g}: {sets['measured']:.4f} measured on {sets['photos']} "
            f"photos ({sets['interval_confidence']:.0%} interval {low:.4f}-{high:.4f}); mean size "
            f"{sets['mean_size']:.3f} (sizes {shares}; 0: rejected as none of the classes)")
