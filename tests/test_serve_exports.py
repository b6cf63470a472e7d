"""Serving exported models: the same page, API and answers as `catsdogs predict` gives with the export."""

import httpx
import pytest

import catsdogs
from catsdogs.apps.serve.app import create_app, load_served_model
from conftest import ServerThread, photo, serve_command, unknown_photo

FORMATS = ("onnx", "tflite", "savedmodel")


@pytest.fixture(scope="module")
def exports(lite0_exports):
    """The lite0 run exported in every format that runs outside Keras (conftest): format -> export folder."""
    return {fmt: lite0_exports[fmt, "float32"] for fmt in FORMATS}


def photos():
    return [photo("test", "cats", 4201), photo("test", "dogs", 4201), unknown_photo("cars", "00029.jpg")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_is_served_with_the_answers_predict_gives(exports, lite0_run, fmt):
    classifier, name, metrics = load_served_model(exports[fmt])
    assert name == "lite0" and metrics["accuracy"] == lite0_run[1]["accuracy"]  # from the run it came from
    expected = [p.to_dict() for p in catsdogs.load(exports[fmt]).predict(photos())]
    with ServerThread(create_app(classifier, name, metrics)) as url, httpx.Client(base_url=url, timeout=120) as client:
        assert client.get("/").status_code == 200 and "catsdogs" in client.get("/").text
        status = client.get("/v1/models/lite0").json()
        assert (status["format"], status["heatmaps"], status["classes"]) == (fmt, False, ["cats", "dogs"])
        response = client.post("/predict", files=[("files", (p.name, p.read_bytes())) for p in photos()])
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in expected] == ["cats", "dogs", "unknown"]
        for answer, want in zip(got, expected):  # float32 within 1e-4: the server may batch them otherwise
            assert answer["probabilities"] == pytest.approx(want["probabilities"], abs=1e-4)
            assert answer["in_distribution_score"] == pytest.approx(want["in_distribution_score"], abs=1e-4)
            assert answer["accepted"] == want["accepted"]
        heatmap = client.post("/predict", params={"heatmap": "true"},
                              files={"files": ("cat.jpg", photos()[0].read_bytes())})
        assert heatmap.status_code == 400
        assert "needs the Keras model" in heatmap.json()["error"] and f"{fmt} export" in heatmap.json()["error"]


def test_the_serve_command_serves_an_export_folder(exports):
    with serve_command(exports["onnx"], "--name", "pets") as (url, _):
        status = httpx.get(f"{url}/v1/models/pets", timeout=30).json()
        assert status["format"] == "onnx"
        answer = httpx.post(f"{url}/predict", timeout=120,
                            files={"files": ("dog.jpg", photo("test", "dogs", 4201).read_bytes())}).json()
        assert answer["predictions"][0]["label"] == "dogs"
