"""Dataset layouts, the integrity scan, and repeatable stratified splits."""

import collections
import json
import os
import zlib

import numpy as np
import pytest

from catsdogs.data import dataset as data
from catsdogs.data.scan import scan_dataset
from catsdogs.data.splits import make_splits
from catsdogs.errors import DataError
from catsdogs.inference.pipeline import ImagePipeline
from conftest import gradient, image_bytes, run_bounded


def make_images(folder, count, start=0, fmt="PNG"):
    """`count` different images (random blocks, another pattern in every file: no two are near-duplicates)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        blocks = np.random.default_rng([zlib.crc32(str(folder).encode()), i]).integers(0, 256, (8, 12, 3), np.uint8)
        (folder / f"img{i}.png").write_bytes(image_bytes(np.kron(blocks, np.ones((5, 5, 1), np.uint8)), fmt))


@pytest.mark.parametrize("layout", [
    ("training_set/training_set", "test_set/test_set"),  # Kaggle archive
    ("training_set", "test_set"),  # Kaggle, unpacked once (as in the shared data)
    ("train", "test"),
])
def test_split_folder_layouts(tmp_path, layout):
    train, test = layout
    for cls in ("cats", "dogs"):
        make_images(tmp_path / train / cls, 3)
        make_images(tmp_path / test / cls, 2)
    dataset = data.discover(tmp_path)
    assert dataset.class_names == ["cats", "dogs"]
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 6, "test": 4}
    assert {s.label for s in dataset.splits["test"] if "/dogs/" in s.path} == {1}


def test_plain_folder_of_classes_is_split_three_ways(tmp_path):
    for cls, count in (("ants", 20), ("bees", 20), ("wasps", 20)):
        make_images(tmp_path / cls, count)
    dataset = data.discover(tmp_path)
    assert dataset.class_names == ["ants", "bees", "wasps"] and list(dataset.splits) == ["all"]
    report = scan_dataset(dataset)
    splits = make_splits(dataset, report, val_fraction=0.25, test_fraction=0.25, seed=1)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [33, 12, 15]
    for split in splits.values():  # stratified: every class on every side, in proportion
        assert set(collections.Counter(s.label for s in split).values()) <= {4, 5, 11}
    assert len({s.path for v in splits.values() for s in v}) == 60


def test_validation_split_is_repeatable_and_shuffled(tmp_path):
    for cls in ("cats", "dogs"):
        make_images(tmp_path / "train" / cls, 30)
        make_images(tmp_path / "test" / cls, 2)
    dataset = data.discover(tmp_path)
    report = scan_dataset(dataset)

    def val_paths(seed):
        return [s.path for s in make_splits(dataset, report, 0.2, 0.2, seed)["val"]]

    assert val_paths(3) == val_paths(3)
    assert val_paths(3) != val_paths(4)
    val = make_splits(dataset, report, 0.2, 0.2, 3)["val"]
    assert collections.Counter(s.label for s in val) == {0: 6, 1: 6}  # not the last 20% (all dogs)


def test_identical_files_stay_on_one_side_of_the_split(tmp_path):
    make_images(tmp_path / "cats", 20)
    make_images(tmp_path / "dogs", 20)
    for i in range(5):  # five cats that also exist under another name
        (tmp_path / "cats" / f"copy{i}.png").write_bytes((tmp_path / "cats" / f"img{i}.png").read_bytes())
    dataset = data.discover(tmp_path)
    report = scan_dataset(dataset)
    assert len(report.duplicates) == 5
    for seed in range(5):
        splits = make_splits(dataset, report, 0.3, 0.3, seed)
        side = {s.path: name for name, v in splits.items() for s in v}
        assert all(side[str(tmp_path / "cats" / f"img{i}.png")] == side[str(tmp_path / "cats" / f"copy{i}.png")]
                   for i in range(5))


def test_scan_reports_broken_files_duplicates_and_test_leaks(tmp_path):
    for cls in ("cats", "dogs"):
        make_images(tmp_path / "train" / cls, 4)
        make_images(tmp_path / "test" / cls, 2, start=100)
    (tmp_path / "train" / "cats" / "empty.jpg").write_bytes(b"")
    (tmp_path / "train" / "dogs" / "notes.jpg").write_bytes(b"not a picture")
    (tmp_path / "train" / "dogs" / "twin.png").write_bytes((tmp_path / "train" / "dogs" / "img0.png").read_bytes())
    (tmp_path / "test" / "cats" / "seen.png").write_bytes((tmp_path / "train" / "cats" / "img1.png").read_bytes())
    (tmp_path / "train" / "cats" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    report = scan_dataset(data.discover(tmp_path))
    assert {p.rsplit("/", 1)[1]: r for p, r in report.problems.items()} == {
        "empty.jpg": "empty file (0 bytes)", "notes.jpg": "not an image (no known image format)"}
    assert len(report.hashes) == 8 + 4 + 2
    assert sorted(sorted(p.rsplit("/", 1)[1] for p in g) for g in report.duplicates) == [
        ["img0.png", "twin.png"], ["img1.png", "seen.png"]]
    assert [(leak["test"].rsplit("/", 1)[1], leak["train"].rsplit("/", 1)[1]) for leak in report.leaks] == [
        ("seen.png", "img1.png")]
    summary = "\n".join(report.summary_lines())
    assert "empty.jpg: empty file" in summary and "leak: test" in summary


SCAN = """
import json, sys
from catsdogs.data.dataset import discover
from catsdogs.data.scan import scan_dataset
print(json.dumps(scan_dataset(discover(sys.argv[1])).problems))
"""


def test_scan_skips_fifos_and_devices_by_name_and_stays_small(tmp_path):
    """At c87dfbb a FIFO hung the scan for ever and a link to /dev/zero read until the memory ran out."""
    for cls in ("cats", "dogs"):
        make_images(tmp_path / cls, 3)
    os.mkfifo(tmp_path / "cats" / "pipe.jpg")
    (tmp_path / "dogs" / "zero.jpg").symlink_to("/dev/zero")
    result = run_bounded(SCAN, tmp_path, memory_bytes=2 << 30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {str(tmp_path / "cats" / "pipe.jpg"): "not a regular file (a FIFO)",
                                         str(tmp_path / "dogs" / "zero.jpg"): "not a regular file (a character device)"}


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "no class subfolders"),
    (lambda root: (root / "loose.jpg").write_bytes(b"x"), "1 loose files"),
    (lambda root: make_images(root / "cats", 2), "at least two class folders"),
    (lambda root: (make_images(root / "train" / "cats", 2), make_images(root / "train" / "dogs", 2),
                   make_images(root / "test" / "birds", 2)), "classes ['birds'] do not exist"),
])
def test_unusable_layouts_say_what_is_wrong(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        data.discover(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        data.discover(tmp_path / "nowhere")


def test_pipeline_resizes_in_order_and_reports_undecodable_files(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(image_bytes(gradient(30, 50), "PNG"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(image_bytes(gradient(200, 200), "JPEG")[:300])
    pipeline = ImagePipeline(16, batch_size=2)
    batches = list(pipeline.dataset([good, bad, good]))
    images = np.concatenate([b[0].numpy() for b in batches])
    ok = np.concatenate([b[1].numpy() for b in batches])
    order = np.concatenate([b[2].numpy() for b in batches])
    assert images.shape == (3, 16, 16, 3) and ok.tolist() == [True, False, True] and order.tolist() == [0, 1, 2]
    assert np.array_equal(images[0], images[2])
    assert list(pipeline.errors) == [str(bad)] and "truncated" in pipeline.errors[str(bad)].lower()
