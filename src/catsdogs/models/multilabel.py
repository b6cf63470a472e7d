"""Multi-label classification on a frozen backbone's features: any number of labels a photo.

A photo may show a cat, a dog, both or neither: each label is a yes or no of its own. `MultiLabelHead`
fits one L2-regularised logistic regression per label on the standardised features (the linear
head, `heads.LinearHead`, its strength chosen by cross-validation for each label) and turns into one
Dense layer with a logit per label. Each label's probability is calibrated by a temperature of its
own (`fit_temperatures`) and its decision threshold is chosen on validation (`choose_thresholds`:
the best F1, or a target precision or recall). The saved model computes the probabilities in a
`layers.LabelProbabilities`, which carries the thresholds. No label above its threshold is a valid
answer (none of the labels applies); whether a photo looks like anything seen in training at all
is the open-set score's question (`openset`), answered apart.
"""

import logging

import numpy as np
from sklearn.metrics import precision_recall_curve

from catsdogs.config.choices import SEED
from catsdogs.errors import ConfigError
from catsdogs.models import calibration
from catsdogs.models.heads import LINEAR_HEAD_CS, LinearHead, build_head
from catsdogs.models.layers import LabelProbabilities

log = logging.getLogger(__name__)

FOLDS = 5  # of the out-of-fold logits, as `openset.out_of_fold_logits`
BINARY = ("absent", "present")  # one label as a two-class problem, for the single-label tools reused here


def indicator_matrix(label_sets, num_labels) -> np.ndarray:
    """(n, labels) of 0 and 1 from each photo's label indices (a tuple, as `data.dataset.Sample.label`)."""
    matrix = np.zeros((len(label_sets), num_labels), int)
    for row, labels in enumerate(label_sets):
        matrix[row, list(labels)] = 1
    return matrix


def label_text(indicators, class_names, separator) -> str:
    """A photo's label set as tables write it: the names of its labels (0/1 `indicators`, one per class),
    in class order, joined by `separator`; "" for none."""
    return separator.join(name for name, has in zip(class_names, indicators) if has)


def label_set_ids(y) -> tuple:
    """Each photo's label set as one number: (ids, how many distinct sets), for what needs one group a photo
    (stratified folds, the open-set score's class means)."""
    sets, ids = np.unique(np.asarray(y), axis=0, return_inverse=True)
    return ids.reshape(-1), len(sets)


def predicted_labels(probabilities, thresholds) -> np.ndarray:
    """The decision rule: (n, labels) booleans, each label predicted where its probability reaches its threshold."""
    return np.asarray(probabilities) >= np.asarray(thresholds)


def label_probabilities(logits, class_names, temperatures=None) -> np.ndarray:
    """Per-label probabilities exactly as the saved model computes them (`layers.LabelProbabilities`)."""
    import keras

    layer = LabelProbabilities(class_names, temperatures)
    return keras.ops.convert_to_numpy(layer(np.asarray(logits, np.float32))).astype(np.float64)


def as_binary(probabilities, y):
    """Every (photo, label) pair as a two-class prediction: ((pairs, 2) probabilities of absent and present,
    (pairs,) 0 or 1), so that the single-label calibration measures (ECE, reliability) pool the labels."""
    present = np.asarray(probabilities, np.float64).reshape(-1)
    return np.stack([1 - present, present], axis=1), np.asarray(y).reshape(-1)


class MultiLabelHead:
    """One `heads.LinearHead` per label: logistic regression on standardised features, its L2 strength
    chosen by cross-validation on that label (`fit(X, Y)`, Y of 0 and 1 per label).

    Attributes (after `fit`):
        heads_: the fitted `LinearHead` of each label.
    """

    def __init__(self, strengths=LINEAR_HEAD_CS, folds=5, seed=SEED, class_weight=None):
        """Args:
            class_weight: None, or "balanced": a label's photos weigh as much as the others in its loss.
        """
        self.strengths, self.folds, self.seed, self.class_weight = tuple(strengths), folds, seed, class_weight

    def fit(self, X, Y, groups=None):
        """Fits a head per label; returns self.

        Args:
            Y: (n, labels) 0 or 1; every label present on some photos and absent from others.
            groups: as `LinearHead.fit`'s: one id per row, rows of one photo kept in one fold.
        """
        Y = np.asarray(Y)
        self.heads_ = [LinearHead(self.strengths, self.folds, self.seed, self.class_weight).fit(X, Y[:, k], groups)
                       for k in range(Y.shape[1])]
        return self

    def decision_function(self, X):
        """(n, labels) logits: the log-odds of each label."""
        return np.stack([head.pipeline_.decision_function(np.asarray(X, np.float32)) for head in self.heads_], axis=1)

    def predict_proba(self, X):
        """(n, labels) probabilities, each label's own (they need not sum to 1)."""
        return np.stack([head.predict_proba(X)[:, 1] for head in self.heads_], axis=1)

    def to_keras(self):
        """The fitted heads as one Keras model: features in, a logit per label out (`build_head`)."""
        kernels, biases = [], []
        for head in self.heads_:  # each folds its standardisation into its weights, as `LinearHead.to_keras`
            kernel, bias = head.to_keras().get_layer("logits").get_weights()
            kernels.append(kernel[:, 0])
            biases.append(bias[0])
        model = build_head(len(kernels[0]), len(self.heads_), multi_label=True)
        model.get_layer("logits").set_weights([np.stack(kernels, axis=1), np.array(biases)])
        return model

    def out_of_fold_logits(self, X, Y, seed=SEED):
        """(n, labels) logits of each training photo from heads fitted without its fold, each label's
        pipeline refitted with the strength it was given (as `openset.out_of_fold_logits`)."""
        from sklearn.base import clone
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        X, Y = np.asarray(X, np.float32), np.asarray(Y)
        columns = []
        for k, head in enumerate(self.heads_):
            folds = min(FOLDS, int(np.bincount(Y[:, k], minlength=2).min()))
            if folds < 2:
                columns.append(head.pipeline_.decision_function(X))
                continue
            columns.append(cross_val_predict(clone(head.pipeline_), X, Y[:, k], method="decision_function",
                                             cv=StratifiedKFold(folds, shuffle=True, random_state=seed)))
        return np.stack(columns, axis=1).astype(np.float32)

    def summary(self):
        return {"C": [head.C_ for head in self.heads_], "folds": [head.folds_ for head in self.heads_]}


def fit_temperatures(logits, y) -> list:
    """Each label's temperature, fitted on validation logits as `calibration.fit_temperature` fits one
    (a label is a two-class problem whose one logit is its log-odds)."""
    logits, y = np.asarray(logits), np.asarray(y)
    return [calibration.fit_temperature(logits[:, [k]], y[:, k], BINARY) for k in range(y.shape[1])]


def best_f1_threshold(probabilities, present) -> float:
    """The threshold on one label's probability with the best F1 on these photos.

    Every threshold between two neighbouring probabilities makes the same decisions here; of the
    best, the one in the middle of the widest such gap is taken, as far as these photos allow from
    the photos on either side.
    """
    probabilities, present = np.asarray(probabilities, np.float64), np.asarray(present)
    precision, recall, thresholds = precision_recall_curve(present, probabilities)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=precision + recall > 0)
    best = thresholds[f1 >= f1.max() - 1e-12]
    below = np.array([probabilities[probabilities < t].max(initial=0.0) for t in best])
    widest = int(np.argmax(best - below))
    return float((best[widest] + below[widest]) / 2)


def choose_thresholds(probabilities, y, class_names, targets=()) -> list:
    """A decision threshold per label, chosen on validation: the best F1 (`best_f1_threshold`), or for the
    labels a target names, the threshold that meets it (`calibration.threshold_for_target`).

    Args:
        probabilities: (n, labels) calibrated validation probabilities.
        y: (n, labels) 0 or 1.
        class_names: the labels, in order.
        targets: (metric, label index, value) each, e.g. ("precision", 0, 0.99).

    Raises:
        ConfigError: a target that no threshold meets on the validation photos, naming the label.
    """
    probabilities, y = np.asarray(probabilities), np.asarray(y)
    thresholds = [best_f1_threshold(probabilities[:, k], y[:, k]) for k in range(y.shape[1])]
    for metric, k, value in targets:
        two_classes = np.stack([1 - probabilities[:, k], probabilities[:, k]], axis=1)
        try:
            thresholds[k] = calibration.threshold_for_target(two_classes, y[:, k], 1, metric, value)
        except ConfigError:
            raise ConfigError(f"no threshold gives {metric} >= {value} for the label {class_names[k]!r} on the "
                              f"validation photos") from None
        log.info("threshold %.4f on p(%s) meets %s %s", thresholds[k], class_names[k], metric, value)
    return thresholds
