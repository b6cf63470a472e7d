"""How the groups of `catsdogs discover` match what the photos really are, where that is known (for
measuring only: nothing in discovery ever sees it)."""

import collections

import numpy as np

from catsdogs.models.discovery import NO_CLUSTER


def cluster_metrics(truth, clusters) -> dict:
    """Purity, adjusted Rand index and the share of photos clustered, against the true groups.

    Args:
        truth: each photo's true group (a folder name).
        clusters: its cluster (`models.discovery.cluster`; NO_CLUSTER for none).

    Returns:
        a JSON-ready dict: photos, clustered (count and share), clusters, purity (the share of clustered
        photos whose cluster's most common true group is their own), adjusted_rand_index (of the clustered
        photos), and per true group: photos, how many are clustered, how many of those lie in a cluster where
        their group is the most common ("pure"), and the clusters where most of them went.
    """
    from sklearn.metrics import adjusted_rand_score

    truth, clusters = np.asarray(truth), np.asarray(clusters)
    clustered = clusters != NO_CLUSTER
    majority = {number: collections.Counter(truth[clusters == number]).most_common(1)[0][0]
                for number in np.unique(clusters[clustered])}
    pure = sum(truth[i] == majority[clusters[i]] for i in np.flatnonzero(clustered))
    groups = {}
    for group in sorted(set(truth.tolist())):
        members = truth == group
        where = collections.Counter(clusters[members & clustered].tolist())
        groups[group] = {"photos": int(members.sum()), "clustered": int((members & clustered).sum()),
                         "pure": sum(count for number, count in where.items() if majority[number] == group),
                         "clusters": {str(number): count for number, count in where.most_common(3)}}
    return {
        "photos": int(len(truth)),
        "clustered": int(clustered.sum()),
        "clustered_share": float(clustered.mean()) if len(truth) else 0.0,
        "clusters": len(majority),
        "purity": float(pure / clustered.sum()) if clustered.any() else None,
        "adjusted_rand_index": float(adjusted_rand_score(truth[clustered], clusters[clustered]))
        if clustered.sum() > 1 else None,
        "groups": groups,
    }
