"""The HTTP service, started for real on a loopback port and used over HTTP."""

import base64
import concurrent.futures
import io
import json
import os
import re
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

import catsdogs
from catsdogs.apps.serve.app import Job, Predictor, Result
from catsdogs.cli import main
from catsdogs.data.images import load_image
from catsdogs.errors import ImageError
from conftest import gradient, image_bytes, photo, serve_command
from corpus import tiny_instances_json

CAT, DOG = ("test", "cats", 4200), ("test", "dogs", 4200)


def b64(data):
    return base64.b64encode(data).decode()


def instances(*files):
    return {"instances": [{"b64": b64(data)} for data in files]}


@pytest.fixture(scope="module")
def client(lite0_server):
    url, _ = lite0_server
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


def test_health_and_model_status(client, lite0_run):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"] == "lite0"
    assert health["batching"]["max_batch_size"] == 8
    assert health["process_id"] == os.getpid()  # the server runs in a thread of this process
    status = client.get("/v1/models/lite0").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"  # what TF Serving clients poll
    assert (status["name"], status["classes"], status["backbone"], status["input_size"]) == (
        "lite0", ["cats", "dogs"], "efficientnet_lite0", [380, 380, 3])
    assert status["metrics"]["accuracy"] == lite0_run[1]["accuracy"]
    assert status["format"] == "keras" and status["heatmaps"] is True
    missing = client.get("/v1/models/other")
    assert missing.status_code == 404 and "'other' not found" in missing.json()["error"]


def test_tf_serving_predict_answers_the_output_tensors_as_catsdogs_predict_computes_them(client, lite0_run):
    cat, dog = photo(*CAT), photo(*DOG)
    response = client.post("/v1/models/lite0:predict", json=instances(cat.read_bytes(), dog.read_bytes()))
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [set(p) for p in predictions] == [{"probabilities", "in_distribution_score"}] * 2  # tensors by name
    expected = catsdogs.load(lite0_run[0]).predict([cat, dog])
    for got, want in zip(predictions, expected):
        assert got["probabilities"] == pytest.approx([want.probabilities["cats"], want.probabilities["dogs"]], abs=1e-4)
        assert got["in_distribution_score"] == pytest.approx(want.in_distribution_score, abs=1e-4)


def test_the_labelled_answer_takes_tf_servings_json_at_predict(client, lite0_run):
    cat, dog = photo(*CAT), photo(*DOG)
    response = client.post("/predict", json=instances(cat.read_bytes(), dog.read_bytes()))
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["cats", "dogs"]
    expected = [p.to_dict() for p in catsdogs.load(lite0_run[0]).predict([cat, dog])]
    for got, want in zip(predictions, expected):
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-4)
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-4)
        assert "heatmap_png" not in got  # only on request
    columnar = client.post("/predict", json={"inputs": [{"b64": b64(dog.read_bytes())}]}).json()["predictions"]
    assert columnar[0]["label"] == "dogs"


def test_a_car_is_unknown_over_the_api_unless_rejection_is_off(client, lite0_run):
    from conftest import unknown_photo

    car, cat = unknown_photo("cars", "00029.jpg"), photo(*CAT)
    body = instances(car.read_bytes(), cat.read_bytes())
    predictions = client.post("/predict", json=body).json()["predictions"]
    assert [p["label"] for p in predictions] == ["unknown", "cats"]
    assert [p["accepted"] for p in predictions] == [False, True]
    expected = [p.to_dict() for p in catsdogs.load(lite0_run[0]).predict([car, cat])]
    for got, want in zip(predictions, expected):  # the server decides as catsdogs predict does
        assert got["in_distribution_score"] == pytest.approx(want["in_distribution_score"], abs=1e-4)
    assert set(predictions[0]["probabilities"]) == {"cats", "dogs"}
    lenient = client.post("/predict?reject=false", json=body).json()["predictions"]
    assert lenient[0]["label"] in ("cats", "dogs")
    strict = client.post("/predict?reject_threshold=1", json=body).json()["predictions"]
    assert [p["label"] for p in strict] == ["unknown", "unknown"]
    status = client.get("/v1/models/lite0").json()
    assert status["reject_threshold"] == pytest.approx(catsdogs.load(lite0_run[0]).info.reject_threshold)


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "application/x-www-form-urlencoded"}],
                         ids=["no content type", "curl -d"])
def test_tf_serving_clients_that_send_json_without_saying_so_work(client, headers):
    # TF Serving reads JSON whatever the content type; its documented curl examples use `curl -d`.
    body = json.dumps(instances(photo(*DOG).read_bytes()))
    response = client.post("/v1/models/lite0:predict", content=body, headers=headers)
    assert response.status_code == 200 and response.json()["predictions"][0]["probabilities"][1] > 0.5  # a dog


def test_multipart_upload_with_heatmaps(client):
    cat, dog = photo(*CAT), photo(*DOG)
    files = [("files", (cat.name, cat.read_bytes(), "image/jpeg")), ("files", (dog.name, dog.read_bytes(), "image/jpeg"))]
    response = client.post("/predict", params={"heatmap": "true"}, files=files)
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == ["cats", "dogs"]
    for path, prediction in zip((cat, dog), predictions):
        assert prediction["probability"] > 0.5 and sum(prediction["probabilities"].values()) == pytest.approx(1)
        heatmap = Image.open(io.BytesIO(base64.b64decode(prediction["heatmap_png"])))
        height, width = load_image(path).shape[:2]
        assert heatmap.format == "PNG" and heatmap.mode == "RGBA" and max(heatmap.size) == 320
        assert heatmap.size[0] / heatmap.size[1] == pytest.approx(width / height, rel=0.02)
        alpha = np.asarray(heatmap)[..., 3]
        assert alpha.max() > alpha.min() + 50  # an actual map, not a flat tint


def test_heatmap_follows_the_animal(client):
    # The photo on one side of a grey canvas: the heatmap's weight must be on that side.
    pixels = load_image(photo(*DOG))
    height, width = pixels.shape[:2]
    canvas = np.full((height, 2 * width, 3), 128, np.uint8)
    canvas[:, :width] = pixels
    for image, side in ((canvas, "left"), (canvas[:, ::-1], "right")):
        response = client.post("/predict?heatmap=true", files={"files": ("canvas.png", image_bytes(np.ascontiguousarray(image), "PNG"))})
        prediction = response.json()["predictions"][0]
        assert prediction["label"] == "dogs"
        alpha = np.asarray(Image.open(io.BytesIO(base64.b64decode(prediction["heatmap_png"]))))[..., 3].astype(float)
        alpha -= alpha.min()
        half = alpha.shape[1] // 2
        left_share = alpha[:, :half].sum() / alpha.sum()
        assert (left_share if side == "left" else 1 - left_share) > 0.8


def test_concurrent_requests_share_a_forward_pass(client, lite0_server):
    _, app = lite0_server
    before = client.get("/healthz").json()["batching"]
    data = photo(*CAT).read_bytes()

    def one(_):
        return client.post("/predict", json=instances(data)).json()["predictions"][0]["label"]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        labels = list(pool.map(one, range(6)))
    after = client.get("/healthz").json()["batching"]
    assert labels == ["cats"] * 6
    assert after["images"] - before["images"] == 6
    assert after["batches"] - before["batches"] < 6
    assert after["largest_batch"] >= 2
    assert app.state.batcher.stats.items == after["images"]


def large_pixel_bomb():
    """A PNG of 81 megapixels in a few hundred kilobytes: a decompression bomb."""
    return image_bytes(Image.new("L", (9_000, 9_000)), "PNG", optimize=True)


def truncated_jpeg():
    return photo(*CAT).read_bytes()[:4000]


def multipart(name, data):
    return {"files": {"files": (name, data)}}


BAD_REQUESTS = {
    # id: (route, request arguments, status, words in the error)
    "not an image": ("/predict", multipart("notes.jpg", b"just some text"), 422, "notes.jpg: not an image"),
    "truncated image": ("/predict", {"files": {"files": ("half.jpg", None)}}, 422, "half.jpg: corrupt or truncated"),
    "empty file": ("/predict", multipart("zero.jpg", b""), 422, "zero.jpg: empty file"),
    "too many pixels": ("/predict", {"files": {"files": ("bomb.png", None)}}, 422, "too large: 9000x9000 pixels, limit 4000000"),
    "too many bytes (multipart)": ("/predict", multipart("big.jpg", b"\xff" * 2_100_000), 413, "request body too large"),
    "too many bytes (json)": ("/v1/models/lite0:predict", {"json": {"instances": [{"b64": "A" * 2_100_000}]}}, 413, "limit is 2000000 bytes"),
    "too many images": ("/predict", {"files": [("files", ("a.png", image_bytes(gradient(), "PNG")))] * 5}, 413, "5 images in one request; the limit is 4"),
    "empty multipart request": ("/predict", {"files": {"other": ("x", b"1")}}, 400, "files: Field required; send one or more images"),
    "empty request body": ("/v1/models/lite0:predict", {"content": b"", "headers": {"Content-Type": "application/json"}}, 400, "empty request body"),
    "no instances": ("/v1/models/lite0:predict", {"json": {"instances": []}}, 400, "no instances"),
    "image to the upload route": ("/predict", {"content": b"\xff\xd8", "headers": {"Content-Type": "image/jpeg"}}, 415, "expected Content-Type multipart/form-data or application/json, got image/jpeg"),
    "no images in a labelled request": ("/predict", {"json": {"inputs": []}}, 400, "no inputs"),
    "image to the json route": ("/v1/models/lite0:predict", {"content": b"\xff\xd8", "headers": {"Content-Type": "image/jpeg"}}, 415, "expected Content-Type application/json, got image/jpeg"),
    "malformed json": ("/v1/models/lite0:predict", {"content": b'{"instances": [', "headers": {"Content-Type": "application/json"}}, 400, "malformed JSON"),
    "malformed base64": ("/v1/models/lite0:predict", {"json": {"instances": [{"b64": "not base64!"}]}}, 400, "instances[0].b64: not valid base64"),
    "instance without b64": ("/v1/models/lite0:predict", {"json": {"instances": [{"image": "x"}]}}, 400, "instances[0].b64: Field required"),
    "neither format": ("/v1/models/lite0:predict", {"json": {"signature_name": "serving_default"}}, 400, "instances (row format) or inputs (columnar format): Field required"),
    "both formats": ("/v1/models/lite0:predict", {"json": {**instances(b"x"), "inputs": [{"b64": "AAAA"}]}}, 400, "both instances (row format) and inputs (columnar format)"),
    "input of another name": ("/v1/models/lite0:predict", {"json": {"inputs": {"pixels": [{"b64": "AAAA"}]}}}, 400, "inputs: Value error, the model's one input is 'image_bytes', not 'pixels'"),
    "too many columnar inputs": ("/v1/models/lite0:predict", {"json": {"inputs": [{"b64": "AAAA"}] * 5}}, 413, "5 images in one request; the limit is 4"),
    "more than b64 in an instance": ("/v1/models/lite0:predict", {"json": {"instances": [{"b64": "AAAA", "key": 1}]}}, 400, "instances[0].key: Extra inputs are not permitted"),
    "too many instances": ("/v1/models/lite0:predict", {"json": instances(*[b"x"] * 5)}, 413, "5 images in one request; the limit is 4"),
    "many tiny instances": ("/v1/models/lite0:predict", {"content": tiny_instances_json(1_900_000), "headers": {"Content-Type": "application/json"}}, 413, "send at most 4 instances"),
    "instances not a list": ("/v1/models/lite0:predict", {"json": {"instances": "abc"}}, 400, "instances: Input should be a valid array"),
    "unknown signature": ("/v1/models/lite0:predict", {"json": {**instances(b"x"), "signature_name": "other"}}, 400, "unknown signature_name 'other'"),
    "malformed multipart": ("/predict", {"content": b"garbage", "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}}, 400, "multipart"),
    "bad query": ("/predict", {"params": {"heatmap": "perhaps"}, **multipart("a.png", b"x")}, 400, "heatmap: Input should be a valid boolean"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(client, case):
    route, arguments, status, words = BAD_REQUESTS[case]
    if case == "truncated image":
        arguments = multipart("half.jpg", truncated_jpeg())
    elif case == "too many pixels":
        arguments = multipart("bomb.png", large_pixel_bomb())
        assert len(arguments["files"]["files"][1]) < 2_000_000  # under the byte limit: only the pixel guard stops it
    start = time.perf_counter()
    response = client.post(route, **arguments)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"]
    assert time.perf_counter() - start < 10  # refused, not decoded at length
    assert client.post("/predict", files=multipart("cat.jpg", photo(*CAT).read_bytes())["files"]).status_code == 200


def test_a_body_without_content_length_is_measured_as_it_arrives(client):
    def chunks():  # chunked transfer encoding: no Content-Length to check up front
        for _ in range(30):
            yield b"A" * 100_000

    response = client.post("/v1/models/lite0:predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "request body too large" in response.json()["error"]


def test_a_failing_image_does_not_fail_its_batch(lite0_run):
    predictor = Predictor(catsdogs.load(lite0_run[0]))
    cat, dog = load_image(photo(*CAT)), load_image(photo(*DOG))
    results = predictor([Job(cat, False, "cat"), Job(np.zeros((5, 5)), False, "flat"), Job(dog, True, "dog")])
    assert isinstance(results[1], ImageError) and "flat" in str(results[1]) and "shape (5, 5)" in str(results[1])
    assert isinstance(results[0], Result) and results[0].label == 0 and results[0].heatmap is None
    assert isinstance(results[2], Result) and results[2].label == 1 and results[2].heatmap.shape == (12, 12)  # 380 px / stride 32


def test_page_documentation_and_static_files_are_all_local(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        response = client.get(asset)
        assert response.status_code == 200
        assert not re.search(r"https?://", response.text), f"{asset} refers to another host"
    assert set(re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)) == {"/static/style.css", "/static/app.js"}
    docs = client.get("/docs")
    assert docs.status_code == 200
    for asset in re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))""", docs.text):
        assert asset.startswith("/"), f"/docs loads {asset} from another host"
        assert client.get(asset).status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/healthz", "/predict", "/v1/models/{model_name}", "/v1/models/{model_name}:predict"} <= set(schema["paths"])
    tf_request = schema["paths"]["/v1/models/{model_name}:predict"]["post"]["requestBody"]["content"]["application/json"]
    assert tf_request["schema"]["oneOf"][0]["properties"]["instances"]["anyOf"][0]["items"]["required"] == ["b64"]
    assert {"multipart/form-data", "application/json"} == set(schema["paths"]["/predict"]["post"]["requestBody"]["content"])


def test_the_serve_command_listens_on_loopback_and_stops_cleanly(lite0_run):
    with serve_command(lite0_run[0], "--name", "pets") as (url, _):  # asserts a clean exit on Ctrl-C
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/v1/models/pets", timeout=30).json()["classes"] == ["cats", "dogs"]


def test_serve_without_the_serving_libraries_says_what_to_install(lite0_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve", str(lite0_run[0])]) == 2
    error = capsys.readouterr().err
    assert 'pip install "catsdogs[serve]"' in error and "uvicorn" in error


def test_serve_refuses_bad_limits(lite0_run, capsys):
    assert main(["serve", str(lite0_run[0]), "--max-batch-size", "0"]) == 2
    assert "max_batch_size must be at least 1" in capsys.readouterr().err


# Issue 12: what fuzzing (Schemathesis) and a hostile user found.

def test_non_ascii_base64_is_a_400_not_a_500(client):
    # base64.b64decode raises a plain ValueError (not binascii.Error) on non-ASCII characters.
    response = client.post("/v1/models/lite0:predict", json={"instances": [{"b64": "chat-été"}]})
    assert response.status_code == 400 and "instances[0].b64: not valid base64" in response.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_options_on_the_predict_url_names_post(client):
    # /v1/models/{name} used to swallow NAME:predict and answer with its own Allow: GET.
    response = client.options("/v1/models/lite0:predict")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert client.get("/v1/models/lite0:predict").headers["allow"] == "POST"


def test_tf_serving_version_urls(client):
    status = client.get("/v1/models/lite0/versions/1")
    assert status.status_code == 200 and status.json()["model_version_status"][0]["version"] == "1"
    missing = client.get("/v1/models/lite0/versions/2")
    assert missing.status_code == 404 and "version 2 of model 'lite0' not found" in missing.json()["error"]
    response = client.post("/v1/models/lite0/versions/1:predict", json=instances(photo(*DOG).read_bytes()))
    assert response.status_code == 200 and response.json()["predictions"][0]["probabilities"][1] > 0.5
    assert client.post("/v1/models/lite0/versions/3:predict", json=instances(b"x")).status_code == 404


def test_thousands_of_multipart_parts_get_413_before_they_are_all_read(client):
    parts = [("files", (f"{i}.png", b"x")) for i in range(5000)]
    response = client.post("/predict", files=parts)
    assert response.status_code == 413 and "more than 4 images in one request; the limit is 4" in response.json()["error"]


def test_empty_base64_is_a_malformed_request(client):
    response = client.post("/v1/models/lite0:predict", json={"instances": [{"b64": ""}]})
    assert response.status_code == 400 and "instances[0].b64: empty" in response.json()["error"]


def test_the_pixels_of_a_whole_request_are_budgeted_before_decoding(client):
    # Each image is under the per-image limit (4 MP here); together they are over the request's (6 MP).
    large = image_bytes(Image.new("L", (2000, 1800)), "PNG", optimize=True)
    start = time.perf_counter()
    response = client.post("/predict", files=[("files", ("a.png", large)), ("files", ("b.png", large))])
    assert response.status_code == 413, response.text
    assert "7200000 pixels in all; the limit is 6000000" in response.json()["error"]
    assert time.perf_counter() - start < 5
    alone = client.post("/predict", files={"files": ("a.png", large)})
    assert alone.status_code == 200


def test_the_schema_declares_the_limits_it_enforces(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/models/{model_name}/versions/{version}", "/v1/models/{model_name}/versions/{version}:predict"} <= set(paths)
    tf_serving = paths["/v1/models/{model_name}:predict"]["post"]
    request = tf_serving["requestBody"]["content"]["application/json"]["schema"]
    row, columnar = request["oneOf"]
    for images in (row["properties"]["instances"]["anyOf"][0], columnar["properties"]["inputs"]["anyOf"][0]):
        assert (images["minItems"], images["maxItems"]) == (1, 4)
        assert images["items"]["properties"]["b64"]["maxLength"] == 2_000_000
    assert {"400", "404", "408", "413", "415", "422"} <= set(tf_serving["responses"])
    upload = paths["/predict"]["post"]
    files = upload["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["files"]
    assert (files["minItems"], files["maxItems"]) == (1, 4)
    assert "401" not in upload["responses"]  # no API key on this server


def test_a_large_photo_is_decoded_near_the_model_input_and_predicted_like_the_full_one(client, lite0_run):
    # A 3x upscaled dog: decoded at 1/2 by JPEG DCT scaling, it must still be the same dog.
    pixels = load_image(photo(*DOG))
    large = Image.fromarray(pixels).resize((pixels.shape[1] * 3, pixels.shape[0] * 3), Image.Resampling.BICUBIC)
    response = client.post("/predict", files={"files": ("large.jpg", image_bytes(large, "JPEG", quality=95))})
    assert response.status_code == 200
    full = catsdogs.load(lite0_run[0]).predict([photo(*DOG)])[0].to_dict()
    assert response.json()["predictions"][0]["probabilities"]["dogs"] == pytest.approx(full["probabilities"]["dogs"], abs=0.02)
