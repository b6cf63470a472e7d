"""`catsdogs discover`: the photos a model rejects, grouped into proposed classes; their review as groups
(new class, merge, leave out) saved to the corrections file; and training again with it, which adds the
class from the discover folder's photos only. End to end on real photos: cars among the rejects become a
class the retrained model predicts."""

import json
import logging
import os
import re

import numpy as np
import pytest

import catsdogs
from catsdogs.cli import main
from catsdogs.data import corrections
from catsdogs.errors import ConfigError, DataError
from catsdogs.evaluation.discovery import cluster_metrics
from catsdogs.models import discovery
from catsdogs.store import discover_dir, run_dir
from catsdogs.utils.csvfiles import read_csv, write_csv
from conftest import UNKNOWN_DATA, real_dataset, unknown_photo

TOKEN = "a-token-for-these-tests"
CLASSES = ["cats", "dogs"]


def link_unknown(folder, group, count, skip=0):
    """Symlinks the first `count` photos (after `skip`) of a folder of the unknown photos."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(os.listdir(UNKNOWN_DATA / group))[skip:skip + count]
    for name in names:
        (folder / f"{group}-{name}").symlink_to(unknown_photo(group, name))
    return [folder / f"{group}-{name}" for name in names]


@pytest.fixture(scope="module")
def discovered(tmp_path_factory):
    """A small real run (lite0 at 128 px), and `catsdogs discover` on 30 cars and 30 buildings it never saw.

    Returns:
        (data folder, run directory, the discover folder, its `Discovery`).
    """
    root = tmp_path_factory.mktemp("discover")
    data = real_dataset(root / "data", train_per_class=60, test_per_class=20)
    run = catsdogs.train(data, backbone="efficientnet_lite0", image_size=128, runtime="keras",
                         runs_dir=str(root / "runs"), name="pets")
    photos = root / "new-photos"
    link_unknown(photos, "cars", 30)
    link_unknown(photos, "buildings", 30)
    result = catsdogs.discover(run.run_dir, [photos], root / "clusters")
    return data, run.run_dir, root / "clusters", result


def group_of(path):
    return os.path.basename(path).split("-")[0]


# The clustering rule alone, on made-up features.

def test_clusters_are_found_at_the_scale_of_the_known_classes_and_small_groups_left_out():
    rng = np.random.default_rng(0)
    dimensions = 64

    def group(center, count, spread=2.0):
        return center + spread * rng.normal(size=(count, dimensions)) / np.sqrt(dimensions)

    centers = rng.normal(size=(6, dimensions))
    known = np.concatenate([group(centers[0], 100), group(centers[1], 100)])
    within, between = discovery.class_distances(known, np.repeat([0, 1], 100))
    assert within < 0.15 < 0.6 < between  # photos of a class are close, two classes far apart
    threshold = discovery.merge_threshold(known, np.repeat([0, 1], 100))
    assert threshold == pytest.approx((within + between) / 2)
    features = np.concatenate([group(center, count) for center, count in zip(centers[2:], (40, 25, 12, 3))])
    truth = np.repeat(["a", "b", "c", "d"], [40, 25, 12, 3])
    clusters = discovery.cluster(features, threshold, discovery.min_cluster_size(len(features)))
    assert discovery.min_cluster_size(len(features)) == 5 and discovery.min_cluster_size(1000) == 20
    assert [int((clusters == number).sum()) for number in range(3)] == [40, 25, 12]  # largest first
    assert (clusters[truth == "d"] == discovery.NO_CLUSTER).all()  # 3 photos: too few for a class
    metrics = cluster_metrics(truth, clusters)
    assert metrics["purity"] == 1.0 and metrics["adjusted_rand_index"] == 1.0 and metrics["clusters"] == 3
    assert metrics["clustered"] == 77 and metrics["groups"]["d"]["clustered"] == 0
    assert metrics["groups"]["a"] == {"photos": 40, "clustered": 40, "pure": 40, "clusters": {"0": 40}}


# The corrections file's new decisions, and what training allows them to add.

def test_cluster_decisions_are_checked_like_the_others(tmp_path):
    file = tmp_path / "corrections.csv"
    corrections.append_decision(file, "/photos/car.1.jpg", "", "", "new_class", CLASSES, "cars")
    corrections.append_decision(file, "/photos/cat.9.jpg", "", "", "merge", CLASSES, "cats")
    corrections.append_decision(file, "dogs/dog.4.jpg", "test", "dogs", "new_class", CLASSES, "wolves")
    corrections.append_decision(file, "/photos/tree.1.jpg", "", "", "leave_out", CLASSES)
    assert corrections.read_corrections(file)["/photos/car.1.jpg"] == corrections.Correction("new_class", "cars", "")
    assert corrections.new_classes([file], CLASSES) == ["cars", "wolves"]
    for arguments, message in (
            (("", "", "new_class", "cats"), "new class 'cats': the model has that class already; merge into it"),
            (("", "", "new_class", " "), "a class needs a name"),
            (("", "", "new_class", "unknown"), "the answer for photos of none of the classes"),
            (("", "", "merge", "cars"), "cannot merge into 'cars': not a class of this model"),
            (("", "", "leave_out", "cars"), "leave_out changes nothing"),
            (("", "", "relabel", "cats"), "unknown split ''"),  # only cluster decisions name photos from elsewhere
            (("elsewhere", "", "merge", "cats"), "unknown split 'elsewhere'")):
        with pytest.raises(DataError, match=re.escape(message)):
            corrections.check_decision(*arguments, CLASSES)


def test_photos_from_elsewhere_are_added_only_from_the_discover_folder_that_proposed_them(tmp_path):
    sources = tmp_path / "new-photos"
    cars = link_unknown(sources, "cars", 3)
    folder = tmp_path / "clusters"
    folder.mkdir()
    (folder / discover_dir.INFO).write_text(json.dumps({"run": str(tmp_path / "run"), "sources": [str(sources)]}))
    rows = [{"path": str(car), "cluster": 0, "why": "rejected", "predicted": "unknown", "probability": 0.9,
             "in_distribution_score": 0.001} for car in cars]
    write_csv(rows, folder / discover_dir.CLUSTERS)
    table = folder / "corrections.csv"
    for car in cars:
        corrections.append_decision(table, str(car), "", "", "new_class", CLASSES, "cars")
    assert discover_dir.added_photo_sources(table, [str(car) for car in cars]) == [str(sources)]

    elsewhere = tmp_path / "corrections.csv"  # the same decisions, outside the discover folder
    elsewhere.write_bytes(table.read_bytes())
    with pytest.raises(DataError, match=re.escape("only the corrections table of a `catsdogs discover` folder")):
        discover_dir.added_photo_sources(elsewhere, [str(cars[0])])
    with pytest.raises(DataError, match="does not list"):
        discover_dir.added_photo_sources(table, ["/etc/passwd"])

    write_csv(rows + [{**rows[0], "path": "/etc/passwd"}], folder / discover_dir.CLUSTERS)  # a hostile clusters.csv
    with pytest.raises(DataError, match=re.escape("the photo '/etc/passwd' lies outside the folders discover was "
                                                  f"run on ({sources})")):
        discover_dir.read(folder)


# End to end on real photos.

def test_discover_groups_the_rejected_photos_and_writes_them(discovered):
    data, run, folder, result = discovered
    assert result.photos == 60 and result.output == str(folder)
    clusters = result.clusters
    assert len(clusters) >= 2
    truth = [group_of(row["path"]) for row in result.rows]
    metrics = cluster_metrics(truth, [row["cluster"] for row in result.rows])
    assert metrics["purity"] >= 0.9 and metrics["clustered"] >= 40, metrics
    written = discover_dir.read(folder)
    assert written.clusters() == clusters and written.run == run
    assert [row["why"] for row in read_csv(folder / discover_dir.CLUSTERS)] == [row["why"] for row in result.rows]
    for number in clusters:
        assert (folder / discover_dir.montage_name(number)).stat().st_size > 10_000
    info = json.loads((folder / discover_dir.INFO).read_text())
    assert info["clusters"] == len(clusters) and info["distance_threshold"] == result.distance_threshold
    assert "cluster 0" in str(result)


def test_the_command_writes_a_new_folder_and_never_into_a_used_one(discovered, tmp_path, capsys):
    data, run, folder, _ = discovered
    photos = tmp_path / "photos"
    link_unknown(photos, "kangaroos", 8)
    assert main(["discover", run, str(photos), "--output", str(tmp_path / "out"), "--unsure", "0"]) == 0
    out = capsys.readouterr().out
    assert "8 photos judged" in out and f"catsdogs review {run} --clusters {tmp_path / 'out'}" in out
    assert main(["discover", run, str(photos), "--output", str(folder)]) == 2  # holds the earlier clusters
    assert "not an empty folder" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unsure 2"):
        catsdogs.discover(run, [photos], unsure=2)


def cluster_client(run, folder, corrections_file):
    from fastapi.testclient import TestClient

    from catsdogs.apps.review.clusters import create_clusters_app, read_run_clusters

    app = create_clusters_app(read_run_clusters(run, folder), corrections_file, TOKEN)
    return TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TOKEN}"})


def test_review_names_a_cluster_and_training_again_predicts_the_new_class(discovered, tmp_path, caplog):
    data, run, folder, result = discovered
    table = folder / discover_dir.CORRECTIONS
    client = cluster_client(run, folder, table)
    listing = client.get("/clusters").json()
    assert listing["classes"] == CLASSES and [c["number"] for c in listing["clusters"]] == list(result.clusters)
    assert client.get("/clusters/0/montage.png").headers["content-type"] == "image/png"
    assert client.get("/clusters/99/montage.png").status_code == 404
    majority = {number: max({"cars", "buildings"}, key=[group_of(p) for p in paths].count)
                for number, paths in result.clusters.items()}
    car_clusters = [number for number, group in majority.items() if group == "cars"]
    refused = client.post(f"/clusters/{car_clusters[0]}/decision", json={"decision": "new_class", "label": "dogs"})
    assert refused.status_code == 400 and "merge into it instead" in refused.json()["error"]
    assert not table.exists()  # nothing refused was written
    for number, group in majority.items():
        decision = {"decision": "new_class", "label": "cars"} if group == "cars" else {"decision": "leave_out"}
        answer = client.post(f"/clusters/{number}/decision", json=decision)
        assert answer.status_code == 200 and answer.json()["decision"] == decision["decision"], answer.text
    saved = corrections.read_corrections(table)
    assert {path for path, c in saved.items() if c.decision == "new_class"} == {
        path for number in car_clusters for path in result.clusters[number]}
    assert client.get("/clusters").json()["clusters"][0]["decision"] is not None  # shown again as decided

    with caplog.at_level(logging.INFO, "catsdogs"):
        retrained = catsdogs.train(data, labels=[str(table)], backbone="efficientnet_lite0", image_size=128,
                                   runtime="keras", runs_dir=str(tmp_path / "runs"), name="with-cars")
    assert "computing features" not in caplog.text  # every photo's features were cached: by training, by discover
    assert retrained.classifier.classes == ["cats", "dogs", "cars"]
    assert retrained.config.discovered_sources == (str(folder.parent / "new-photos"),)
    assert retrained.metrics["per_class"]["cars"]["support"] >= 3  # measured on cars too
    held_out = link_unknown(tmp_path / "held-out", "cars", 10, skip=30)  # cars no step has seen
    labels = [p.label for p in retrained.classifier.predict(held_out, reject=False)]
    assert labels.count("cars") >= 8, labels
    # The new run's tables name photos outside its data folder, and its own readers accept them.
    run_directory = run_dir.RunDirectory(retrained.run_dir)
    splits = run_directory.photo_rows(run_dir.SPLITS, run_dir.SPLITS_COLUMNS)
    assert {row["label"] for row in splits if row["path"].startswith("..")} == {"cars"}


def test_a_clusters_review_from_another_run_is_refused(discovered, lite0_run):
    from catsdogs.apps.review.clusters import read_run_clusters

    with pytest.raises(DataError, match="review them with that run"):
        read_run_clusters(str(lite0_run[0]), discovered[2])


def test_page_names_a_cluster_by_keys_and_leaves_one_out_by_click(browser, discovered, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from catsdogs.apps.review.clusters import create_clusters_app, read_run_clusters
    from conftest import ServerThread

    data, run, folder, result = discovered
    file = tmp_path / "corrections.csv"
    numbers = list(result.clusters)
    with ServerThread(create_clusters_app(read_run_clusters(run, folder), file, TOKEN)) as url:
        wait = WebDriverWait(browser, 60)
        browser.get(f"{url}/?token={TOKEN}")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".cluster")) == len(numbers))
        cards = browser.find_elements(By.CSS_SELECTOR, ".cluster")
        assert "n name it as a new class" in browser.find_element(By.ID, "keys").text
        montage = cards[0].find_element(By.CLASS_NAME, "photo")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", montage))

        def saved():
            return corrections.read_corrections(file) if file.exists() else {}

        press = ActionChains(browser)
        press.send_keys("n").perform()  # the name field of the first cluster
        press.send_keys("new things", Keys.ENTER).perform()
        first = result.clusters[numbers[0]]
        wait.until(lambda d: len(saved()) == len(first))
        assert {saved()[path] for path in first} == {corrections.Correction("new_class", "new things", "")}
        wait.until(lambda d: "Named as the new class new things" in cards[0].text)
        assert "current" in cards[1].get_attribute("class")  # on to the next cluster

        cards[1].find_element(By.CSS_SELECTOR, "button.leave_out").click()
        wait.until(lambda d: len(saved()) == len(first) + len(result.clusters[numbers[1]]))
        assert cards[1].find_element(By.CSS_SELECTOR, "button.leave_out").get_attribute("aria-pressed") == "true"
        decided = 2
        if len(numbers) > 2:
            press.send_keys("1").perform()  # the third merged into cats, by the class's number
            wait.until(lambda d: result.clusters[numbers[2]][0] in saved())
            assert saved()[result.clusters[numbers[2]][0]].decision == "merge"
            decided = 3
        browser.refresh()  # what the page shows comes from the server's decisions
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".cluster[data-decision]")) == decided)
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
