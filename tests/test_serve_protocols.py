"""The protocols real clients speak, against a real `catsdogs serve` process: the Open Inference
Protocol driven by `tritonclient.http` (a client no one here wrote), TensorFlow Serving's REST API
in both request formats and its metadata; then the same app as replicas on Ray Serve."""

import base64
import json
import os
import signal
import struct
import time

import httpx
import numpy as np
import pytest
from starlette.exceptions import HTTPException

import catsdogs
from catsdogs.apps.serve.open_inference import max_json_tokens, parse_request
from catsdogs.apps.serve.signature import Signature
from catsdogs.cli import main
from catsdogs.errors import ConfigError
from catsdogs.inference.preprocess import load_photo, prepare
from conftest import photo, serve_command, start_server_command

CAT, DOG = ("test", "cats", 4200), ("test", "dogs", 4200)


def b64(data):
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def served_process(lite0_run):
    """`catsdogs serve` of the lite0 run, a process of its own: its URL."""
    with serve_command(lite0_run[0]) as (url, _):
        yield url


@pytest.fixture(scope="module")
def predicted(lite0_run):
    """What `catsdogs predict` says of the cat and the dog: (probabilities (2, classes), in-distribution scores)."""
    predictions = catsdogs.load(lite0_run[0]).predict([photo(*CAT), photo(*DOG)])
    classes = predictions[0].probabilities.keys()
    return (np.array([[p.probabilities[name] for name in classes] for p in predictions]),
            np.array([p.in_distribution_score for p in predictions]))


def triton(url):
    import tritonclient.http as triton_http

    return triton_http, triton_http.InferenceServerClient(url.removeprefix("http://"))


def test_tritonclient_finds_the_server_and_model_and_gets_what_catsdogs_predict_computes(served_process, predicted):
    triton_http, client = triton(served_process)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("lite0")
    assert not client.is_model_ready("other")
    metadata = client.get_model_metadata("lite0")
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("image_bytes", "BYTES", [-1]), ("pixels", "FP32", [-1, 380, 380, 3])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("probabilities", "FP32", [-1, 2]), ("in_distribution_score", "FP32", [-1])]
    assert metadata["parameters"]["classes"] == ["cats", "dogs"]
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]

    files = np.array([photo(*CAT).read_bytes(), photo(*DOG).read_bytes()], dtype=np.object_)
    images = triton_http.InferInput("image_bytes", [2], "BYTES")
    images.set_data_from_numpy(files)  # binary data, tritonclient's default; the outputs come back binary too
    result = client.infer("lite0", [images])
    probabilities, scores = predicted
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("in_distribution_score"), scores, atol=1e-5)

    # All JSON: base64 strings in BYTES (a file is not text), the outputs asked for by name.
    images = triton_http.InferInput("image_bytes", [2], "BYTES")
    images.set_data_from_numpy(np.array([b64(data) for data in files], dtype=np.object_), binary_data=False)
    wanted = [triton_http.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer("lite0", [images], outputs=wanted, model_version="1", request_id="two-photos")
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, atol=1e-5)
    assert result.as_numpy("in_distribution_score") is None and result.get_response()["id"] == "two-photos"


def test_tritonclient_sends_photos_it_resized_itself_as_fp32_or_uint8(served_process, predicted):
    triton_http, client = triton(served_process)
    pixels = np.stack([prepare(load_photo(photo(*which), 380), 380) for which in (CAT, DOG)])  # as the model resizes
    for datatype, values, tolerance in (("FP32", pixels, 1e-5), ("UINT8", np.round(pixels).astype(np.uint8), 0.02)):
        tensor = triton_http.InferInput("pixels", list(values.shape), datatype)
        tensor.set_data_from_numpy(values)
        result = client.infer("lite0", [tensor])
        np.testing.assert_allclose(result.as_numpy("probabilities"), predicted[0], atol=tolerance, err_msg=datatype)


def test_tf_serving_columnar_request_and_metadata(served_process, predicted):
    cat, dog = b64(photo(*CAT).read_bytes()), b64(photo(*DOG).read_bytes())
    with httpx.Client(base_url=served_process, timeout=60) as client:
        metadata = client.get("/v1/models/lite0/metadata").json()
        assert metadata["model_spec"] == {"name": "lite0", "signature_name": "", "version": "1"}
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["method_name"] == "tensorflow/serving/predict"
        assert signature["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
        assert {name: [dim["size"] for dim in output["tensor_shape"]["dim"]]
                for name, output in signature["outputs"].items()} == {
            "probabilities": ["-1", "2"], "in_distribution_score": ["-1"]}
        assert metadata["metadata"]["classes"] == ["cats", "dogs"]
        assert client.get("/v1/models/lite0/versions/1/metadata").json() == metadata

        for body in ({"inputs": [{"b64": cat}, {"b64": dog}]}, {"inputs": {"image_bytes": [{"b64": cat}, {"b64": dog}]}},
                     {"signature_name": "serving_default", "inputs": {"image_bytes": [{"b64": cat}, {"b64": dog}]}}):
            outputs = client.post("/v1/models/lite0:predict", json=body).json()["outputs"]
            np.testing.assert_allclose(outputs["probabilities"], predicted[0], atol=1e-5)
            np.testing.assert_allclose(outputs["in_distribution_score"], predicted[1], atol=1e-5)
        named_rows = {"instances": [{"image_bytes": {"b64": cat}}, {"image_bytes": {"b64": dog}}]}
        rows = client.post("/v1/models/lite0:predict", json=named_rows).json()["predictions"]
        np.testing.assert_allclose([row["probabilities"] for row in rows], predicted[0], atol=1e-5)


def binary_bytes(*elements):
    """BYTES elements as Triton writes them: a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def infer_json(name="image_bytes", datatype="BYTES", shape=(1,), data=None, **parameters):
    tensor = {"name": name, "datatype": datatype, "shape": list(shape)}
    if data is not None:
        tensor["data"] = data
    if parameters:
        tensor["parameters"] = parameters
    return {"inputs": [tensor]}


def binary_request(header, data):
    body = json.dumps(header).encode()
    return {"content": body + data, "headers": {"Inference-Header-Content-Length": str(len(body))}}


BAD_INFER_REQUESTS = {
    # id: (request arguments, status, words in the error)
    "no inputs": ({"json": {"inputs": []}}, 400, "expected one input, image_bytes or pixels; got 0"),
    "unknown input": ({"json": infer_json(name="image")}, 400, "unknown input 'image'"),
    "unknown field": ({"json": {**infer_json(data=["AAAA"]), "model": "x"}}, 400, "model: Extra inputs are not permitted"),
    "wrong datatype": ({"json": infer_json(datatype="FP32", data=[1.0])}, 400, "image_bytes is BYTES"),
    "shape and data disagree": ({"json": infer_json(shape=(2,), data=["AAAA"])}, 400, "expected 2 strings"),
    "not base64": ({"json": infer_json(data=["not base64!"])}, 400, "data[0]: not valid base64"),
    "not an image": ({"json": infer_json(data=[b64(b"just some text")])}, 422, "image_bytes[0]: not an image"),
    "too many images": ({"json": infer_json(shape=(5,), data=["AAAA"] * 5)}, 413, "5 images in one request; the limit is 4"),
    "no data": ({"json": infer_json()}, 400, "no data"),
    "pixels of another size": ({"json": infer_json("pixels", "FP32", (1, 8, 8, 3), [0.0] * 192)}, 400, "[n, 380, 380, 3]"),
    "pixels as text": ({"json": infer_json("pixels", "STRING", (1, 380, 380, 3), ["x"])}, 400, "FP32 or UINT8"),
    "unknown output": ({"json": {**infer_json(data=["AAAA"]), "outputs": [{"name": "logits"}]}}, 400, "unknown output 'logits'"),
    "binary size wrong": (binary_request(infer_json(binary_data_size=99), binary_bytes(b"abc")), 400, "binary_data_size: 99, but 7 bytes"),
    "binary elements overrun": (binary_request(infer_json(shape=(2,), binary_data_size=7), binary_bytes(b"abc")), 400, "ends before element 1 of 2"),
    "binary pixels short": (binary_request(infer_json("pixels", "UINT8", (1, 380, 380, 3), binary_data_size=3), b"abc"), 400, "needs 433200"),
    "binary data without its size": (binary_request(infer_json(data=["AAAA"]), b"abc"), 400, "no parameters.binary_data_size"),
    "header length beyond the body": ({"content": b"{}", "headers": {"Inference-Header-Content-Length": "99"}}, 400, "not a length within"),
    "many tiny tokens": ({"content": b"[" * 60_000, "headers": {"Content-Type": "application/json"}}, 413, "separators and brackets"),
    "wrong content type": ({"content": b"x", "headers": {"Content-Type": "image/jpeg"}}, 415, "expected Content-Type application/json"),
    "malformed json": ({"content": b'{"inputs": [', "headers": {"Content-Type": "application/json"}}, 400, "malformed JSON"),
}


@pytest.mark.parametrize("case", BAD_INFER_REQUESTS, ids=list(BAD_INFER_REQUESTS))
def test_bad_inference_requests_get_a_clear_4xx(lite0_server, case):
    url, _ = lite0_server
    arguments, status, words = BAD_INFER_REQUESTS[case]
    response = httpx.post(f"{url}/v2/models/lite0/infer", timeout=60, **arguments)
    assert response.status_code == status, response.text
    assert words in response.json()["error"], response.json()["error"]


def test_unknown_model_or_version_is_404_on_every_v2_route(lite0_server):
    url, _ = lite0_server
    for path in ("/v2/models/other", "/v2/models/other/ready", "/v2/models/lite0/versions/2",
                 "/v2/models/lite0/versions/2/ready"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 404, path
    response = httpx.post(f"{url}/v2/models/lite0/versions/2/infer", json=infer_json(data=["AAAA"]), timeout=30)
    assert response.status_code == 404 and "version 2 of model 'lite0' not found" in response.json()["error"]


def test_pixels_in_json_flat_or_nested_read_as_their_binary_data():
    signature = Signature(("cats", "dogs"), 4, {"probabilities": (2,)})
    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.float32)
    tokens = max_json_tokens(4, 2_000_000)
    flat = parse_request(json.dumps(infer_json("pixels", "FP32", pixels.shape, pixels.ravel().tolist())).encode(),
                         None, signature, 4, tokens)
    nested = parse_request(json.dumps(infer_json("pixels", "UINT8", pixels.shape, pixels.astype(int).tolist())).encode(),
                           None, signature, 4, tokens)
    header = json.dumps(infer_json("pixels", "FP32", pixels.shape, binary_data_size=pixels.nbytes)).encode()
    binary = parse_request(header + pixels.tobytes(), str(len(header)), signature, 4, tokens)
    for request in (flat, nested, binary):
        np.testing.assert_array_equal(request.pixels, pixels)
        assert request.files is None and request.outputs == ["probabilities"] and not request.binary
    header = json.dumps(infer_json("pixels", "FP32", (1, 4, 4, 3), binary_data_size=192)).encode()
    with pytest.raises(HTTPException, match="found NaN or infinity"):
        parse_request(header + np.full(48, np.nan, np.float32).tobytes(), str(len(header)), signature, 4, tokens)
    # What a JSON body may hold follows the upload limit: 2 MB affords 50,000 separators and brackets.
    assert tokens == 50_000 and max_json_tokens(32, 32 * 2**20) == 838_860


def test_replicas_are_a_number_or_a_range_not_both(lite0_run, capsys):
    assert main(["serve", str(lite0_run[0]), "--engine", "ray", "--replicas", "2", "--autoscale", "1-3"]) == 2
    assert "give --replicas N or --autoscale MIN-MAX, not both" in capsys.readouterr().err
    assert main(["serve", str(lite0_run[0]), "--engine", "ray", "--autoscale", "3-1"]) == 2
    assert "expected MIN-MAX replicas, 1 <= MIN <= MAX" in capsys.readouterr().err


def test_the_application_builder_for_kuberay_checks_its_settings(lite0_run, monkeypatch):
    serve = pytest.importorskip("ray.serve")
    from catsdogs.apps.serve.ray_serve import app_from_config

    monkeypatch.setenv("CATSDOGS_API_KEY", "a-key")
    built = app_from_config({"model": str(lite0_run[0]), "host": "0.0.0.0", "allowed_hosts": ["lite0-serve-svc"]})
    assert isinstance(built, serve.Application)
    with pytest.raises(ConfigError, match="max_images must be at least 1"):
        app_from_config({"model": str(lite0_run[0]), "max_images": 0})


def replica_pids(url, tries=40):
    """The process ids that answer /healthz over `tries` requests (Ray Serve picks a replica for each)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        return {client.get("/healthz").json()["process_id"] for _ in range(tries)}


def process_gone(pid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_ray_serve_replicas_answer_the_page_and_both_protocols_and_stop_with_the_command(lite0_run, predicted):
    pytest.importorskip("ray.serve")
    server, url, lines = start_server_command("serve", lite0_run[0], "--engine", "ray", "--replicas", "2")
    try:
        assert "Ray Serve: 2 replicas" in "".join(lines)
        page = httpx.get(f"{url}/", timeout=60)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert page.headers["content-security-policy"].startswith("default-src 'self'")  # the app's own headers
        cat, dog = b64(photo(*CAT).read_bytes()), b64(photo(*DOG).read_bytes())
        tf_answer = httpx.post(f"{url}/v1/models/lite0:predict", json={"instances": [{"b64": cat}, {"b64": dog}]},
                               timeout=120).json()["predictions"]
        np.testing.assert_allclose([row["probabilities"] for row in tf_answer], predicted[0], atol=1e-5)
        triton_http, client = triton(url)
        images = triton_http.InferInput("image_bytes", [2], "BYTES")
        images.set_data_from_numpy(np.array([photo(*CAT).read_bytes(), photo(*DOG).read_bytes()], dtype=np.object_))
        np.testing.assert_allclose(client.infer("lite0", [images]).as_numpy("probabilities"), predicted[0], atol=1e-5)
        labelled = httpx.post(f"{url}/predict", files={"files": ("dog.jpg", photo(*DOG).read_bytes())}, timeout=120)
        assert labelled.json()["predictions"][0]["label"] == "dogs"
        too_many = httpx.post(f"{url}/predict", json={"instances": [{"b64": cat}] * 33}, timeout=60)
        assert too_many.status_code == 413  # the limits of the app, in each replica
        pids = replica_pids(url)
        assert len(pids) == 2 and server.pid not in pids, pids
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=120)[0]
    assert server.returncode == 0, output
    assert all(process_gone(pid) for pid in pids), (pids, output)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5)
