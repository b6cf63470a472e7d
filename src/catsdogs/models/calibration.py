"""Calibrated probabilities and decisions: temperature scaling, ECE, thresholds from validation."""

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import log_loss, precision_recall_curve

from catsdogs.errors import ConfigError
from catsdogs.models.layers import ClassProbabilities

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
PRIOR_SCALE = 0.5  # standard deviation of log(temperature) a priori: most models are off by < x1.65


def probabilities(logits, class_names, temperature=1.0):
    """Class probabilities exactly as the saved model computes them."""
    import keras

    layer = ClassProbabilities(class_names, temperature)
    probs = keras.ops.convert_to_numpy(layer(np.asarray(logits, np.float32))).astype(np.float64)
    return probs / probs.sum(axis=1, keepdims=True)  # exact sums, which log_loss checks


def fit_temperature(logits, labels, class_names):
    """The temperature that best explains validation logits (Guo et al., 2017).

    A maximum a posteriori estimate: the summed log-loss plus a weak normal prior on
    log(temperature) centred on 1. With hundreds of validation images the prior is negligible;
    with a few dozen, or none of them wrong, it stops the estimate from running towards zero,
    which would make every probability 0 or 1.

    Args:
        logits: (n, 1) for two classes, else (n, classes).
        labels: true class indices.
        class_names: in label order.

    Returns:
        the temperature, a float in [MIN_TEMPERATURE, MAX_TEMPERATURE].
    """
    labels = np.asarray(labels)
    every_class = list(range(len(class_names)))

    def loss(log_temperature):
        probs = probabilities(logits, class_names, np.exp(log_temperature))
        return len(labels) * log_loss(labels, probs, labels=every_class) + 0.5 * (log_temperature / PRIOR_SCALE) ** 2

    bounds = (np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE))
    return float(np.exp(minimize_scalar(loss, bounds=bounds, method="bounded").x))


def reliability(probs, labels, bins=15):
    """Confidence against accuracy in equal-width bins of the top probability.

    Returns:
        (mean confidence, accuracy, count) per non-empty bin, as numpy arrays.
    """
    probs = np.asarray(probs)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = [(confidence[which == b].mean(), correct[which == b].mean(), (which == b).sum())
            for b in range(bins) if (which == b).any()]
    return tuple(np.array(column) for column in zip(*rows)) if rows else (np.array([]),) * 3


def expected_calibration_error(probs, labels, bins=15):
    """Mean gap between confidence and accuracy, weighted by the share of images in each bin."""
    confidence, accuracy, count = reliability(probs, labels, bins)
    return float(np.sum(count * np.abs(confidence - accuracy)) / max(count.sum(), 1))


def threshold_for_target(probs, labels, class_index, metric, target):
    """A binary decision threshold on the second class's probability that meets a target on validation.

    For a target precision of a class, the threshold that keeps the most recall of that class
    while its precision stays at or above the target; for a target recall, the one that keeps
    the most precision while its recall stays at or above the target.

    Args:
        probs: (n, 2) validation probabilities.
        labels: true class indices.
        class_index: 0 or 1, the class the target is about.
        metric: "precision" or "recall".
        target: e.g. 0.99.

    Returns:
        the threshold t: the model predicts the second class when its probability is >= t.

    Raises:
        ConfigError: when no threshold reaches the target on the validation images.
    """
    # Scores that grow with the class, taken straight from the second class's probability (which
    # the threshold applies to): 1 - p would round, and a photo at the threshold could flip.
    second = np.asarray(probs)[:, 1]
    scores = second if class_index == 1 else -second
    precision, recall, thresholds = precision_recall_curve(np.asarray(labels) == class_index, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    meets = (precision if metric == "precision" else recall) >= target
    if not meets.any():
        raise ConfigError(f"no threshold gives {metric} >= {target} for class {class_index} on the validation images")
    if metric == "precision":
        chosen = thresholds[meets][np.argmax(recall[meets])]
    else:
        chosen = thresholds[meets][np.argmax(precision[meets])]
    # The class wins when its score reaches `chosen`; for the first class that means the second
    # class's probability must stay at or below -chosen, i.e. below the next float up.
    return float(chosen if class_index == 1 else np.nextafter(-chosen, 2.0))
