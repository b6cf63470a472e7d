"""Collages of labelled photos: a multi-label set made from photos of one class each.

Two photos side by side on one canvas show both their classes: a collage of a cat and a dog is
labelled "cats;dogs", one of two cats "cats". Every collage holds two photos, so that the number
of labels cannot be told from the layout. `make_collages` writes such collages as JPEG files and
returns the rows of their labels table, to train and measure a multi-label model on photos that
only have one class each (docs/multi-label.md; benchmarks/multilabel.py).
"""

import itertools
import os

import numpy as np
from PIL import Image

from catsdogs.config.choices import LABEL_SEPARATOR
from catsdogs.data.images import decode_image, read_file

CELL = 256  # pixels of the square each photo is fitted into (a collage is CELL x 2 CELL)
BACKGROUND = 128  # grey around a photo that is not square


def fitted(path, cell=CELL) -> np.ndarray:
    """A photo fitted into a cell x cell square, its proportions kept, on grey: (cell, cell, 3) uint8."""
    image = Image.fromarray(decode_image(read_file(path), os.fspath(path), min_side=cell))
    image.thumbnail((cell, cell), Image.Resampling.LANCZOS)
    canvas = np.full((cell, cell, 3), BACKGROUND, np.uint8)
    top, left = (cell - image.height) // 2, (cell - image.width) // 2
    canvas[top:top + image.height, left:left + image.width] = np.asarray(image)
    return canvas


def make_collages(photos, output, per_kind, seed=0, cell=CELL, separator=LABEL_SEPARATOR) -> list:
    """Writes collages of two photos side by side, of every pair of classes (two of one class too).

    Each photo is used at most once, drawn at random with `seed`; a pair of two classes has them
    in either order.

    Args:
        photos: class name -> paths of photos of that class.
        output: the folder to write the collages into (created if missing).
        per_kind: how many collages of each pair of classes.
        seed: of the draws.
        cell: the side of the square each photo is fitted into.
        separator: what joins a collage's labels in its row.

    Returns:
        the rows of their labels table: {"path": the file name in `output`, "label": its labels joined}.

    Raises:
        ValueError: fewer photos of a class than the collages need.
    """
    rng = np.random.default_rng(seed)
    classes = sorted(photos)
    kinds = list(itertools.combinations_with_replacement(classes, 2))
    needed = {name: per_kind * sum(kind.count(name) for kind in kinds) for name in classes}
    short = {name: len(photos[name]) for name in classes if len(photos[name]) < needed[name]}
    if short:
        raise ValueError(f"too few photos for {per_kind} collages of each kind: {short} (needed: {needed})")
    pools = {name: list(rng.permutation(photos[name])) for name in classes}
    os.makedirs(output, exist_ok=True)
    rows = []
    for kind in kinds:
        for number in range(per_kind):
            pair = [pools[name].pop() for name in rng.permutation(kind)]
            name = f"{'-'.join(kind)}-{number:05d}.jpg"
            canvas = np.concatenate([fitted(path, cell) for path in pair], axis=1)
            Image.fromarray(canvas).save(os.path.join(output, name), quality=90)
            rows.append({"path": name, "label": separator.join(sorted(set(kind)))})
    return rows
