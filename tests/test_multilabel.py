"""Multi-label classification: tables of label sets, a head and a threshold per label, metrics, and every output
path (predict's table, JSON and CSV, the API, ONNX exports, evaluate, review, `catsdogs runs`) answering sets."""

import csv
import json
import os

import httpx
import numpy as np
import pytest

import catsdogs
from catsdogs.cli import main
from catsdogs.config.train import TrainConfig
from catsdogs.data import corrections, labels
from catsdogs.data.dataset import Sample
from catsdogs.errors import ConfigError, DataError
from catsdogs.evaluation.metrics import format_metrics
from catsdogs.models import multilabel
from conftest import ServerThread

SEPARATOR = ";"


def write_table(path, rows, header=("path", "label", "split")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def photos_in(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")  # the table is read before any photo is
    return folder


# Tables of label sets.

def test_label_sets_come_from_cells_or_from_rows_and_an_empty_cell_is_no_label(tmp_path):
    data = photos_in(tmp_path / "photos", [f"{n}.jpg" for n in "abcdef"])
    table = write_table(tmp_path / "labels.csv", [
        ("a.jpg", "cats;dogs", ""), ("b.jpg", "cats", ""), ("b.jpg", "dogs", ""),  # two cells, or one row per label
        ("c.jpg", " dogs ; ", ""), ("d.jpg", "", ""), ("e.jpg", "cats", ""), ("f.jpg", "cats;cats", "test")])
    dataset = labels.table_dataset(data, str(table), label_separator=SEPARATOR)
    assert dataset.multi_label and dataset.class_names == ["cats", "dogs"]
    found = {os.path.basename(s.path): s.label for samples in dataset.splits.values() for s in samples}
    assert found == {"a.jpg": (0, 1), "b.jpg": (0, 1), "c.jpg": (1,), "d.jpg": (), "e.jpg": (0,), "f.jpg": (0,)}
    # Read as one label a photo, a photo listed with two says how to ask for several.
    with pytest.raises(DataError, match="listed twice with different labels.*train with --multi-label"):
        labels.table_dataset(data, str(write_table(tmp_path / "two.csv", [("b.jpg", "cats"), ("b.jpg", "dogs"),
                                                                          ("e.jpg", "cats")], ("path", "label"))))


@pytest.mark.parametrize("rows, message", [
    ([("a.jpg", "cats", "train"), ("a.jpg", "dogs", "test"), ("b.jpg", "cats;dogs", "")],
     "listed twice with different splits: labels.csv line 2, labels.csv line 3"),
    ([("a.jpg", "cats;dogs", ""), ("b.jpg", "cats;dgos", ""), ("c.jpg", "dogs", "")],
     "appear only once (a class needs photos to train and to check on; a typo?) 'dgos', in: labels.csv line 3"),
    ([("a.jpg", "cats", ""), ("b.jpg", "cats", ""), ("c.jpg", "", "")], "needs at least two labels; it has ['cats']"),
])
def test_a_multi_label_table_that_cannot_be_meant_is_an_error_naming_its_rows(tmp_path, rows, message):
    data = photos_in(tmp_path / "photos", ["a.jpg", "b.jpg", "c.jpg"])
    with pytest.raises(DataError) as error:
        labels.table_dataset(data, str(write_table(tmp_path / "labels.csv", rows)), label_separator=SEPARATOR)
    assert message in str(error.value)


def test_multi_label_needs_a_table_and_the_linear_head(tmp_path):
    with pytest.raises(DataError, match="multi-label photos need a labels table"):
        labels.load_dataset(photos_in(tmp_path / "cats", ["a.jpg"]).parent, label_separator=SEPARATOR)
    with pytest.raises(ConfigError, match="one logistic regression per label"):
        TrainConfig(data_dir=str(tmp_path), multi_label=True, fine_tune=True).check()


def test_a_relabel_of_a_multi_label_photo_is_its_new_label_set(tmp_path):
    check = corrections.check_decision
    assert check("train", "cats", "relabel", "dogs;cats", ["cats", "dogs"], SEPARATOR) == "cats;dogs"  # a label added
    assert check("train", "cats;dogs", "relabel", "", ["cats", "dogs"], SEPARATOR) == ""  # every label removed
    with pytest.raises(DataError, match="those are the photo's labels already"):
        check("train", "cats;dogs", "relabel", "dogs;cats", ["cats", "dogs"], SEPARATOR)
    with pytest.raises(DataError, match="'birds': not labels of this model"):
        check("train", "cats", "relabel", "cats;birds", ["cats", "dogs"], SEPARATOR)
    file = tmp_path / "corrections.csv"
    corrections.append_decision(file, "a.jpg", "train", "cats", "relabel", ["cats", "dogs"], "cats;dogs", SEPARATOR)
    corrections.append_decision(file, "b.jpg", "val", "cats;dogs", "relabel", ["cats", "dogs"], "dogs", SEPARATOR)
    splits = {"train": [Sample(str(tmp_path / "a.jpg"), (0,))], "val": [Sample(str(tmp_path / "b.jpg"), (0, 1))]}
    applied = corrections.apply_listed(splits, ["cats", "dogs"], str(tmp_path), str(file), label_separator=SEPARATOR)
    assert [s.label for s in applied["train"]] == [(0, 1)] and [s.label for s in applied["val"]] == [(1,)]


# The decisions, on arrays.

def test_the_f1_threshold_lies_midway_between_the_photos_either_side_of_the_best_cut():
    present = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    scores = np.array([0.05, 0.10, 0.30, 0.70, 0.80, 0.90, 0.60, 0.20])
    # Best F1 (6/7) keeps the 0.6 negative out and lets the 0.2 positive go: any cut in (0.6, 0.7] does.
    assert multilabel.best_f1_threshold(scores, present) == pytest.approx(0.65)
    thresholds = multilabel.choose_thresholds(np.stack([scores, 1 - scores], 1), np.stack([present, 1 - present], 1),
                                              ["cats", "dogs"], [("recall", 0, 1.0)])
    assert thresholds[0] == pytest.approx(0.2)  # the target's: every cat kept
    assert thresholds[1] == pytest.approx(multilabel.best_f1_threshold(1 - scores, 1 - present))
    with pytest.raises(ConfigError, match="precision >= 1.0 for the label 'cats'"):
        multilabel.choose_thresholds(np.stack([1 - scores, scores], 1), np.stack([present, 1 - present], 1),
                                     ["cats", "dogs"], [("precision", 0, 1.0)])


def test_a_temperature_is_fitted_per_label():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (4000, 2))
    truth = np.stack([1 / (1 + np.exp(-logits[:, 0])), 1 / (1 + np.exp(-logits[:, 1] / 3))], axis=1)
    present = (rng.random(truth.shape) < truth).astype(int)  # label 0 calibrated, label 1 three times too sure
    temperatures = multilabel.fit_temperatures(logits, present)
    assert temperatures[0] == pytest.approx(1, abs=0.15) and temperatures[1] == pytest.approx(3, abs=0.4)


def test_a_rejected_photo_has_no_labels_and_says_unknown_while_an_empty_set_is_accepted():
    from catsdogs.inference.classifier import decide
    from catsdogs.models.model import ModelInfo

    info = ModelInfo(["cats", "dogs"], "efficientnet_lite0", 128, None, None, 0.5, ["knn"], thresholds=[0.5, 0.3],
                     temperatures=[1.0, 1.0], label_separator=SEPARATOR)
    outputs = {"probabilities": np.array([[0.9, 0.4], [0.1, 0.2], [0.6, 0.9]]),
               "in_distribution_score": np.array([0.8, 0.8, 0.1])}
    both, none, rejected = decide(info, outputs)
    assert both["labels"] == ["cats", "dogs"] and "label" not in both and both["accepted"]
    assert none["labels"] == [] and none["accepted"]  # none of the labels applies: a valid answer
    assert rejected == {**rejected, "labels": [], "label": "unknown", "accepted": False}
    assert decide(info, outputs, reject=False)[2]["labels"] == ["dogs", "cats"]  # most probable first


def test_softmax_open_set_scores_are_refused_for_independent_labels():
    from catsdogs.models.openset import resolve_methods

    assert resolve_methods("auto", "efficientnet_lite0", "imagenet", ["cats", "dogs"], True) == ("knn", "imagenet")
    with pytest.raises(ConfigError, match="msp reads a softmax"):
        resolve_methods("knn+msp", "efficientnet_lite0", "imagenet", ["cats", "dogs"], True)


# A real run on collages of the shared photos (conftest.multilabel_run).

def test_a_multi_label_run_chooses_a_threshold_per_label_on_validation_and_reports_every_metric(multilabel_run):
    run_dir, run, data = multilabel_run
    info = run.classifier.info
    assert info.multi_label and info.class_names == ["cats", "dogs"] and info.label_separator == SEPARATOR
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["multi_label"] and metrics["thresholds"] == pytest.approx(info.thresholds)
    assert metrics["mAP"] > 0.9 and metrics["images"] == 14
    for name in ("cats", "dogs"):
        row = metrics["per_class"][name]
        assert {"average_precision", "precision", "recall", "f1", "threshold", "support"} <= set(row)
    assert {"exact_match_ratio", "hamming_loss", "micro_avg", "macro_avg", "log_loss", "ece"} <= set(metrics)
    assert metrics["accuracy"] == metrics["exact_match_ratio"]
    assert len(metrics["calibration"]["temperature"]) == 2
    # Each threshold is the best F1 of its label on the validation photos, as the model predicts them.
    val = run.splits["val"]
    predictions = run.classifier.predict([s.path for s in val], reject=False)
    probabilities = np.array([[p.probabilities[name] for name in info.class_names] for p in predictions])
    truth = multilabel.indicator_matrix([s.label for s in val], 2)
    assert info.thresholds == pytest.approx(multilabel.choose_thresholds(probabilities, truth, info.class_names),
                                            abs=1e-4)
    # The files of a run: the label sets in splits.csv and predictions.csv, the report, a precision-recall figure.
    splits = {row["path"]: row["label"] for row in csv.DictReader(open(run_dir / "splits.csv"))}
    assert {splits[p] for p in splits if p.startswith("train/cats-dogs")} == {"cats;dogs"}
    assert {splits[p] for p in splits if p.startswith("neither/")} == {""}
    predicted = list(csv.DictReader(open(run_dir / "predictions.csv")))
    assert {row["true"] for row in predicted} == {"cats", "dogs", "cats;dogs", ""}
    assert (run_dir / "precision_recall.png").exists() and not (run_dir / "confusion.png").exists()
    report = (run_dir / "report.html").read_text()
    assert "mAP" in report and "Hamming loss" in report and "Temperature of each label" in report
    text = format_metrics(metrics)
    assert "mAP" in text and "exact match" in text and "Hamming loss" in text


def test_predict_answers_label_sets_in_its_table_json_and_csv(multilabel_run, tmp_path, capsys):
    run_dir, run, data = multilabel_run
    rows = {os.path.relpath(row["path"], data): row for row in run.evaluation.rows}
    chosen = ["test/cats-dogs-00000.jpg", "test/cats-cats-00000.jpg", "test/dogs-dogs-00000.jpg"]
    paths = [str(data / name) for name in chosen]
    assert main(["predict", str(run_dir), *paths, "--json", "--no-reject"]) == 0
    answers = json.loads(capsys.readouterr().out)
    for name, answer in zip(chosen, answers):
        assert "label" not in answer and "probability" not in answer
        assert answer["labels"] == sorted(rows[name]["predicted"].split(SEPARATOR) if rows[name]["predicted"] else [],
                                          key=lambda label: -answer["probabilities"][label])
    assert main(["predict", str(run_dir), *paths, "--csv", str(tmp_path / "p.csv"), "--no-reject"]) == 0
    capsys.readouterr()
    table = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [row["labels"] for row in table] == [SEPARATOR.join(a["labels"]) for a in answers]
    assert main(["predict", str(run_dir), *paths, "--no-reject"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-2:] == ["labels", "probabilities"]
    assert ", ".join(answers[0]["labels"]) in lines[1] and "cats 0." in lines[1] and "dogs 0." in lines[1]


def test_the_api_answers_label_sets(multilabel_run):
    import base64

    from catsdogs.apps.serve.app import create_app, load_served_model

    run_dir, run, data = multilabel_run
    app = create_app(*load_served_model(run_dir))
    both = (data / "test" / "cats-dogs-00001.jpg").read_bytes()
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        status = client.get("/v1/models/multilabel").json()
        assert status["multi_label"] and status["thresholds"] == pytest.approx(
            dict(zip(["cats", "dogs"], run.classifier.info.thresholds)))
        served = client.post("/predict?reject=false",  # TF Serving's JSON, catsdogs' labelled answer
                             json={"instances": [{"b64": base64.b64encode(both).decode()}]}).json()["predictions"][0]
        uploaded = client.post("/predict?reject=false&heatmap=true", files={"files": ("both.jpg", both)}).json()
    expected = run.classifier.predict(data / "test" / "cats-dogs-00001.jpg", reject=False)[0]
    for answer in (served, uploaded["predictions"][0]):
        assert answer["labels"] == expected.labels and "label" not in answer
        assert answer["probabilities"] == pytest.approx(expected.probabilities, abs=1e-4)
    assert uploaded["predictions"][0]["heatmap_png"]  # Grad-CAM of the most probable label


def test_an_onnx_export_answers_the_same_label_sets(multilabel_run):
    from catsdogs.engine.export import export_model

    pytest.importorskip("onnxruntime")
    run_dir, run, data = multilabel_run
    folder, parity = export_model(run_dir, "onnx", parity_images=0, batch_size=8)
    assert parity["agreement"] == 1.0 and parity["max_abs_probability_difference"] < 1e-4
    exported = catsdogs.load(folder)
    assert exported.info.multi_label and exported.info.thresholds == pytest.approx(run.classifier.info.thresholds)
    paths = [data / "test" / name for name in ("cats-dogs-00002.jpg", "dogs-dogs-00002.jpg")]
    assert [p.labels for p in exported.predict(paths)] == [p.labels for p in run.classifier.predict(paths)]


def test_evaluate_reads_the_label_sets_of_a_table_and_agrees_with_training(multilabel_run):
    run_dir, run, data = multilabel_run
    evaluation = catsdogs.evaluate(run_dir, data, labels=str(data / "labels.csv"))
    assert evaluation.metrics["mAP"] == pytest.approx(run.metrics["mAP"], abs=1e-6)
    assert evaluation.metrics["exact_match_ratio"] == run.metrics["exact_match_ratio"]


def test_review_adds_and_removes_labels_and_catsdogs_runs_lists_the_run(multilabel_run, tmp_path):
    from fastapi.testclient import TestClient

    from catsdogs.apps.review.app import create_app
    from catsdogs.apps.review.photos import Photo, RunPhotos, read_run_photos
    from catsdogs.engine.compare import compare_runs
    from catsdogs.store.runs import list_runs

    run_dir, run, data = multilabel_run
    explainer = catsdogs.load(run_dir, "keras").explainer()
    file = tmp_path / "corrections.csv"
    # One training photo of two cats to review, whatever the run got wrong.
    row = next(r for r in csv.DictReader(open(run_dir / "review.csv")) if r["true"] == "cats" and r["split"] == "train")
    listed = read_run_photos(run_dir)
    photos = RunPhotos(listed.data_dir, [Photo(row["path"], "train", "cats", row["predicted"], float(row["probability"]),
                                               float(row["loss"]), False, False)], listed.source)
    app = create_app(run_dir, photos, explainer, file, "token")
    client = TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": "Bearer token"})
    listing = client.get("/photos").json()
    assert listing["label_separator"] == SEPARATOR
    photo_state = listing["photos"][0]
    assert photo_state["given_label"] == "cats" and photo_state["explained"] in ("cats", "dogs")
    added = client.post(f"/photos/{photo_state['index']}/decision", json={"decision": "relabel", "label": "dogs;cats"})
    assert added.status_code == 200 and added.json()["label"] == "cats;dogs"
    refused = client.post(f"/photos/{photo_state['index']}/decision", json={"decision": "relabel", "label": "birds"})
    assert refused.status_code == 400 and "not labels of this model" in refused.json()["error"]
    assert client.get(f"/photos/{photo_state['index']}/gradcam.png").headers["content-type"] == "image/png"
    assert corrections.read_corrections(file)[photo_state["path"]].label == "cats;dogs"
    listed = next(row for row in list_runs(run_dir.parent) if row["name"] == "multilabel")
    assert listed["accuracy"] == run.metrics["exact_match_ratio"]
    comparison = compare_runs(run_dir, run_dir)
    assert any(row["metric"] == "mAP" and row["a"] == run.metrics["mAP"] for row in comparison["metrics"])


# The pages, in a real headless Chromium.

def test_the_page_shows_a_set_of_labels(browser, multilabel_run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from catsdogs.apps.serve.app import create_app, load_served_model

    run_dir, run, data = multilabel_run
    both = data / "test" / "cats-dogs-00003.jpg"
    expected = run.classifier.predict(both)[0]
    with ServerThread(create_app(*load_served_model(run_dir))) as url:
        wait = WebDriverWait(browser, 60)
        browser.get(url + "/")
        wait.until(lambda d: "labels (any number a photo) cats, dogs" in d.find_element(By.ID, "model-info").text)
        assert "test mAP" in browser.find_element(By.ID, "model-info").text
        browser.find_element(By.ID, "file-input").send_keys(str(both))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '.card:not([data-state="pending"])'))
        card = browser.find_element(By.CLASS_NAME, "card")
        shown = card.find_element(By.CLASS_NAME, "label").text
        if expected.accepted is False:
            assert shown.startswith("Neither a cat nor a dog")
        elif expected.labels:
            assert shown.split(" + ")[0].startswith(expected.labels[0])
            assert len(shown.split(" + ")) == len(expected.labels)
        else:
            assert shown == "No label applies (cats, dogs)"
        predicted = [bar.find_element(By.CLASS_NAME, "class").text
                     for bar in card.find_elements(By.CSS_SELECTOR, ".bar-row.predicted")]
        assert predicted == [name for name in run.classifier.classes if name in expected.labels]
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors


def test_the_review_page_adds_and_removes_a_label_with_a_key_and_a_click(browser, multilabel_run, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from catsdogs.apps.review.app import create_app
    from catsdogs.apps.review.photos import Photo, RunPhotos, read_run_photos

    run_dir, run, data = multilabel_run
    row = next(r for r in csv.DictReader(open(run_dir / "review.csv")) if r["true"] == "cats" and r["split"] == "train")
    listed = read_run_photos(run_dir)
    photos = RunPhotos(listed.data_dir, [Photo(row["path"], "train", "cats", row["predicted"], float(row["probability"]),
                                               float(row["loss"]), False, False)], listed.source)
    file = tmp_path / "corrections.csv"

    def saved():
        return corrections.read_corrections(file).get(row["path"]) if file.exists() else None

    app = create_app(run_dir, photos, catsdogs.load(run_dir, "keras").explainer(), file, "token")
    with ServerThread(app) as url:
        wait = WebDriverWait(browser, 60)
        browser.get(f"{url}/?token=token")
        wait.until(lambda d: d.find_elements(By.CLASS_NAME, "review-item"))
        card = browser.find_element(By.CLASS_NAME, "review-item")
        assert "2 add or remove dogs" in browser.find_element(By.ID, "keys").text
        dogs = card.find_element(By.CSS_SELECTOR, 'button[data-label="dogs"]')
        assert dogs.accessible_name == "Add dogs"
        ActionChains(browser).send_keys("2").perform()  # dogs added by its number
        wait.until(lambda d: saved() is not None)
        assert saved() == corrections.Correction("relabel", "cats;dogs", "train")
        wait.until(lambda d: dogs.accessible_name == "Remove dogs")
        assert "Relabelled as cats, dogs" in card.text and "current" in card.get_attribute("class")  # stays on it
        card.find_element(By.CSS_SELECTOR, 'button[data-label="cats"]').click()  # cats removed
        wait.until(lambda d: saved().label == "dogs")
        dogs.click()  # and dogs: no label at all
        wait.until(lambda d: saved().label == "")
        wait.until(lambda d: "Relabelled as no label" in card.text)
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
