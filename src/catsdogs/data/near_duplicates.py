"""Near-duplicate photos: the same photo re-encoded, resized, cropped a little, mirrored or lightly
recoloured.

Two signals find them, each where it is cheap:

- a perceptual hash (pHash, `imagehash`), in the integrity scan before any split: the photo is
  decoded as a small thumbnail (JPEG by the decoder's own scaling, `images.shrink_while_decoding`),
  and its hash and its mirror image's are compared with every other photo's. It finds re-encoded,
  resized, mirrored and recoloured copies; a crop moves every frequency and defeats it.
- the backbone's features (cosine similarity), once they are extracted: crops too. Photos of the
  same kind of animal can be as alike in features as a photo and its crop, so a pair of similar
  features is confirmed by the colours of the two thumbnails (a crop keeps most of a photo's
  colours; another photo of the same dog elsewhere does not). The training workflow compares them
  after extraction (`engine.train.keep_near_duplicates_together`).

Measured on the shared data (docs/near-duplicates.md): the planted copies of every kind are found, and
no two different scenes are paired.
"""

import numpy as np
from PIL import Image, ImageOps

from catsdogs.data.images import open_image, read_file, to_rgb_array

# pHash on 16x16 DCT coefficients: 256 bits. The 64-bit pHash (8x8) pairs different photos of the
# shared data at 8 bits of 64; at 256 bits, different photos are at least 77 bits apart.
HASH_SIZE = 16
# The thumbnail hashed: its shortest side is decoded at least this long (pHash shrinks it to 64x64).
HASH_DECODE_SIDE = 64
# Photos whose hashes (or one's and the other's mirror image's) differ in at most this many bits are
# near-duplicates. Planted copies were at most 24 bits from their photo; different photos at least 77.
HASH_MAX_DISTANCE = 40
# Photos whose features have at least this cosine similarity, and whose colours overlap at least
# this much, are near-duplicates. On the shared data (EfficientNet-Lite0 features): crops of 5-15% at
# a similarity of 0.88-0.99 and an overlap of 0.86-0.99; different photos at most 0.88 and, of those
# above 0.83, an overlap of at most 0.71.
FEATURE_MIN_SIMILARITY = 0.85
COLOUR_MIN_OVERLAP = 0.8
COLOUR_BINS = 8  # per channel: 512 colours
# Rows compared at once: bounds the memory of the all-pairs comparison (rows x photos floats).
BLOCK_ROWS = 1024


def thumbnail(image, source):
    """An opened photo decoded small (its shortest side at least HASH_DECODE_SIDE), upright, RGB uint8.

    Args:
        image: from `images.open_image` (not loaded yet).
        source: a name for error messages.

    Raises:
        ImageError: a photo that does not decode.
    """
    return to_rgb_array(image, source, min_side=HASH_DECODE_SIDE)


def load_thumbnail(path):
    """`thumbnail` of a photo file, read as every photo is (`images.read_file`)."""
    with open_image(read_file(path), path) as image:
        return thumbnail(image, path)


def perceptual_hashes(pixels):
    """The perceptual hash of a thumbnail and of its mirror image.

    Returns:
        (2, HASH_SIZE**2) bool array: the photo's hash, then its mirror image's.
    """
    import imagehash

    gray = Image.fromarray(pixels).convert("L")
    return np.stack([imagehash.phash(view, HASH_SIZE).hash.ravel() for view in (gray, ImageOps.mirror(gray))])


def colour_histogram(pixels):
    """The shares of a thumbnail's pixels in each of COLOUR_BINS**3 colours."""
    levels = np.asarray(pixels, np.uint8).reshape(-1, 3).astype(np.int64) * COLOUR_BINS // 256
    counts = np.bincount((levels[:, 0] * COLOUR_BINS + levels[:, 1]) * COLOUR_BINS + levels[:, 2],
                         minlength=COLOUR_BINS ** 3)
    return counts / counts.sum()


def colour_overlap(histogram, other):
    """The share of pixels two colour histograms have in common (histogram intersection, 0 to 1)."""
    return float(np.minimum(histogram, other).sum())


def hash_pairs(hashes, max_distance=HASH_MAX_DISTANCE):
    """Every pair of hashes within `max_distance` bits, one of them mirrored or not.

    Args:
        hashes: (n, 2, bits) bool, from `perceptual_hashes`.
        max_distance: the most bits in which a pair may differ.

    Returns:
        list of (i, j, distance) with i < j, distance the fewer differing bits of the two ways.
    """
    bits = np.asarray(hashes, np.float32)
    plain, mirrored = bits[:, 0], bits[:, 1]
    ones, mirrored_ones = plain.sum(axis=1), mirrored.sum(axis=1)
    pairs = []
    # Differing bits of 0/1 vectors: |a| + |b| - 2 a.b, all pairs at once as a matrix product.
    for start in range(0, len(bits), BLOCK_ROWS):
        rows, row_ones = plain[start:start + BLOCK_ROWS], ones[start:start + BLOCK_ROWS, None]
        distance = np.minimum(row_ones + ones[None] - 2 * rows @ plain.T,
                              row_ones + mirrored_ones[None] - 2 * rows @ mirrored.T)
        pairs += _upper_pairs(distance <= max_distance, distance, start)
    return [(i, j, round(d)) for i, j, d in pairs]


def feature_pairs(features, min_similarity=FEATURE_MIN_SIMILARITY):
    """Every pair of feature vectors at least `min_similarity` alike (cosine).

    Args:
        features: (n, dim) one vector per photo.
        min_similarity: the least cosine similarity of a pair.

    Returns:
        list of (i, j, similarity) with i < j.
    """
    features = np.asarray(features, np.float32)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    pairs = []
    for start in range(0, len(unit), BLOCK_ROWS):
        similarity = unit[start:start + BLOCK_ROWS] @ unit.T
        pairs += _upper_pairs(similarity >= min_similarity, similarity, start)
    return [(i, j, round(float(s), 4)) for i, j, s in pairs]


def _upper_pairs(hits, values, start):
    """(i, j, value) of the hits of a block of rows starting at row `start`, each pair once (i < j)."""
    rows, columns = np.nonzero(hits)
    rows = rows + start
    keep = rows < columns
    return list(zip(rows[keep].tolist(), columns[keep].tolist(), values[hits][keep].tolist()))


def connected_groups(keys, pairs):
    """The groups that pairs link, directly or through others (connected components).

    Args:
        keys: the items.
        pairs: (a, b) of linked items, by key.

    Returns:
        lists of keys, each of at least two, in the order of `keys` within and across groups.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    index = {key: i for i, key in enumerate(keys)}
    links = np.array([(index[a], index[b]) for a, b in pairs], int).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(len(keys), len(keys)))
    _, labels = connected_components(graph, directed=False)
    members = {}
    for key, label in zip(keys, labels):
        members.setdefault(label, []).append(key)
    return [group for group in members.values() if len(group) > 1]
