"""Answers explained by example: the training photos most similar to a photo, from `predict --similar`, the
API, the web page, the review page and the report, and refusals that say what to do."""

import csv
import io
import json
import os
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

import catsdogs
from catsdogs.cli import main
from catsdogs.utils.csvfiles import read_csv
from conftest import link_photos, photo


def cat_and_dog():
    return photo("test", "cats", 4150), photo("test", "dogs", 4150)


def bank_rows(run_dir):
    """similar.csv: the photos of the model's kNN bank, in its order."""
    return read_csv(run_dir / "similar.csv")


def splits(run_dir):
    """path -> (split, label) of every photo of the run."""
    return {row["path"]: (row["split"], row["label"]) for row in read_csv(run_dir / "splits.csv")}


def majority(labels):
    return max(set(labels), key=labels.count)


def test_the_run_names_every_training_photo_of_its_knn_bank(lite0_run):
    run_dir, _, _ = lite0_run
    trained = {path for path, (split, _) in splits(run_dir).items() if split == "train"}
    rows = bank_rows(run_dir)
    assert {row["path"] for row in rows} == trained and len(rows) == len(trained)  # under MAX_BANK: all of them
    assert all(row["label"] == splits(run_dir)[row["path"]][1] for row in rows)


def test_predict_similar_gives_training_photos_most_similar_first(lite0_run, capsys):
    run_dir, _, data = lite0_run
    in_bank = bank_rows(run_dir)[7]
    trained = data / in_bank["path"]
    assert main(["predict", str(run_dir), *map(str, cat_and_dog()), str(trained), "--similar", "5", "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    labelled = splits(run_dir)
    for answer in answers:
        similar = answer["similar"]
        assert len(similar) == 5
        similarities = [photo["similarity"] for photo in similar]
        assert similarities == sorted(similarities, reverse=True) and -1 <= min(similarities) <= max(similarities) <= 1
        for photo_ in similar:
            assert labelled[photo_["path"]] == ("train", photo_["label"])  # a training photo, with its label
            assert photo_["file"] == str(data / photo_["path"]) and os.path.isfile(photo_["file"])
    cat, dog, itself = answers
    assert majority([p["label"] for p in cat["similar"]]) == "cats"
    assert majority([p["label"] for p in dog["similar"]]) == "dogs"
    # A training photo finds itself first, with its own features: the bank's rows name the right photos.
    assert itself["similar"][0]["path"] == in_bank["path"]
    assert itself["similar"][0]["similarity"] == pytest.approx(1, abs=1e-3)
    assert itself["similar"][1]["similarity"] < itself["similar"][0]["similarity"]


def test_predict_similar_as_a_table_and_as_csv(lite0_run, tmp_path, capsys):
    run_dir, (cat, _) = str(lite0_run[0]), cat_and_dog()
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    assert main(["predict", run_dir, str(cat), str(notes), "--similar", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(str(cat)) and "ERROR" in lines[4]
    for line in lines[2:4]:  # one line per similar photo, under its photo
        similarity, _, path = line.split()[1:]
        assert line.startswith("    similar ") and 0 < float(similarity) <= 1 and path.endswith(".jpg")
    table = tmp_path / "predictions.csv"
    assert main(["predict", run_dir, str(cat), str(notes), "--similar", "2", "--csv", str(table)]) == 0
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [f"similar_{i}_{key}" for i in (1, 2) for key in ("path", "label", "similarity")]
    assert all(column in rows[0] for column in columns)
    assert rows[0]["similar_1_path"].endswith(".jpg") and rows[0]["similar_2_label"] in ("cats", "dogs")
    assert all(rows[1][column] == "" for column in columns)  # the error row has the same columns, empty


def test_similar_photos_are_refused_with_what_to_do(lite0_run, tmp_path, capsys):
    from catsdogs.errors import UnsupportedError
    from catsdogs.inference.classifier import Classifier
    from catsdogs.inference.model_formats import KerasModel
    from catsdogs.models import backbones, heads
    from catsdogs.models import model as model_lib

    run_dir, (cat, _) = lite0_run[0], cat_and_dog()
    alone = tmp_path / "alone.keras"  # the model file away from its run directory
    shutil.copy(run_dir / "model.keras", alone)
    assert main(["predict", str(alone), str(cat), "--similar", "3"]) == 2
    error = capsys.readouterr().err
    assert "similar.csv" in error and "load the run directory" in error
    assert main(["predict", str(run_dir), str(cat), "--similar", "21"]) == 2
    assert "expected 1 to 20" in capsys.readouterr().err
    assert main(["predict", str(run_dir), str(cat), "--similar", "3", "--engine", "ray", "--output", "out"]) == 2
    assert "--similar is for predictions printed or written here" in capsys.readouterr().err

    # A model whose open-set score keeps no training features (--open-set none): assembled, not trained.
    extractor = backbones.build_feature_extractor("efficientnet_lite0", "random", 96)
    model = model_lib.assemble(extractor, heads.build_head(extractor.output_shape[-1], 2), ["cats", "dogs"])
    with pytest.raises(UnsupportedError, match="its open-set score is none.*--open-set auto"):
        Classifier(KerasModel(model)).predict([cat], similar=3)


def test_a_similar_csv_naming_a_photo_outside_the_data_folder_names_it_without_reading_it(tmp_path):
    from catsdogs.inference.similar import TrainingPhotos

    (tmp_path / "data").mkdir()
    photos = TrainingPhotos(["cats/a.jpg", "../secret.jpg", "/etc/passwd"], ["cats"] * 3, str(tmp_path / "data"))
    assert photos.file(0) == str(tmp_path / "data" / "cats" / "a.jpg")
    assert photos.file(1) is None and photos.file(2) is None
    similar = photos.similar([1, 0], [0.9, 0.8])
    assert [(p.row, p.path, p.file) for p in similar] == [(1, "../secret.jpg", None),
                                                           (0, "cats/a.jpg", str(tmp_path / "data/cats/a.jpg"))]
    assert TrainingPhotos(["cats/a.jpg"], ["cats"]).file(0) is None  # the data folder is not reachable


def test_evaluate_and_the_report_show_the_training_photos_most_similar_to_mistakes(lite0_run, tmp_path):
    from catsdogs.evaluation.evaluate import Evaluation

    run_dir, _, _ = lite0_run
    data = tmp_path / "data"
    link_photos(data / "cats", "test", "cats", (4150, 4151))
    link_photos(data / "dogs", "test", "dogs", (4150, 4151))
    classifier = catsdogs.load(run_dir)
    evaluation = catsdogs.evaluate(classifier, data)
    assert len(evaluation.similar) == 4 and all(len(similar) == 5 for similar in evaluation.similar)
    first = classifier.predict([evaluation.paths[0]], similar=5)[0].similar
    assert [p.row for p in evaluation.similar[0]] == [p.row for p in first]

    # Every photo given the other label: four mistakes, each shown beside its most similar training photos.
    swapped = Evaluation(evaluation.paths, 1 - evaluation.y_true, evaluation.probabilities, evaluation.class_names,
                         data_dir=str(data), classifier=classifier, similar=evaluation.similar)
    swapped.save(tmp_path / "report")
    assert (tmp_path / "report" / "similar.png").stat().st_size > 10_000
    report = (tmp_path / "report" / "report.html").read_text()
    assert "The training photos most similar to the most confident mistakes" in report
    assert "most similar training photos</th>" in report
    first = swapped.mistakes()[0]["similar"][0]
    assert f"{first.label} {first.similarity:.2f}</span>" in report


def test_the_api_names_similar_training_photos_and_serves_them(lite0_server, lite0_run):
    url, _ = lite0_server
    bank, (cat, _) = bank_rows(lite0_run[0]), cat_and_dog()
    with httpx.Client(base_url=url, timeout=120) as client:
        assert client.get("/v1/models/lite0").json()["similar"] == 20
        files = {"files": ("cat.jpg", cat.read_bytes())}
        answer = client.post("/predict", params={"similar": 3}, files=files)
        assert answer.status_code == 200, answer.text
        similar = answer.json()["predictions"][0]["similar"]
        assert len(similar) == 3 and majority([p["label"] for p in similar]) == "cats"
        assert [bank[p["row"]]["path"] for p in similar] == [p["path"] for p in similar]
        expected = [p.row for p in catsdogs.load(lite0_run[0]).predict([cat], similar=3)[0].similar]
        assert [p["row"] for p in similar] == expected  # what `catsdogs predict --similar` names
        thumbnail = client.get(similar[0]["photo_url"])
        assert thumbnail.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 160
        assert "similar" not in client.post("/predict", files=files).json()["predictions"][0]
        assert client.post("/predict", params={"similar": 21}, files=files).status_code == 400
        missing = client.get(f"/training-photos/{len(bank)}.jpg")
        assert missing.status_code == 404 and f"keeps {len(bank)}" in missing.json()["error"]


def test_training_photos_need_the_api_key_where_the_server_has_one(lite0_run):
    from fastapi.testclient import TestClient

    from catsdogs.apps.serve.app import create_app, load_served_model
    from catsdogs.config.serve import ServeSettings

    classifier, name, metrics = load_served_model(lite0_run[0])
    client = TestClient(create_app(classifier, name, metrics, ServeSettings(api_key="a-key")),
                        base_url="http://127.0.0.1")  # no lifespan: nothing here needs the batcher
    assert client.get("/training-photos/0.jpg").status_code == 401
    answer = client.get("/training-photos/0.jpg", headers={"X-API-Key": "a-key"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"


def test_the_review_page_lists_the_training_photos_most_similar_to_a_photo_but_itself(lite0_run, tmp_path):
    from fastapi.testclient import TestClient

    from catsdogs.apps.review.app import create_app
    from catsdogs.apps.review.photos import read_run_photos

    run_dir = lite0_run[0]
    classifier = catsdogs.load(run_dir, "keras")
    photos = read_run_photos(run_dir, 10)
    app = create_app(run_dir, photos, classifier.explainer(), tmp_path / "c.csv", "token", classifier=classifier)
    client = TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": "Bearer token"})
    assert client.get("/photos").json()["similar"] is True  # the page asks for them
    trained = next(i for i, p in enumerate(photos.photos) if p.split == "train")
    similar = client.get(f"/photos/{trained}/similar").json()
    assert len(similar) == 5 and photos.photos[trained].path not in [p["path"] for p in similar]
    assert all(splits(run_dir)[p["path"]][0] == "train" for p in similar)
    thumbnail = client.get(similar[0]["photo_url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert client.get("/training-photos/0.jpg", headers={"Authorization": ""}).status_code == 403  # the token


def test_the_page_shows_the_most_similar_training_photos(browser, lite0_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = lite0_server
    browser.get(url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "efficientnet_lite0" in d.find_element(By.ID, "model-info").text)
    browser.find_element(By.ID, "file-input").send_keys(str(cat_and_dog()[1]))
    card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '.card[data-state="done"]'))
    thumbnails = wait.until(lambda d: [image for image in card.find_elements(By.CSS_SELECTOR, ".similar img")
                                       if d.execute_script("return arguments[0].naturalWidth", image)] or None)
    assert len(thumbnails) == 5 and card.find_element(By.CLASS_NAME, "similar").is_displayed()
    captions = [item.text for item in card.find_elements(By.CSS_SELECTOR, ".similar li")]
    assert majority([caption.split()[0] for caption in captions]) == "dogs"
    assert np.all([float(caption.split()[1]) <= 1 for caption in captions])
