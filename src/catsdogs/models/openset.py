"""Open-set rejection: how typical a photo is of the training photos, and the decision to answer "unknown".

A classifier's softmax says which known class a photo is closest to, never whether it is one of
them: a cats-vs-dogs model calls a car a dog with probability 0.99. Here each photo gets an
in-distribution score computed from what the run already has (the backbone's pooled features,
the head's logits and, where the backbone carries one, its ImageNet classifier):

- "msp": the largest class probability (Hendrycks and Gimpel, 2017), the weak baseline;
- "energy": the log-sum-exp of the class logits (Liu et al., 2020);
- "mahalanobis": minus the smallest Mahalanobis distance to a class mean, shared covariance
  fitted on the training features (Lee et al., 2018);
- "knn": the cosine similarity of the k-th nearest training photo in normalised feature space
  (Sun et al., 2022);
- "imagenet": the backbone's own ImageNet probability mass on the ImageNet classes of the
  trained classes (zero-shot; only for class names that map to ImageNet, see IMAGENET_CLASSES).

Each raw score is turned into its percentile among the out-of-fold scores of the training
photos; several methods combine by the mean of their percentiles (measured better than the
smallest: docs/BENCHMARKS.md). The final score, in [0, 1], is
the share of training photos that look less typical than the photo, and the threshold is set,
from out-of-fold training scores alone, so that a chosen share of known photos is kept. No photo
of an unknown class is ever used to choose anything. `InDistributionScore` computes all of it
inside the saved model (`layers.InDistributionScore`), so every runtime and export gives the same
decision.
"""

import dataclasses
import logging

import numpy as np

from catsdogs.config.choices import OPEN_SET_KEEP, OPEN_SET_METHODS
from catsdogs.errors import ConfigError
from catsdogs.models.layers import InDistributionScore

log = logging.getLogger(__name__)


KNN_NEIGHBOURS = 5  # k of the kNN score (Sun et al. 2022); 1 to 10 measured alike (docs/BENCHMARKS.md)
MAX_BANK = 20000  # training features kept for kNN: a random subset beyond this (Sun et al. show it suffices)
FOLDS = 5

# ImageNet-1k classes of a trained class name (singular, lower case): domestic cats and every dog breed.
IMAGENET_CLASSES = {
    "cat": tuple(range(281, 286)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "dog": tuple(range(151, 269)),  # Chihuahua ... Mexican hairless
}


def imagenet_classes_of(class_names):
    """The ImageNet class indices of each trained class, or None where a name does not map."""
    found = []
    for name in class_names:
        key = name.lower().strip()
        key = key[:-1] if key.endswith("s") and key[:-1] in IMAGENET_CLASSES else key
        if key not in IMAGENET_CLASSES:
            return None
        found.append(IMAGENET_CLASSES[key])
    return found


@dataclasses.dataclass
class OpenSetFit:
    """A fitted score and what it was fitted on, for the record (metrics.json)."""

    layer: InDistributionScore
    methods: tuple
    keep: float
    threshold: float
    training_kept: float  # share of training photos (out-of-fold) at or above the threshold
    bank_rows: np.ndarray = None  # the training photos (rows of `features`) the kNN bank holds, in its order


def _statistics(features, labels, num_classes):
    """Class means and the precision matrix of the shared, shrunk (Ledoit-Wolf) covariance."""
    from sklearn.covariance import LedoitWolf

    means = np.stack([features[labels == c].mean(axis=0) for c in range(num_classes)])
    precision = LedoitWolf(assume_centered=True).fit(features - means[labels]).precision_
    return means.astype(np.float32), precision.astype(np.float32)


def _unit(features):
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _set_weights(layer, features, labels, num_classes, bank, imagenet, references, combined):
    values = {"references": references, "combined_references": combined}
    if "knn" in layer.methods:
        values["bank"] = bank
    if "mahalanobis" in layer.methods:
        values["means"], values["precision"] = _statistics(features, labels, num_classes)
    if "imagenet" in layer.methods:
        kernel, bias, mask = imagenet
        values.update(imagenet_kernel=kernel, imagenet_bias=bias, imagenet_mask=mask)
    for weight in layer.weights:
        weight.assign(np.asarray(values[weight.name], np.float32))


def _new_layer(methods, features, num_classes, bank_size, reference_size, temperature, neighbours, threshold=0.0):
    layer = InDistributionScore(methods, features.shape[1], num_classes, bank_size, reference_size, temperature,
                                threshold, neighbours, name="in_distribution")
    layer.build([(None, features.shape[1]), (None, 1)])
    return layer


def out_of_fold_logits(features, labels, head, seed=0):
    """Head logits of each training photo from a head fitted without its fold (for "msp", "energy").

    The linear head's own pipeline (strength as chosen) is refitted per fold; a dense head is
    approximated by a linear one, which is enough for these baseline scores.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from catsdogs.models.heads import LinearHead

    pipeline = head.pipeline_ if isinstance(head, LinearHead) else LinearHead(seed=seed).fit(features, labels).pipeline_
    folds = min(FOLDS, int(np.bincount(labels).min()))
    if folds < 2:
        logits = pipeline.decision_function(features)
    else:
        logits = cross_val_predict(clone(pipeline), features, labels, method="decision_function",
                                   cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return np.asarray(logits, np.float32).reshape(len(features), -1)


def resolve_methods(spec, backbone, weights, class_names, multi_label=False) -> tuple:
    """The methods of the score that `TrainConfig.open_set` asks for.

    "auto" is the measured default: kNN and the ImageNet mass where the backbone carries its
    ImageNet classifier and the class names map to ImageNet classes, else kNN alone
    (docs/BENCHMARKS.md); "none" is no score. A multi-label model's labels are independent, so
    the scores of a softmax over them ("msp", "energy") mean nothing there.

    Raises:
        ConfigError: an unknown method, "imagenet" where it cannot be had, or a softmax score of a
            multi-label model.
    """
    from catsdogs.models.backbones import has_imagenet_classifier

    if spec == "none":
        return ()
    has_imagenet = (weights == "imagenet" and has_imagenet_classifier(backbone)
                    and imagenet_classes_of(class_names) is not None)
    if spec == "auto":
        return ("knn", "imagenet") if has_imagenet else ("knn",)
    methods = tuple(spec.split("+"))
    unknown = [m for m in methods if m not in OPEN_SET_METHODS]
    if unknown or len(set(methods)) != len(methods):
        raise ConfigError(f"open-set score {spec!r}: expected auto, none, or methods joined by + among "
                          f"{', '.join(OPEN_SET_METHODS)}")
    softmax = [m for m in methods if m in ("msp", "energy")]
    if multi_label and softmax:
        raise ConfigError(f"the open-set score {'+'.join(softmax)} reads a softmax over the classes; a multi-label "
                          f"model's labels are independent: use knn, mahalanobis or imagenet")
    if "imagenet" in methods and not has_imagenet:
        raise ConfigError(f"the imagenet open-set score needs an EfficientNet-Lite backbone with ImageNet weights "
                          f"and class names that map to ImageNet ({', '.join(IMAGENET_CLASSES)}); got {backbone} "
                          f"with {weights} weights and classes {class_names}")
    return methods


def imagenet_head(backbone, class_names):
    """(kernel, bias, mask) of the backbone's ImageNet classifier for the trained classes, or None."""
    from catsdogs.models.backbones import imagenet_classifier

    groups = imagenet_classes_of(class_names)
    classifier = imagenet_classifier(backbone)
    if groups is None or classifier is None:
        return None
    mask = np.zeros(1000, np.float32)
    mask[[i for group in groups for i in group]] = 1.0
    return (*classifier, mask)


def fit_open_set(features, labels, oof_logits, num_classes, methods, temperature=1.0, imagenet=None,
                 keep=OPEN_SET_KEEP, seed=0) -> OpenSetFit:
    """Fits the in-distribution score on the training photos and sets its threshold.

    Every method's reference scores are out-of-fold: kNN leaves each photo out of its own
    neighbours, Mahalanobis is fitted on the other folds, and "msp"/"energy" use `oof_logits`.

    Args:
        features: (n, d) pooled backbone features of the training photos.
        labels: their class indices.
        oof_logits: (n, logit units) out-of-fold head logits of the same photos.
        num_classes: how many classes.
        methods: names in `config.choices.OPEN_SET_METHODS`, combined by their mean percentile.
        temperature: the model's calibration temperature (for "msp").
        imagenet: (kernel (d, 1000), bias (1000,), mask (1000,)) of the backbone's ImageNet
            classifier and the trained classes' ImageNet classes; needed for "imagenet".
        keep: the share of training photos the threshold keeps.
        seed: for the folds and the kNN bank's subset.

    Returns:
        an `OpenSetFit` whose layer goes into the model, with the rows of the training photos its
        kNN bank holds (the photos `InDistributionScore.nearest` finds).
    """
    from sklearn.model_selection import StratifiedKFold

    features = np.asarray(features, np.float32)
    labels = np.asarray(labels)
    if "imagenet" in methods and imagenet is None:
        raise ConfigError("the imagenet open-set score needs its backbone's ImageNet classifier (imagenet_head)")
    rng = np.random.default_rng(seed)
    bank_rows = np.sort(rng.choice(len(features), MAX_BANK, replace=False)) if len(features) > MAX_BANK \
        else np.arange(len(features))
    bank = _unit(features[bank_rows])
    neighbours = min(KNN_NEIGHBOURS, len(bank_rows) - 1)

    # Out-of-fold raw scores: Mahalanobis fitted on the other folds; kNN against the whole bank,
    # where a photo in the bank finds itself first, so it counts one neighbour more.
    oof = np.zeros((len(features), len(methods)), np.float32)
    folds = min(FOLDS, int(np.bincount(labels, minlength=num_classes).min()))
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels) if folds >= 2 \
        else [(np.arange(len(features)), np.arange(len(features)))]
    # kNN's out-of-fold scores come from the whole bank below, so the folds compute the other methods only.
    fold_methods = tuple(m for m in methods if m != "knn")
    columns = [methods.index(m) for m in fold_methods]
    for fit_rows, held_rows in splits if fold_methods else ():
        fold_layer = _new_layer(fold_methods, features, num_classes, len(bank_rows), 1, temperature, neighbours)
        _set_weights(fold_layer, features[fit_rows], labels[fit_rows], num_classes, bank, imagenet,
                     np.zeros((len(fold_methods), 1)), np.zeros(1))
        oof[np.ix_(held_rows, columns)] = np.asarray(
            fold_layer([features[held_rows], oof_logits[held_rows]], raw=True))
    if "knn" in methods:
        in_bank = np.isin(np.arange(len(features)), bank_rows)
        similarities = _unit(features) @ bank.T
        kth = -np.sort(-similarities, axis=1)
        oof[:, methods.index("knn")] = np.where(in_bank, kth[:, neighbours], kth[:, neighbours - 1])

    references = np.sort(oof, axis=0).T  # (methods, n)
    percentiles = (references[None, :, :] <= oof[:, :, None]).mean(axis=-1)
    combined_references = np.sort(percentiles.mean(axis=1))
    # The score of a training photo is the share of training photos whose combined percentile is at
    # most its own; the threshold keeps `keep` of them.
    training_scores = (combined_references[None, :] <= percentiles.mean(axis=1)[:, None]).mean(axis=1)
    threshold = float(np.quantile(training_scores, 1 - keep, method="lower"))
    layer = _new_layer(methods, features, num_classes, len(bank_rows), len(features), temperature, neighbours,
                       threshold)
    _set_weights(layer, features, labels, num_classes, bank, imagenet, references, combined_references)
    kept = float((training_scores >= threshold).mean())
    log.info("open-set score %s: threshold %.4f keeps %.2f%% of the training photos (out-of-fold)",
             "+".join(methods), threshold, 100 * kept)
    return OpenSetFit(layer, tuple(methods), keep, threshold, kept, bank_rows if "knn" in methods else None)
