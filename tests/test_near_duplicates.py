"""Near-duplicates: found by the scan's perceptual hash and by the features, kept on one side of the
splits catsdogs makes, reported where the data gives the splits."""

import json
import os

import numpy as np
import pytest

from catsdogs.data import dataset as data
from catsdogs.data import near_duplicates
from catsdogs.data.scan import scan_dataset
from catsdogs.data.splits import make_splits
from catsdogs.utils.csvfiles import read_csv
from conftest import link_photos, photo
from planted import KINDS, plant

HASHED_KINDS = ("re-encoded", "resized", "mirrored", "recoloured")  # a crop needs the features


def planted_slice(root, kinds=KINDS, layout=("train", "test")):
    """Eight real training photos per class and four test ones; near-duplicates of the first training
    cats (one per kind, each of another photo) in the test folder (or with the training photos
    when the layout has one folder). Returns {planted copy: (kind, the photo it copies)}."""
    rng = np.random.default_rng(0)
    train, test = (root / layout[0], root / layout[-1]) if len(layout) == 2 else (root, root)
    for cls in ("cats", "dogs"):
        link_photos(train / cls, "train", cls, range(1, 9))
        link_photos(test / cls, "test", cls, range(4001, 4005))
    planted = {}
    for number, kind in enumerate(kinds, start=1):
        copy = test / "cats" / f"{kind}-of-cat.{number}.jpg"
        plant(photo("train", "cats", number), kind, copy, rng)
        planted[str(copy)] = (kind, str(train / "cats" / f"cat.{number}.jpg"))
    return planted


def group_of(report):
    return {path: number for number, group in enumerate(report.near_duplicate_groups()) for path in group}


def test_the_scan_finds_near_duplicates_of_each_kind_a_hash_can_see_and_reports_them_across_splits(tmp_path):
    planted = planted_slice(tmp_path, HASHED_KINDS)
    report = scan_dataset(data.discover(tmp_path))
    groups = group_of(report)
    for copy, (kind, original) in planted.items():
        assert copy in groups and groups[copy] == groups[original], kind
    assert len(report.near_duplicate_groups()) == 4  # and no real photo paired with another
    assert all(pair["found_by"] == "perceptual hash" and pair["distance"] <= near_duplicates.HASH_MAX_DISTANCE
               for pair in report.near_pairs)

    crossing = report.to_json()["near_duplicates_across_splits"]
    assert len(crossing) == 4
    assert all(sorted(p["split"] for p in group["photos"]) == ["test", "train"] for group in crossing)
    summary = "\n".join(report.summary_lines())
    assert "4 groups of near-duplicates (4 across splits)" in summary
    assert f"near-duplicates across splits: test {next(iter(planted))}" in summary
    assert not scan_dataset(data.discover(tmp_path), near=False).near_pairs


def test_splits_catsdogs_makes_keep_near_duplicates_on_one_side(tmp_path):
    planted = planted_slice(tmp_path, HASHED_KINDS, layout=("all",))
    dataset = data.discover(tmp_path)
    report = scan_dataset(dataset)
    assert len(report.near_duplicate_groups()) == 4 and not report.near_duplicates_across_splits()
    for seed in range(6):
        splits = make_splits(dataset, report, 0.3, 0.3, seed)
        side = {s.path: name for name, samples in splits.items() for s in samples}
        assert all(side[copy] == side[original] for copy, (_, original) in planted.items())


def test_hash_and_feature_pairs_find_what_is_close_once():
    bits = np.zeros((3, 2, 256), bool)
    bits[0, 0, :128] = True
    bits[0, 1, 128:] = True  # the mirror image's hash
    bits[1, 0, 128:] = True  # the mirror image of photo 0
    bits[1, 1, :128] = True
    bits[2, 0, ::2] = bits[2, 1, 1::2] = True  # 128 bits from both
    assert near_duplicates.hash_pairs(bits) == [(0, 1, 0)]
    features = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    assert near_duplicates.feature_pairs(features, 0.98) == [(0, 1, pytest.approx(0.995, abs=1e-3))]
    assert near_duplicates.connected_groups("abcd", [("a", "c"), ("c", "d")]) == [["a", "c", "d"]]
    red, half_red = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    half_red[:2, :, 0] = 255
    assert near_duplicates.colour_overlap(near_duplicates.colour_histogram(red),
                                          near_duplicates.colour_histogram(half_red)) == 0.5


# One training run on real photos with planted crops (`planted_run`): the features find them.

def test_training_finds_crops_by_their_features_reports_them_and_keeps_carved_splits_apart(planted_run):
    run_dir, planted, data_dir, console = planted_run
    integrity = json.loads((run_dir / "integrity.json").read_text())
    groups = integrity["near_duplicate_groups"]
    for copy, (kind, original) in planted.items():
        assert any(copy in group and original in group for group in groups), kind
    # The crop in the test folder crosses the splits the data gives: reported, with how it was found.
    crossing = integrity["near_duplicates_across_splits"]
    test_crop = next(copy for copy in planted if "/test/" in copy)
    group = next(group for group in crossing if test_crop in [p["path"] for p in group["photos"]])
    assert {p["split"] for p in group["photos"]} == {"test", "train"}
    assert [pair["found_by"] for pair in group["pairs"]] == ["features"]
    assert group["pairs"][0]["similarity"] >= near_duplicates.FEATURE_MIN_SIMILARITY
    assert group["pairs"][0]["colour_overlap"] >= near_duplicates.COLOUR_MIN_OVERLAP
    # Crops among the training photos: validation is carved from them, and never holds one apart from its photo.
    side = {os.path.join(data_dir, row["path"]): row["split"] for row in read_csv(run_dir / "splits.csv")}
    for copy, (_, original) in planted.items():
        if "/train/" in copy:
            assert side[copy] == side[original] == "train"
    assert "photos move from the val split to training" in console
    assert "near-duplicates across splits: " in console
    html = (run_dir / "report.html").read_text()
    assert "Near-duplicates across splits" in html and os.path.basename(test_crop) in html
    assert (run_dir / "near_duplicates.png").stat().st_size > 10_000
