"""`catsdogs review`: the photos a run lists for review, decisions saved as they are made (even
through a kill -9), refusals that say why, and the page driven by keys and clicks in Chromium."""

import csv
import datetime
import json
import logging
import os
import pathlib
import re
import signal
import time

import httpx
import numpy as np
import pytest

from catsdogs.config.train import TrainConfig
from catsdogs.data import corrections
from catsdogs.data.corrections import Correction, append_decision, read_corrections
from catsdogs.errors import DataError
from conftest import ServerThread, link_photos, real_dataset, review_login, start_server_command

PLANTED = [f"training_set/training_set/dogs/cat.{number}.jpg" for number in (101, 102, 103)]  # cats among the dogs
CLASSES = ["cats", "dogs"]
TOKEN = "a-token-for-these-tests"
OTHER = {"cats": "dogs", "dogs": "cats"}


@pytest.fixture(scope="module")
def mislabelled_run(tmp_path_factory):
    """A real efficientnet_lite0 run on 100 + 100 training photos with 3 cats labelled dogs, 50 + 50 test photos.

    Returns:
        (run directory, the rows of its review.csv).
    """
    import catsdogs
    from catsdogs.utils.csvfiles import read_csv

    data = real_dataset(tmp_path_factory.mktemp("mislabelled"), train_per_class=100, test_per_class=50)
    link_photos(data / "training_set" / "training_set" / "dogs", "train", "cats", (101, 102, 103))
    run = catsdogs.train(data, backbone="efficientnet_lite0", runtime="keras",
                         runs_dir=str(tmp_path_factory.mktemp("runs")), name="mislabelled")
    run_dir = pathlib.Path(run.run_dir)
    return run_dir, read_csv(run_dir / "review.csv")


@pytest.fixture(scope="module")
def explainer(mislabelled_run):
    import catsdogs

    return catsdogs.load(mislabelled_run[0], "keras").explainer()


def review_client(run_dir, explainer, corrections_file, mistakes=50):
    from fastapi.testclient import TestClient

    from catsdogs.apps.review.app import create_app
    from catsdogs.apps.review.photos import read_run_photos

    app = create_app(run_dir, read_run_photos(run_dir, mistakes), explainer, corrections_file, TOKEN)
    return TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TOKEN}"})


def expected_listing(rows, mistakes):
    """The paths the review should list, highest loss first: flagged train/val photos, then the top mistakes."""
    flagged = {r["path"] for r in rows if r["split"] != "test" and r["label_looks_wrong"] == "True"}
    wrong = sorted((r for r in rows if r["predicted"] != r["true"]), key=lambda r: -float(r["loss"]))
    listed = flagged | {r["path"] for r in wrong[:mistakes]}
    return [r["path"] for r in sorted(rows, key=lambda r: -float(r["loss"])) if r["path"] in listed]


def photo_index(listing, path):
    return next(p["index"] for p in listing["photos"] if p["path"] == path)


def labelled_photos(config):
    """photo path (relative to the data folder) -> (split, label), as training prepares them."""
    from catsdogs.engine.train import prepare

    prepared = prepare(config)
    return {os.path.relpath(s.path, config.data_dir): (split, prepared.class_names[s.label])
            for split, samples in prepared.splits.items() for s in samples}


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# The corrections file, alone (no model needed).

def test_corrections_last_decision_wins_and_a_torn_last_line_is_ignored(tmp_path, caplog):
    file = tmp_path / "corrections.csv"
    append_decision(file, "dogs/cat.1.jpg", "train", "dogs", "keep", CLASSES)
    append_decision(file, "dogs/cat.1.jpg", "train", "dogs", "relabel", CLASSES, "cats")  # changed my mind
    append_decision(file, 'odd "name",\nwith a newline.jpg', "val", "cats", "exclude", CLASSES)
    header, *rows = csv_rows(file)
    assert header == list(corrections.FIELDS)
    assert [row[:5] for row in rows] == [["dogs/cat.1.jpg", "train", "dogs", "keep", "dogs"],
                                         ["dogs/cat.1.jpg", "train", "dogs", "relabel", "cats"],
                                         ['odd "name",\nwith a newline.jpg', "val", "cats", "exclude", "cats"]]
    assert all(datetime.datetime.fromisoformat(row[5]).tzinfo for row in rows)  # ISO 8601 with its offset
    expected = {"dogs/cat.1.jpg": Correction("relabel", "cats", "train"),
                'odd "name",\nwith a newline.jpg': Correction("exclude", "cats", "val")}
    assert read_corrections(file) == expected

    for torn in (b"dogs/cat.2.jpg,train,do", b'"dogs/cat\n'):  # killed mid-write: in a field, in a quoted name
        with open(file, "ab") as f:
            f.write(torn)
        with caplog.at_level(logging.WARNING, "catsdogs.data.corrections"):
            assert read_corrections(file) == expected
        assert "torn" in caplog.text
        caplog.clear()
        append_decision(file, "dogs/cat.3.jpg", "test", "dogs", "keep", CLASSES)  # cuts the torn line off first
        expected["dogs/cat.3.jpg"] = Correction("keep", "dogs", "test")
        assert read_corrections(file) == expected
        assert len(csv_rows(file)) == 1 + len(rows) + 1  # the torn line is gone, the new row whole
        rows.append(None)


def test_corrections_refuse_what_cannot_be_meant(tmp_path):
    file = tmp_path / "corrections.csv"
    for arguments, message in (
            (("test", "cats", "exclude", None), "test photos are never excluded from evaluation"),
            (("train", "cats", "relabel", "birds"), "not a class of this model (its classes: cats, dogs)"),
            (("train", "cats", "relabel", "cats"), "that is the photo's label already"),
            (("train", "cats", "drop", None), "unknown decision 'drop'"),
            (("train", "cats", "keep", "dogs"), "goes with relabel only")):
        split, given, decision, label = arguments
        with pytest.raises(DataError, match=re.escape(message)):
            append_decision(file, "a.jpg", split, given, decision, CLASSES, label)
    assert not file.exists()  # nothing refused was written

    other = tmp_path / "labels.csv"
    other.write_text("path,label\na.jpg,cats\n")
    with pytest.raises(DataError, match="labels.csv: not a corrections file"):
        append_decision(other, "a.jpg", "train", "cats", "keep", CLASSES)
    assert other.read_text() == "path,label\na.jpg,cats\n"  # never written into
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(corrections.FIELDS) + "\na.jpg,train,cats,maybe,cats,2026-01-01T00:00:00\nb.jpg\n")
    with pytest.raises(DataError, match="bad.csv, line 2: expected 6 fields"):
        read_corrections(bad)


@pytest.mark.parametrize("outside", ["../../../etc/passwd", "/etc/passwd", "cats/../../secret.jpg"])
def test_a_review_csv_naming_a_file_outside_the_data_folder_is_refused(tmp_path, outside):
    from catsdogs.apps.review.photos import read_run_photos
    from catsdogs.store.run_dir import REVIEW as REVIEW_FILE
    from catsdogs.utils.csvfiles import write_csv

    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    (data_dir / "cats").mkdir(parents=True)
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"data_dir": str(data_dir)}))
    row = {"true": "cats", "predicted": "dogs", "probability": 0.9, "loss": 2.3, "label_looks_wrong": True,
           "split": "train"}
    write_csv([{"path": "cats/cat.1.jpg", **row}, {"path": outside, **row}], run_dir / REVIEW_FILE)
    with pytest.raises(DataError, match=re.escape(f"{run_dir / REVIEW_FILE}: the photo {outside!r} lies outside "
                                                  f"the run's data folder {data_dir}")):
        read_run_photos(run_dir)
    write_csv([{"path": "cats/cat.1.jpg", **row}, {"path": "cats/../cats/cat.2.jpg", **row}], run_dir / REVIEW_FILE)
    assert [photo.path for photo in read_run_photos(run_dir).photos] == ["cats/cat.1.jpg", "cats/../cats/cat.2.jpg"]


# The API, in this process.

def test_listing_has_the_flagged_photos_and_the_most_confident_mistakes(mislabelled_run, explainer, tmp_path):
    run_dir, rows = mislabelled_run
    listing = review_client(run_dir, explainer, tmp_path / "c.csv").get("/photos").json()
    assert listing["run"] == "mislabelled" and listing["classes"] == CLASSES
    assert listing["source"] == "review.csv" and listing["note"] == ""
    paths = [p["path"] for p in listing["photos"]]
    assert paths == expected_listing(rows, 50)
    assert {r["split"] for r in rows} == {"train", "val", "test"}  # review.csv covers every split
    losses = [p["loss"] for p in listing["photos"]]
    assert losses == sorted(losses, reverse=True)

    # What really happens: cleanlab, on out-of-fold probabilities, flags the planted cats.
    by_path = {p["path"]: p for p in listing["photos"]}
    assert all(path in by_path for path in PLANTED)  # flagged, or among the confident mistakes
    flagged_planted = [path for path in PLANTED if path in by_path and by_path[path]["label_looks_wrong"]]
    assert len(flagged_planted) >= 2, [(r["path"], r["split"], r["predicted"], r["loss"], r["label_looks_wrong"])
                                       for r in rows if r["path"] in PLANTED]
    planted = by_path[flagged_planted[0]]
    assert (planted["given_label"], planted["predicted"], planted["split"] in ("train", "val")) == ("dogs", "cats", True)
    assert planted["decision"] is None and planted["label"] is None
    mistakes = [p for p in listing["photos"] if p["confident_mistake"]]
    assert mistakes and all(p["predicted"] != p["given_label"] for p in mistakes)
    assert any(p["split"] == "test" for p in mistakes)  # test photos are reviewed too
    assert all(p["label_looks_wrong"] or p["confident_mistake"] for p in listing["photos"])

    fewer = review_client(run_dir, explainer, tmp_path / "c.csv", mistakes=1).get("/photos").json()
    assert [p["path"] for p in fewer["photos"]] == expected_listing(rows, 1)


def test_a_decision_is_written_before_its_answer_and_refusals_say_why(mislabelled_run, explainer, tmp_path):
    run_dir, rows = mislabelled_run
    file = tmp_path / "corrections.csv"
    client = review_client(run_dir, explainer, file)
    listing = client.get("/photos").json()
    planted = next(p for p in listing["photos"] if p["path"] in PLANTED)
    answer = client.post(f"/photos/{planted['index']}/decision", json={"decision": "relabel", "label": "cats"})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["decision"], answer.json()["label"]) == ("relabel", "cats")
    header, row = csv_rows(file)
    assert header == ["path", "split", "given_label", "decision", "label", "time"]
    assert row[:5] == [planted["path"], planted["split"], "dogs", "relabel", "cats"]
    assert client.get("/photos").json()["photos"][planted["index"]]["decision"] == "relabel"

    test_photo = next(p for p in listing["photos"] if p["split"] == "test")
    refused = client.post(f"/photos/{test_photo['index']}/decision", json={"decision": "exclude"})
    assert refused.status_code == 400
    assert refused.json()["error"].startswith(f"{test_photo['path']}: test photos are never excluded from evaluation")
    refused = client.post(f"/photos/{planted['index']}/decision", json={"decision": "relabel", "label": "birds"})
    assert refused.status_code == 400
    assert "cannot relabel as 'birds': not a class of this model (its classes: cats, dogs)" in refused.json()["error"]
    refused = client.post(f"/photos/{planted['index']}/decision", json={"decision": "discard"})
    assert refused.status_code == 400 and "decision: Input should be 'keep', 'relabel' or 'exclude'" in refused.text
    missing = client.post(f"/photos/{len(listing['photos'])}/decision", json={"decision": "keep"})
    assert missing.status_code == 404 and "no photo" in missing.json()["error"]
    assert len(csv_rows(file)) == 2  # nothing refused was written

    kept = client.post(f"/photos/{test_photo['index']}/decision", json={"decision": "keep"})
    assert kept.status_code == 200 and csv_rows(file)[-1][:5] == [
        test_photo["path"], "test", test_photo["given_label"], "keep", test_photo["given_label"]]


def test_photos_and_their_grad_cam_are_served_and_the_grad_cam_kept(mislabelled_run, explainer, tmp_path):
    import io

    from PIL import Image

    client = review_client(mislabelled_run[0], explainer, tmp_path / "c.csv")
    photo = client.get("/photos/0/photo.jpg")
    assert photo.headers["content-type"] == "image/jpeg"
    start = time.perf_counter()
    gradcam = client.get("/photos/0/gradcam.png")
    first = time.perf_counter() - start
    assert gradcam.headers["content-type"] == "image/png"
    shown, overlay = Image.open(io.BytesIO(photo.content)), Image.open(io.BytesIO(gradcam.content))
    assert overlay.size == shown.size and max(shown.size) <= 480
    difference = np.abs(np.asarray(overlay.convert("RGB"), int) - np.asarray(shown.convert("RGB"), int))
    assert difference.mean() > 10  # the heatmap's colours are drawn over the photo
    start = time.perf_counter()
    assert client.get("/photos/0/gradcam.png").content == gradcam.content
    assert time.perf_counter() - start < first  # from memory, not computed again
    assert client.get("/photos/9999/gradcam.png").status_code == 404


def test_a_run_without_review_csv_lists_its_test_mistakes_and_says_so(mislabelled_run, explainer, tmp_path):
    from catsdogs.utils.csvfiles import read_csv

    run_dir, _ = mislabelled_run
    old_run = tmp_path / "old-run"
    old_run.mkdir()
    for name in ("config.json", "predictions.csv", "model.keras"):
        (old_run / name).symlink_to(run_dir / name)
    listing = review_client(old_run, explainer, tmp_path / "c.csv").get("/photos").json()
    assert listing["source"] == "predictions.csv"
    assert "no review.csv" in listing["note"] and "only its test photos" in listing["note"]
    test_rows = [{**r, "split": "test"} for r in read_csv(run_dir / "predictions.csv")]
    assert [p["path"] for p in listing["photos"]] == expected_listing(test_rows, 50)
    assert {p["split"] for p in listing["photos"]} == {"test"}


# The command, killed and started again.

def test_decisions_survive_a_kill_and_show_again_after_a_restart(mislabelled_run, tmp_path):
    run_dir, _ = mislabelled_run
    file = tmp_path / "corrections.csv"
    server, url, lines = start_server_command("review", run_dir, "--corrections", file)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            review_login(client, lines)
            photos = client.get("/photos").json()["photos"]
            trainable = [p for p in photos if p["split"] != "test"]
            test_photo = next(p for p in photos if p["split"] == "test")
            decisions = {trainable[0]["index"]: {"decision": "relabel", "label": OTHER[trainable[0]["given_label"]]},
                         trainable[1]["index"]: {"decision": "exclude"},
                         test_photo["index"]: {"decision": "keep"}}
            for index, decision in decisions.items():
                assert client.post(f"/photos/{index}/decision", json=decision).status_code == 200
    finally:
        server.send_signal(signal.SIGKILL)  # right after the last answer
        server.wait(timeout=60)
    saved = read_corrections(file)
    for index, decision in decisions.items():
        photo = photos[index]
        assert saved[photo["path"]] == Correction(
            decision["decision"], decision.get("label", photo["given_label"]), photo["split"])
    # Training again with the corrections relabels and excludes exactly those photos.
    data_dir = json.load(open(run_dir / "config.json"))["data_dir"]
    before, after = (labelled_photos(TrainConfig(data_dir=data_dir, labels=labels, backbone="efficientnet_lite0"))
                     for labels in ((), (str(file),)))
    relabelled, excluded = photos[trainable[0]["index"]]["path"], photos[trainable[1]["index"]]["path"]
    assert {path: (before.get(path), after.get(path)) for path in set(before) | set(after)
            if before.get(path) != after.get(path)} == {
        relabelled: (before[relabelled], (before[relabelled][0], OTHER[before[relabelled][1]])),
        excluded: (before[excluded], None)}

    torn = next(p for p in photos if p["index"] not in decisions)
    with open(file, "ab") as f:  # as if killed in the middle of writing one more
        f.write(f"{torn['path']},{torn['split']},".encode())
    server, url, lines = start_server_command("review", run_dir, "--corrections", file)
    try:
        assert any("ignoring its last line, torn" in line for line in lines), "".join(lines)
        with httpx.Client(base_url=url, timeout=60) as client:
            review_login(client, lines)
            shown = client.get("/photos").json()["photos"]
            for index, decision in decisions.items():
                assert (shown[index]["decision"], shown[index]["label"]) == (
                    decision["decision"], saved[photos[index]["path"]].label)
            assert shown[torn["index"]]["decision"] is None
            assert client.post(f"/photos/{torn['index']}/decision", json={"decision": "keep"}).status_code == 200
            assert client.get("/").status_code == 200
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    assert server.returncode == 0
    assert len(read_corrections(file)) == len(decisions) + 1
    assert len(csv_rows(file)) == 1 + len(decisions) + 1  # the torn line was cut off before the new row


# The page, in Chromium.

def test_page_keeps_relabels_and_excludes_with_keys_and_clicks(browser, mislabelled_run, explainer, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from catsdogs.apps.review.app import create_app
    from catsdogs.apps.review.photos import read_run_photos

    run_dir, _ = mislabelled_run
    file = tmp_path / "corrections.csv"
    photos = read_run_photos(run_dir).photos
    with ServerThread(create_app(run_dir, read_run_photos(run_dir), explainer, file, TOKEN)) as url:
        wait = WebDriverWait(browser, 60)
        browser.get(f"{url}/?token={TOKEN}")  # as printed at start-up: the cookie lets the page in
        assert browser.current_url == f"{url}/"  # and the token is out of the address bar
        wait.until(lambda d: len(d.find_elements(By.CLASS_NAME, "review-item")) == len(photos))
        cards = browser.find_elements(By.CLASS_NAME, "review-item")
        keys = browser.find_element(By.ID, "keys").text
        assert "k keep" in keys and "x exclude" in keys and "1 label as cats" in keys and "2 label as dogs" in keys

        def current():
            return [int(c.get_attribute("data-index")) for c in cards if "current" in c.get_attribute("class")]

        def saved():
            return read_corrections(file) if file.exists() else {}

        assert current() == [0]
        gradcam = cards[0].find_element(By.CLASS_NAME, "gradcam")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", gradcam))
        assert photos[0].predicted in cards[0].find_element(By.CLASS_NAME, "gradcam-caption").text

        press = ActionChains(browser)
        press.send_keys("k").perform()  # keep the first
        wait.until(lambda d: photos[0].path in saved())
        assert saved()[photos[0].path] == Correction("keep", photos[0].given_label, photos[0].split)
        wait.until(lambda d: cards[0].get_attribute("data-decision") == "keep")
        assert cards[0].find_element(By.CSS_SELECTOR, "button.keep").get_attribute("aria-pressed") == "true"
        assert current() == [1]  # and on to the next
        press.send_keys(Keys.ARROW_LEFT).perform()
        assert current() == [0]
        press.send_keys("l").perform()
        assert current() == [1]

        index = 1
        new_label = OTHER[photos[index].given_label]
        press.send_keys(str(CLASSES.index(new_label) + 1)).perform()  # relabel by the class's number
        wait.until(lambda d: photos[index].path in saved())
        assert saved()[photos[index].path] == Correction("relabel", new_label, photos[index].split)
        wait.until(lambda d: f"Relabelled as {new_label}" in cards[index].text)

        test_index = next(i for i, p in enumerate(photos) if p.split == "test" and p.path not in saved())
        assert not cards[test_index].find_elements(By.CSS_SELECTOR, "button.exclude")  # no exclude for test photos
        cards[test_index].find_element(By.CLASS_NAME, "name").click()
        assert current() == [test_index]
        press.send_keys("x").perform()
        for message in (browser.find_element(By.ID, "status"), cards[test_index].find_element(By.CLASS_NAME, "message")):
            assert "never excluded from evaluation" in message.text and "error" in message.get_attribute("class")
        assert photos[test_index].path not in saved() and current() == [test_index]

        trainable = next(i for i, p in enumerate(photos) if p.split != "test" and p.path not in saved())
        exclude = cards[trainable].find_element(By.CSS_SELECTOR, "button.exclude")
        assert exclude.accessible_name == "Exclude from training"
        exclude.click()
        wait.until(lambda d: photos[trainable].path in saved())
        assert saved()[photos[trainable].path].decision == "exclude"
        wait.until(lambda d: f"{len(saved())} of {len(photos)} decided" in d.find_element(By.ID, "progress").text)

        browser.refresh()  # what the page shows comes from the server's decisions
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".review-item[data-decision]")) == len(saved()))
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
    assert os.path.getsize(file) > 0


def test_a_file_that_is_not_a_corrections_file_is_refused_before_the_model_loads(mislabelled_run, tmp_path, capsys,
                                                                                   monkeypatch):
    from catsdogs.apps.review import app
    from catsdogs.cli import main

    def load(*arguments):
        raise AssertionError("the model was loaded before the corrections file was checked")

    monkeypatch.setattr(app, "load", load)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\ncat.1.jpg,cats\n")
    assert main(["review", str(mislabelled_run[0]), "--corrections", str(labels)]) == 2
    assert f"{labels}: not a corrections file" in capsys.readouterr().err
    assert labels.read_text() == "path,label\ncat.1.jpg,cats\n"  # and nothing was written into it
