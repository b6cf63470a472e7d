"""The learning curve: how the test scores grow with the number of training photos, and what more
photos would likely bring.

The head is fitted again on growing shares of the training photos (stratified: every class keeps its
share; several draws per share), on features already computed, and each fit is scored on the test
photos. Nothing is chosen by it: it only tells. A power law fitted to the error rate,
error(n) = a * n^-b + c with n the photos per class and c the error that more photos of the same
kind would not remove (the form of the learning-curve literature: Cortes et al., 1994; Hestness et
al., 2017), says what twice as many photos would likely bring; that is an extrapolation beyond the
photos measured, a guide and not a promise.
"""

import numpy as np
from sklearn import metrics as skm

from catsdogs.config.choices import SEED
from catsdogs.models.model import predicted_classes
from catsdogs.utils.progress import progress

# Shares of the training photos the head is fitted on, about evenly on a log scale; each share but the
# whole is drawn REPEATS times.
SHARES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0)
REPEATS = 5
# The classes with the fewest training photos get their own recall curve.
SMALLEST_CLASSES = 3
# A doubling that brings less than this (in accuracy points) is said to bring little.
FLAT_POINTS = 0.05


def stratified_subsample(y, share, rng):
    """Indices of `share` of each class's rows (at least one each), drawn without replacement."""
    chosen = []
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        chosen.append(rng.choice(rows, max(1, round(share * len(rows))), replace=False))
    return np.sort(np.concatenate(chosen))


def _spread(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "runs": values.tolist()}


def learning_curve(fit, train, test, class_names, shares=SHARES, repeats=REPEATS, seed=SEED):
    """Fits the head on growing shares of the training photos and scores each fit on the test photos.

    Args:
        fit: fit(features, labels) -> a fitted estimator with `predict_proba` (a new head each call).
        train: (features, class indices) of the training photos.
        test: (features, class indices) of the test photos.
        class_names: in label order.
        shares: of the training photos, growing; shares that give the same photo counts are fitted once.
        repeats: draws of each share but the whole (their spread is the curve's).
        seed: of the draws.

    Returns:
        a JSON-ready dict: "points" (per share: photos per class, accuracy and log-loss over the draws,
        recall of the smallest classes), "smallest_classes", "power_law" (a, b, c of the fitted
        error rate, or None) and "statement" (what twice as many photos would likely bring).
    """
    (train_x, train_y), (test_x, test_y) = train, test
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    counts = np.bincount(train_y, minlength=len(class_names))
    smallest = [int(label) for label in np.argsort(counts, kind="stable")[:SMALLEST_CLASSES]]
    rng = np.random.default_rng(seed)
    plan = {}  # photos of each class -> the share that gives them (the first)
    for share in shares:
        plan.setdefault(tuple(max(1, round(share * count)) for count in counts), share)
    points = []
    with progress(sum(1 if share >= 1 else repeats for share in plan.values()), "learning curve", "fits") as bar:
        for photos, share in plan.items():
            scores = {"accuracy": [], "log_loss": [], "recall": {class_names[label]: [] for label in smallest}}
            for _ in range(1 if share >= 1 else repeats):
                rows = stratified_subsample(train_y, share, rng) if share < 1 else np.arange(len(train_y))
                probabilities = fit(train_x[rows], train_y[rows]).predict_proba(test_x)
                predicted = predicted_classes(probabilities, 0.5)
                scores["accuracy"].append(skm.accuracy_score(test_y, predicted))
                scores["log_loss"].append(skm.log_loss(test_y, probabilities, labels=range(len(class_names))))
                for label in smallest:
                    of_class = test_y == label
                    scores["recall"][class_names[label]].append(float((predicted[of_class] == label).mean())
                                                                if of_class.any() else np.nan)
                bar.update()
            points.append({"share": share, "photos_per_class": float(np.mean(photos)),
                           "photos": dict(zip(class_names, photos)),
                           "accuracy": _spread(scores["accuracy"]), "log_loss": _spread(scores["log_loss"]),
                           "recall": {name: _spread(values) for name, values in scores["recall"].items()}})
    power_law = fit_power_law([p["photos_per_class"] for p in points], [1 - p["accuracy"]["mean"] for p in points],
                              [p["accuracy"]["std"] for p in points], len(test_y))
    return {"evaluated_on": "test", "repeats": repeats, "points": points,
            "smallest_classes": [class_names[label] for label in smallest], "power_law": power_law,
            "statement": statement(points[-1]["photos_per_class"], points[-1]["accuracy"]["mean"], power_law)}


def power_law_error(n, a, b, c):
    """The error rate a * n^-b + c at n photos per class."""
    return a * np.power(n, -b) + c


def fit_power_law(photos_per_class, error, spread=None, test_photos=None):
    """Fits error = a * n^-b + c (a >= 0, 0 <= b <= 2, 0 <= c <= 1) to the mean error of each share.

    Each point weighs by its uncertainty: the spread of its draws and the binomial error of
    `test_photos` (at least one photo's worth), so that the noisy small shares do not decide the
    extrapolation.

    Args:
        photos_per_class: of each share.
        error: the mean error rate of each share.
        spread: the standard deviation of the error over each share's draws (None: unweighted).
        test_photos: how many photos scored them.

    Returns:
        {"a", "b", "c"}, or None with fewer than four points or where the fit fails.
    """
    from scipy.optimize import curve_fit

    n, error = np.asarray(photos_per_class, np.float64), np.asarray(error, np.float64)
    if len(n) < 4:
        return None
    sigma = None
    if spread is not None:
        sigma = np.sqrt(np.asarray(spread, np.float64) ** 2
                        + np.maximum(error * (1 - error), 1 / test_photos) / test_photos)
    try:
        (a, b, c), _ = curve_fit(power_law_error, n, error, p0=(max(error[0], 1e-3) * np.sqrt(n[0]), 0.5, error.min() / 2),
                                 sigma=sigma, bounds=([0, 0, 0], [np.inf, 2, 1]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return {"a": float(a), "b": float(b), "c": float(c)}


def statement(photos_per_class, accuracy, power_law):
    """What twice as many photos per class would likely bring, in words, by the fitted power law."""
    n = round(photos_per_class)
    if power_law is None:
        return (f"At {n} photos per class test accuracy is {accuracy:.2%}; the curve is too short or too noisy to "
                f"extrapolate.")
    now, then = (1 - power_law_error(count, **power_law) for count in (photos_per_class, 2 * photos_per_class))
    gain = 100 * (then - now)
    caveat = (f"by a power law fitted to the error rate (error = a·n^-b + c, b = {power_law['b']:.2f}, tending to "
              f"{power_law['c']:.2%}); an extrapolation beyond the photos measured, a guide and not a promise")
    if gain < FLAT_POINTS:
        return (f"The curve has flattened at {accuracy:.2%}: about {n} more photos per class (twice as many) would "
                f"add about {gain:.2f} points, {caveat}.")
    return (f"About {n} more photos per class (twice as many) would likely add about {gain:.1f} points of test "
            f"accuracy, now {accuracy:.2%} ({now:.2%} to {then:.2%} on the fitted curve), {caveat}.")
