"""The integrity scan: every file hashed and its header read; unreadable files, duplicates and
test photos identical to training photos found before anything is decoded for a model; near-duplicates
found by a perceptual hash of a small thumbnail (`near_duplicates`)."""

import collections
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from catsdogs.data import near_duplicates
from catsdogs.data.images import describe_quirks, open_image, read_file
from catsdogs.errors import ImageError
from catsdogs.utils.files import sha256
from catsdogs.utils.progress import progress


@dataclasses.dataclass
class ScanReport:
    """What the integrity scan found. Paths map to content hashes, problems and quirks; `rows`
    (path -> "labels.csv line 5") says where a labels table lists a photo, to name it in problems.

    Near-duplicates: `near_pairs` are the pairs found ({"paths": [a, b], "found_by": "perceptual
    hash" with "distance" in bits, or "features" with "similarity"}); `split_of` (path -> split)
    says which split each photo is in, to find the groups that cross splits.
    """

    hashes: dict = dataclasses.field(default_factory=dict)
    problems: dict = dataclasses.field(default_factory=dict)
    quirks: dict = dataclasses.field(default_factory=dict)
    duplicates: list = dataclasses.field(default_factory=list)
    leaks: list = dataclasses.field(default_factory=list)
    rows: dict = dataclasses.field(default_factory=dict)
    near_pairs: list = dataclasses.field(default_factory=list)
    split_of: dict = dataclasses.field(default_factory=dict)

    def add_problem(self, path, reason):
        self.problems[path] = f"{self.rows[path]}: {reason}" if path in self.rows else reason
        self.hashes.pop(path, None)

    def near_duplicate_groups(self):
        """Groups of usable photos that near-duplicate pairs link, directly, through others or as identical
        copies; only groups of at least two different files (identical files alone are `duplicates`)."""
        pairs = [pair["paths"] for pair in self.near_pairs if all(p in self.hashes for p in pair["paths"])]
        copies = [(group[0], other) for group in self.duplicates for other in group[1:]
                  if all(p in self.hashes for p in group)]
        groups = near_duplicates.connected_groups(list(self.hashes), pairs + copies)
        return [group for group in groups if len({self.hashes[p] for p in group}) > 1]

    def split_keys(self):
        """path -> what keeps photos together in a split: their near-duplicate group, else their content."""
        keys = dict(self.hashes)
        for number, group in enumerate(self.near_duplicate_groups()):
            keys.update({path: f"near-duplicates {number}" for path in group})
        return keys

    def near_duplicates_across_splits(self):
        """The near-duplicate groups whose photos are in more than one split (`split_of`).

        Returns:
            list of {"photos": [{"path", "split"}], "pairs": the pairs found among them}.
        """
        crossing = []
        for group in self.near_duplicate_groups():
            photos = [{"path": p, "split": self.split_of[p]} for p in group if p in self.split_of]
            if len({photo["split"] for photo in photos}) > 1:
                members = set(group)
                crossing.append({"photos": photos, "pairs": [pair for pair in self.near_pairs
                                                             if set(pair["paths"]) <= members]})
        return crossing

    def to_json(self):
        return {
            "skipped": [{"path": p, "problem": r} for p, r in sorted(self.problems.items())],
            "handled_quirks": [{"path": p, "quirks": q} for p, q in sorted(self.quirks.items())],
            "duplicate_groups": self.duplicates,
            "test_train_leaks": self.leaks,
            "near_duplicate_groups": self.near_duplicate_groups(),
            "near_duplicates_across_splits": self.near_duplicates_across_splits(),
        }

    def summary_lines(self):
        groups, crossing = self.near_duplicate_groups(), self.near_duplicates_across_splits()
        lines = [f"{len(self.hashes)} images usable, {len(self.problems)} skipped, "
                 f"{len(self.quirks)} read with conversions, {len(self.duplicates)} groups of "
                 f"identical files, {len(self.leaks)} test images identical to training images, "
                 f"{len(groups)} groups of near-duplicates ({len(crossing)} across splits)"]
        lines += [f"  skipped {p}: {r}" for p, r in sorted(self.problems.items())]
        lines += [f"  duplicates: {' = '.join(group)}" for group in self.duplicates]
        lines += [f"  leak: test {leak['test']} = {leak['train']}" for leak in self.leaks]
        lines += ["  near-duplicates across splits: " + " ~ ".join(f"{photo['split']} {photo['path']}"
                                                                  for photo in group["photos"])
                  for group in crossing]
        return lines


def content_hash(data):
    """The hash of a file's bytes: what names its features in the cache and finds identical files."""
    return sha256(data)


def file_hash(path):
    """`content_hash` of a file, or an ImageError naming it."""
    return content_hash(read_file(path))


def _scan_file(path, near):
    """Hashes one file and reads its header, and with `near` decodes a thumbnail for its perceptual hash.

    Returns:
        (content hash, quirks, perceptual hashes or None); raises ImageError.
    """
    data = read_file(path)
    with open_image(data, path) as image:
        quirks = describe_quirks(image, path)
        perceptual = near_duplicates.perceptual_hashes(near_duplicates.thumbnail(image, path)) if near else None
    return content_hash(data), quirks, perceptual


def scan_dataset(dataset, workers=8, near=True):
    """Integrity scan: hashes every file, reads its header, finds duplicates, test leaks and near-duplicates.

    Files that are empty, unreadable or not images are listed as problems; with `near`, each is also
    decoded as a small thumbnail for its perceptual hash, and one that does not decode is a problem
    too. The pixels for a model are decoded later, where a file that fails then is added to the same
    report.

    Args:
        dataset: from `discover`.
        workers: threads reading files.
        near: find near-duplicates by their perceptual hash (`near_duplicates`).

    Returns:
        a `ScanReport`, `split_of` giving each photo's split as the dataset gives it.
    """
    report = ScanReport(problems=dict(dataset.problems), rows=dataset.rows)
    paths = [s.path for samples in dataset.splits.values() for s in samples]
    perceptual = {}
    with ThreadPoolExecutor(workers) as pool, progress(len(paths), "scan", "files") as bar:
        futures = [pool.submit(_scan_file, p, near) for p in paths]
        for path, future in zip(paths, futures):
            try:
                report.hashes[path], quirks, perceptual[path] = future.result()
            except ImageError as error:
                report.add_problem(path, error.reason)
            else:
                if quirks:
                    report.quirks[path] = quirks
            bar.update()
    by_hash = collections.defaultdict(list)
    for path, digest in report.hashes.items():
        by_hash[digest].append(path)
    report.duplicates = [group for group in by_hash.values() if len(group) > 1]
    split_of = {s.path: split for split, samples in dataset.splits.items() for s in samples}
    for group in report.duplicates:
        seen_in_training = [p for p in group if split_of[p] in ("train", "val")]
        report.leaks += [{"test": p, "train": seen_in_training[0]}
                         for p in group if split_of[p] == "test" and seen_in_training]
    report.split_of = {path: split for path, split in split_of.items() if path in report.hashes}
    if near and len(by_hash) > 1:
        contents = [group[0] for group in by_hash.values()]  # one photo per content: copies are linked as such
        pairs = near_duplicates.hash_pairs(np.stack([perceptual[p] for p in contents]))
        report.near_pairs = [{"paths": [contents[i], contents[j]], "found_by": "perceptual hash", "distance": d}
                             for i, j, d in pairs]
    return report
