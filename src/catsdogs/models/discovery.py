"""New classes from the photos a model rejects: groups of similar photos in the backbone's feature space.

Agglomerative clustering with average linkage on cosine distance (scikit-learn): two groups merge
while the mean distance between their photos stays under a threshold, so the number of groups is
found, not given. Every parameter follows from a rule stated before any result is seen, never
from what the photos turn out to be:

- the threshold is read off the classes the model knows (`merge_threshold`): half-way between how
  far apart two training photos of the same class are (the mean cosine distance within a class) and
  how far apart two photos of neighbouring classes are (the mean distance to the nearest other
  class). Two groups of rejected photos closer than that are taken for one class; farther, for two,
  as the known classes themselves would be;
- a group is proposed only with at least `min_cluster_size(n)` photos: enough to train and check a
  class (MIN_CLUSTER_PHOTOS), and at least MIN_CLUSTER_SHARE of the photos clustered. Photos of
  smaller groups are left in no cluster: a later round, with more photos, may group them.
"""

import math

import numpy as np

MIN_CLUSTER_PHOTOS = 5
MIN_CLUSTER_SHARE = 0.02
SPREAD_SAMPLE = 300  # training photos per class whose pairwise distances are measured
NO_CLUSTER = -1  # the cluster of photos in no group large enough (scikit-learn's noise label)


def _unit(features):
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def class_distances(features, labels, seed=0):
    """How far apart the known classes' photos are, in mean cosine distance.

    Args:
        features: (n, d) backbone features of labelled photos (the training photos), at least two classes.
        labels: their class indices.
        seed: which photos of a large class are sampled (SPREAD_SAMPLE of each).

    Returns:
        (within: between two photos of the same class, averaged over the classes; between: between a
        photo of a class and one of its nearest other class, averaged over the classes).
    """
    features, labels = np.asarray(features, np.float64), np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    samples = [rng.choice(np.flatnonzero(labels == c), min(int((labels == c).sum()), SPREAD_SAMPLE), replace=False)
               for c in classes]
    unit = [_unit(features[rows]) for rows in samples]
    within, between = [], []
    for i, a in enumerate(unit):
        if len(a) > 1:
            distances = 1 - a @ a.T
            within.append(float(distances[np.triu_indices(len(a), 1)].mean()))
        between.append(min(float((1 - a @ b.T).mean()) for j, b in enumerate(unit) if j != i))
    return float(np.mean(within)), float(np.mean(between))


def merge_threshold(features, labels, seed=0) -> float:
    """The mean cosine distance under which two groups merge: half-way between `class_distances`' two."""
    within, between = class_distances(features, labels, seed)
    return (within + between) / 2


def min_cluster_size(photos) -> int:
    """The fewest photos a proposed class has: MIN_CLUSTER_PHOTOS, or MIN_CLUSTER_SHARE of `photos` if more."""
    return max(MIN_CLUSTER_PHOTOS, math.ceil(MIN_CLUSTER_SHARE * photos))


def cluster(features, distance_threshold, min_size) -> np.ndarray:
    """Groups photos by their features (see the module).

    Args:
        features: (n, d) backbone features.
        distance_threshold: the mean cosine distance under which two groups merge (`merge_threshold`).
        min_size: the fewest photos of a group kept (`min_cluster_size`).

    Returns:
        (n,) cluster numbers: 0 for the largest group, 1 for the next, ...; NO_CLUSTER for photos in a smaller group.
    """
    from sklearn.cluster import AgglomerativeClustering

    features = np.asarray(features, np.float64)
    if len(features) < 2:
        return np.full(len(features), NO_CLUSTER)
    groups = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                     distance_threshold=distance_threshold).fit_predict(features)
    ids, counts = np.unique(groups, return_counts=True)
    kept = [group for group, count in sorted(zip(ids, counts), key=lambda item: (-item[1], item[0]))
            if count >= min_size]
    numbers = {group: number for number, group in enumerate(kept)}
    return np.array([numbers.get(group, NO_CLUSTER) for group in groups])
