"""The integrity scan: every file hashed and its header read; unreadable files, duplicates and
test photos identical to training photos found before anything is decoded."""

import collections
import dataclasses
from concurrent.futures import ThreadPoolExecutor

from catsdogs.data.images import describe_quirks, open_image, read_file
from catsdogs.errors import ImageError
from catsdogs.utils.files import sha256
from catsdogs.utils.progress import progress


@dataclasses.dataclass
class ScanReport:
    """What the integrity scan found. Paths map to content hashes, problems and quirks; `rows`
    (path -> "labels.csv line 5") says where a labels table lists a photo, to name it in problems."""

    hashes: dict = dataclasses.field(default_factory=dict)
    problems: dict = dataclasses.field(default_factory=dict)
    quirks: dict = dataclasses.field(default_factory=dict)
    duplicates: list = dataclasses.field(default_factory=list)
    leaks: list = dataclasses.field(default_factory=list)
    rows: dict = dataclasses.field(default_factory=dict)

    def add_problem(self, path, reason):
        self.problems[path] = f"{self.rows[path]}: {reason}" if path in self.rows else reason
        self.hashes.pop(path, None)

    def to_json(self):
        return {
            "skipped": [{"path": p, "problem": r} for p, r in sorted(self.problems.items())],
            "handled_quirks": [{"path": p, "quirks": q} for p, q in sorted(self.quirks.items())],
            "duplicate_groups": self.duplicates,
            "test_train_leaks": self.leaks,
        }

    def summary_lines(self):
        lines = [f"{len(self.hashes)} images usable, {len(self.problems)} skipped, "
                 f"{len(self.quirks)} read with conversions, {len(self.duplicates)} groups of "
                 f"identical files, {len(self.leaks)} test images identical to training images"]
        lines += [f"  skipped {p}: {r}" for p, r in sorted(self.problems.items())]
        lines += [f"  duplicates: {' = '.join(group)}" for group in self.duplicates]
        lines += [f"  leak: test {leak['test']} = {leak['train']}" for leak in self.leaks]
        return lines


def content_hash(data):
    """The hash of a file's bytes: what names its features in the cache and finds identical files."""
    return sha256(data)


def file_hash(path):
    """`content_hash` of a file, or an ImageError naming it."""
    return content_hash(read_file(path))


def _scan_file(path):
    """Hashes one file and reads its header; returns (content hash, quirks) or raises ImageError."""
    data = read_file(path)
    with open_image(data, path) as image:
        quirks = describe_quirks(image, path)
    return content_hash(data), quirks


def scan_dataset(dataset, workers=8):
    """Integrity scan: hashes every file, reads its header, finds duplicates and test leaks.

    Files that are empty, unreadable or not images are listed as problems; the pixels are
    decoded later, where a truncated or corrupt image is added to the same report.

    Args:
        dataset: from `discover`.
        workers: threads reading files.

    Returns:
        a `ScanReport`.
    """
    report = ScanReport(problems=dict(dataset.problems), rows=dataset.rows)
    paths = [s.path for samples in dataset.splits.values() for s in samples]
    with ThreadPoolExecutor(workers) as pool, progress(len(paths), "scan", "files") as bar:
        futures = [pool.submit(_scan_file, p) for p in paths]
        for path, future in zip(paths, futures):
            try:
                report.hashes[path], quirks = future.result()
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
    return report
