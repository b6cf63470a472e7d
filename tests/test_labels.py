"""Your own photos: labels from a table, corrections from a review, unbalanced classes, many classes."""

import csv
import json
import os

import numpy as np
import pandas as pd
import pytest

import catsdogs
from catsdogs.cli import main
from catsdogs.config.train import TrainConfig
from catsdogs.data import labels
from catsdogs.engine.train import prepare
from catsdogs.errors import DataError
from conftest import link_photos, photo, real_dataset


def write_table(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def flat_copy(folder_dataset, root):
    """The photos of a Kaggle-layout slice in one flat folder (symlinks), and their labels table."""
    root.mkdir()
    rows = []
    for split, folder in (("train", "training_set/training_set"), ("test", "test_set/test_set")):
        for cls in ("cats", "dogs"):
            for source in sorted((folder_dataset / folder / cls).iterdir()):
                (root / source.name).symlink_to(os.readlink(source))
                rows.append((source.name, cls, split))
    return rows


def test_a_csv_labelled_copy_trains_to_the_same_model_as_the_folders(tmp_path):
    folders = real_dataset(tmp_path / "folders", train_per_class=30, test_per_class=15)
    rows = flat_copy(folders, tmp_path / "flat")
    table = write_table(tmp_path / "labels.csv", ["path", "label", "split"], rows)
    settings = dict(backbone="efficientnet_lite0", runtime="keras", image_size=128, open_set="none")
    by_folders = catsdogs.train(folders, runs_dir=str(tmp_path / "runs"), name="folders", **settings)
    by_table = catsdogs.train(tmp_path / "flat", labels=str(table), runs_dir=str(tmp_path / "runs"), name="table",
                              **settings)
    # The library takes the table in memory too: a DataFrame, or (path, label, split) tuples.
    by_frame = catsdogs.train(tmp_path / "flat", labels=pd.DataFrame(rows, columns=["path", "label", "split"]),
                              runs_dir=None, **settings)
    assert by_folders.metrics["accuracy"] > 0.8
    for run in (by_table, by_frame):
        assert run.classifier.classes == ["cats", "dogs"]
        assert {name: sorted(os.path.basename(s.path) for s in samples) for name, samples in run.splits.items()} == \
            {name: sorted(os.path.basename(s.path) for s in samples) for name, samples in by_folders.splits.items()}
        assert run.metrics["accuracy"] == by_folders.metrics["accuracy"]
        np.testing.assert_allclose(run.evaluation.probabilities, by_folders.evaluation.probabilities, atol=1e-6)
    assert json.load(open(f"{by_table.run_dir}/config.json"))["labels"] == [str(table)]
    # The run's splits.csv is itself a labels table: it trains the same photos again.
    again = prepare(TrainConfig(data_dir=str(tmp_path / "flat"), labels=(f"{by_table.run_dir}/splits.csv",),
                                backbone="efficientnet_lite0"))
    assert {n: sorted(s.path for s in v) for n, v in again.splits.items()} == \
        {n: sorted(s.path for s in v) for n, v in by_table.splits.items()}


def test_rows_whose_file_is_missing_or_unreadable_are_skipped_and_reported_by_row(tmp_path):
    data = tmp_path / "photos"
    link_photos(data, "train", "cats", range(1, 9))
    link_photos(data, "train", "dogs", range(1, 9))
    (data / "broken.jpg").write_bytes(b"not a photo")
    rows = [(f"cat.{i}.jpg", "cats") for i in range(1, 9)] + [(f"dog.{i}.jpg", "dogs") for i in range(1, 9)]
    rows += [("gone.jpg", "cats"), ("broken.jpg", "dogs")]
    table = write_table(tmp_path / "labels.csv", ["path", "label"], rows)
    prepared = prepare(TrainConfig(data_dir=str(data), labels=(str(table),), backbone="efficientnet_lite0"))
    problems = prepared.scan.to_json()["skipped"]
    assert {os.path.basename(p["path"]): p["problem"].split(":")[0] for p in problems} == \
        {"gone.jpg": "labels.csv line 18", "broken.jpg": "labels.csv line 19"}
    assert "no such file" in next(p["problem"] for p in problems if p["path"].endswith("gone.jpg"))
    assert sum(len(v) for v in prepared.splits.values()) == 16


@pytest.mark.parametrize("rows, message", [
    ([("cat.1.jpg", "cats"), ("", "dogs")], "rows without a path: labels.csv line 3"),
    ([("cat.1.jpg", "cats"), ("cat.2.jpg", "")], "rows without a label: labels.csv line 3"),
    ([("cat.1.jpg", "cats", "train"), ("cat.2.jpg", "cats", "holdout")], "split is not one of train, val, test: "
                                                                         "labels.csv line 3"),
    ([("cat.1.jpg", "cats"), ("cat.1.jpg", "dogs")], "listed twice with different labels or splits (a photo with "
                                                     "several labels: train with --multi-label, its labels in one "
                                                     "cell joined by ';' or one row per label): labels.csv line 2, "
                                                     "labels.csv line 3"),
    ([("cat.1.jpg", "cats"), ("cat.2.jpg", "cats"), ("dog.1.jpg", "dgos")], "appear only once (a class needs photos to "
                                                                           "train and to check on; a typo?) 'dgos', in: "
                                                                           "labels.csv line 4"),
])
def test_every_kind_of_bad_row_is_an_error_naming_its_rows(tmp_path, rows, message):
    header = ["path", "label", "split"][:len(rows[0])]
    table = write_table(tmp_path / "labels.csv", header, rows)
    with pytest.raises(DataError) as error:
        labels.table_dataset(tmp_path, str(table))
    assert message in str(error.value)


def test_downloaded_tables_name_their_own_columns_and_give_ids_without_extensions(tmp_path):
    data = tmp_path / "train"
    link_photos(data, "train", "cats", range(1, 4))
    link_photos(data, "train", "dogs", range(1, 4))
    table = write_table(tmp_path / "labels.csv", ["id", "breed"],
                        [(f"{cls[:-1]}.{i}", cls) for cls in ("cats", "dogs") for i in range(1, 4)])
    with pytest.raises(DataError, match=r"no column 'path' or 'label'; it has \['id', 'breed'\]. Name the columns"):
        labels.table_dataset(data, str(table))
    dataset = labels.table_dataset(data, str(table), labels.Columns(path="id", label="breed"))
    assert dataset.class_names == ["cats", "dogs"]
    assert sorted(os.path.basename(s.path) for s in dataset.splits["all"]) == \
        [f"{c}.{i}.jpg" for c in ("cat", "dog") for i in range(1, 4)]


def test_corrections_relabel_and_exclude_exactly_their_photos_and_never_exclude_test_photos(tmp_path):
    data = real_dataset(tmp_path / "data", train_per_class=10, test_per_class=3)
    train_dir, test_dir = "training_set/training_set", "test_set/test_set"
    corrections = write_table(tmp_path / "corrections.csv", ["path", "split", "given_label", "decision", "label", "time"], [
        (f"{train_dir}/cats/cat.1.jpg", "train", "cats", "relabel", "dogs", "t"),
        (f"{train_dir}/cats/cat.2.jpg", "train", "cats", "exclude", "cats", "t"),
        (f"{train_dir}/dogs/dog.3.jpg", "train", "dogs", "exclude", "dogs", "t"),
        (f"{train_dir}/dogs/dog.3.jpg", "train", "dogs", "keep", "dogs", "t"),  # a change of mind: the last row wins
        (f"{train_dir}/dogs/dog.4.jpg", "train", "dogs", "keep", "dogs", "t"),
        (f"{test_dir}/cats/cat.4001.jpg", "test", "cats", "exclude", "cats", "t"),
        (f"{test_dir}/dogs/dog.4002.jpg", "test", "dogs", "relabel", "cats", "t"),
    ])
    plain = prepare(TrainConfig(data_dir=str(data), backbone="efficientnet_lite0"))
    corrected = prepare(TrainConfig(data_dir=str(data), labels=(str(corrections),), backbone="efficientnet_lite0"))

    def labelled(prepared):
        return {os.path.relpath(s.path, data): (name, prepared.class_names[s.label])
                for name, samples in prepared.splits.items() for s in samples}

    before, after = labelled(plain), labelled(corrected)
    changed = {path: (before.get(path), after.get(path)) for path in set(before) | set(after)
               if before.get(path) != after.get(path)}
    split_of = {path: value[0] for path, value in before.items()}
    assert changed == {
        f"{train_dir}/cats/cat.1.jpg": ((split_of[f"{train_dir}/cats/cat.1.jpg"], "cats"),
                                        (split_of[f"{train_dir}/cats/cat.1.jpg"], "dogs")),
        f"{train_dir}/cats/cat.2.jpg": ((split_of[f"{train_dir}/cats/cat.2.jpg"], "cats"), None),
        f"{test_dir}/dogs/dog.4002.jpg": (("test", "dogs"), ("test", "cats")),
    }
    # --exclude reads the same table for its exclusions alone.
    excluded = prepare(TrainConfig(data_dir=str(data), exclude=str(corrections), backbone="efficientnet_lite0"))
    assert set(before) - set(labelled(excluded)) == {f"{train_dir}/cats/cat.2.jpg"}
    bad = write_table(tmp_path / "bad.csv", ["path", "split", "given_label", "decision", "label", "time"],
                      [(f"{train_dir}/cats/cat.1.jpg", "train", "cats", "relabel", "birds", "t")])
    with pytest.raises(DataError, match=r"bad.csv: relabels to classes the dataset does not have "
                                        r"\(\['cats', 'dogs'\]\): training_set/training_set/cats/cat.1.jpg as 'birds'"):
        prepare(TrainConfig(data_dir=str(data), labels=(str(bad),), backbone="efficientnet_lite0"))


def test_a_1_to_20_split_reports_the_small_class_everywhere_a_user_looks(tmp_path, capsys):
    data = tmp_path / "data"
    link_photos(data / "train" / "cats", "train", "cats", range(1, 5))
    link_photos(data / "train" / "dogs", "train", "dogs", range(1, 81))
    link_photos(data / "test" / "cats", "test", "cats", range(4001, 4003))
    link_photos(data / "test" / "dogs", "test", "dogs", range(4001, 4041))
    assert main(["train", str(data), "--backbone", "efficientnet_lite0", "--runtime", "keras", "--image-size", "128",
                 "--runs-dir", str(tmp_path / "runs"), "--name", "unbalanced"]) == 0
    printed = capsys.readouterr().out
    metrics = json.load(open(tmp_path / "runs" / "unbalanced" / "metrics.json"))
    recall = metrics["per_class"]["cats"]["recall"]
    assert metrics["per_class"]["cats"]["support"] == 2 and 0 <= metrics["balanced_accuracy"] <= 1
    assert metrics["balanced_accuracy"] == pytest.approx((recall + metrics["per_class"]["dogs"]["recall"]) / 2)
    assert metrics["warnings"] == ["class 'cats' has 2 test photos: its recall moves by 50% per photo"]
    assert f"smallest class 'cats': 2 photos, recall {recall:.4f}" in printed
    assert f"balanced accuracy {metrics['balanced_accuracy']:.4f}" in printed and "warning: class 'cats'" in printed
    html = open(tmp_path / "runs" / "unbalanced" / "report.html").read()
    assert "recall of the smallest class" in html and f"{100 * recall:.2f}%</b>cats, 2 photos" in html
    assert "Warning: class &#39;cats&#39; has 2 test photos" in html
    assert json.load(open(tmp_path / "runs" / "unbalanced" / "config.json"))["class_weight"] == "balanced"


def test_class_weights_balance_the_loss_of_both_heads():
    from catsdogs.models.heads import DenseHead, LinearHead, balanced_weights

    assert balanced_weights(np.array([0] * 10 + [1] * 90), "balanced") == pytest.approx({0: 5.0, 1: 100 / 180})
    assert balanced_weights(np.array([0, 1]), None) is None
    rng = np.random.default_rng(0)
    # Two overlapping classes, 1:20: unweighted, the small class is mostly given up; balanced, mostly found.
    x = np.r_[rng.normal(0.0, 1, (20, 4)), rng.normal(1.0, 1, (400, 4))].astype(np.float32)
    y = np.r_[np.zeros(20, int), np.ones(400, int)]
    heads = {"linear": lambda w: LinearHead(class_weight=w, seed=0).fit(x, y),
             "dense": lambda w: DenseHead(hidden_units=(), learning_rate=0.01, max_epochs=60, patience=60,
                                                   seed=0, class_weight=w).fit(
                 x, y, validation_data=(x, y))}
    for name, fit in heads.items():
        found = {w: (fit(w).predict_proba(x[:20]).argmax(axis=1) == 0).mean() for w in (None, "balanced")}
        assert found["balanced"] > found[None] + 0.3, (name, found)


def test_evaluate_reads_the_test_rows_of_a_labels_table(lite0_run, tmp_path, capsys):
    run_dir, metrics, data = lite0_run
    rows = [(os.path.relpath(photo("test", cls, n), photo("test", cls, n).parents[2]), cls, "test")
            for cls in ("cats", "dogs") for n in range(4001, 4011)]
    table = write_table(tmp_path / "labels.csv", ["file", "class", "split"], rows)
    root = photo("test", "cats", 4001).parents[2]
    assert main(["evaluate", str(run_dir), "--data", str(root), "--labels", str(table), "--path-column", "file",
                 "--label-column", "class", "--output", str(tmp_path / "eval")]) == 0
    saved = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert saved["images"] == 20 and saved["per_class"]["cats"]["support"] == 10
