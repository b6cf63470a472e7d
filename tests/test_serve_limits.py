"""`catsdogs serve` as a real process under hostile load: memory, slow clients, shutdown, auth,
and the bad-input corpus (issue 12). Everything stays on 127.0.0.1 and is bounded in time."""

import base64
import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from catsdogs.apps.serve.app import _warn_if_exposed
from catsdogs.config.serve import ServeSettings
from conftest import ROOT, photo
from corpus import build_corpus, large_png, tiny_instances_json
from health_watch import HealthWatch

API_KEY = "test-key-0123"
HEADER_TIMEOUT, BODY_TIMEOUT, SHUTDOWN_TIMEOUT = 2, 8, 2


def start_server(run_dir, log_path, *options, env=None):
    """Starts `catsdogs serve` on a free loopback port; returns (process, base URL)."""
    command = [sys.executable, "-m", "catsdogs.cli", "serve", str(run_dir), "--port", "0", *options]
    log = open(log_path, "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    deadline = time.monotonic() + 180  # TensorFlow's import, the model, its warm-up
    while time.monotonic() < deadline:
        started = re.search(r"running on (http://[^ ]+)", log_path.read_text())
        if started:
            return server, started.group(1)
        if server.poll() is not None:
            break
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"catsdogs serve did not start:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def served(lite0_run, tmp_path_factory):
    """One `catsdogs serve` process with the default memory limits, short timeouts and an API key.

    The last test of this module stops it with SIGTERM.
    """
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    server, url = start_server(
        lite0_run[0], log_path, "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
        "--shutdown-timeout", str(SHUTDOWN_TIMEOUT), "--keep-alive", "2", env={"CATSDOGS_API_KEY": API_KEY})
    yield server, url, log_path
    if server.poll() is None:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served[1], timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


def rss_bytes(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def reset_peak_rss(pid):
    """Resets the kernel's peak RSS of a process (VmHWM) to its current RSS; returns that."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    return rss_bytes(pid)


def read_until_closed(connection):
    """Everything a socket receives until the server closes it (a timeout if it never does)."""
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    return answer


def stated_worst_case_bytes():
    """The worst-case RSS that docs/serving.md states for the default limits."""
    match = re.search(r"RSS stays under \*\*([\d.]+) GB\*\*", (ROOT / "docs" / "serving.md").read_text())
    assert match, "docs/serving.md must state the server's worst-case RSS"
    return float(match.group(1)) * 1e9


def test_the_api_key_is_required_on_the_api_but_not_on_the_page(served, client):
    url = served[1]
    assert httpx.get(f"{url}/v1/models/lite0", timeout=30).status_code == 401
    wrong = httpx.post(f"{url}/predict", files={"files": ("a.jpg", b"x")}, headers={"X-API-Key": "nope"}, timeout=30)
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
    assert httpx.get(f"{url}/v1/models/lite0", headers={"X-API-Key": API_KEY}, timeout=30).status_code == 200
    assert client.get("/v1/models/lite0").status_code == 200  # Authorization: Bearer
    for open_route in ("/healthz", "/", "/static/app.js", "/openapi.json", "/docs", "/v2/health/live",
                       "/v2/health/ready", "/v2"):
        assert httpx.get(f"{url}{open_route}", timeout=30).status_code == 200, open_route
    for model_route in ("/v1/models/lite0/metadata", "/v2/models/lite0", "/v2/models/lite0/ready"):
        assert httpx.get(f"{url}{model_route}", timeout=30).status_code == 401, model_route
        assert client.get(model_route).status_code == 200, model_route
    infer = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}
    assert httpx.post(f"{url}/v2/models/lite0/infer", json=infer, timeout=30).status_code == 401
    schema = httpx.get(f"{url}/openapi.json", timeout=30).json()
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schema["components"]["securitySchemes"])
    assert "401" in schema["paths"]["/predict"]["post"]["responses"]


def test_binding_beyond_loopback_without_a_key_warns(caplog):
    _warn_if_exposed("0.0.0.0", ServeSettings())
    assert "without an API key" in caplog.text
    caplog.clear()
    _warn_if_exposed("0.0.0.0", ServeSettings(api_key="k"))
    _warn_if_exposed("127.0.0.1", ServeSettings())
    assert caplog.text == ""


def test_every_kind_of_bad_input_gets_a_4xx_naming_it_and_good_ones_are_predicted(client, tmp_path):
    corpus = build_corpus(tmp_path / "corpus", photo=photo("test", "cats", 4001))
    assert len(corpus) >= 20
    for kind, path, expected in corpus:
        name = os.fsencode(path.name).decode("utf-8", "replace")  # what a browser would send for it
        response = client.post("/predict", files={"files": (name, path.read_bytes())})
        assert response.status_code < 500, (kind, response.text)
        assert response.headers["content-type"] == "application/json"
        if expected == "ok":
            assert response.status_code == 200, (kind, response.text)
            assert response.json()["predictions"][0]["label"] in ("cats", "dogs", "unknown")  # 1x1, gradients...
        else:
            assert 400 <= response.status_code < 500, kind
            assert response.json()["error"].startswith(f"{name}: "), (kind, response.text)
    assert client.get("/healthz").json()["status"] == "ok"


def test_connections_that_send_their_headers_slowly_are_closed(served, client):
    host, port = served[1].removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(100)]  # never say anything
    slow = socket.create_connection((host, int(port)), timeout=10)
    slow.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    start, closed = time.monotonic(), False
    while time.monotonic() - start < HEADER_TIMEOUT + 5:
        try:
            slow.sendall(b"X-a: b\r\n")  # slowloris: one more header line now and then, never the end
            time.sleep(0.25)
        except OSError:  # reset by the server
            closed = True
            break
    assert closed, "a connection sending headers slowly was never closed"
    assert time.monotonic() - start < HEADER_TIMEOUT + 3
    for connection in idle:
        assert connection.recv(1) == b""  # closed by the server, not by this timeout
        connection.close()
    assert client.get("/healthz").status_code == 200


def test_a_body_that_stalls_gets_408_and_its_connection_is_closed(served):
    host, port = served[1].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=BODY_TIMEOUT + 10) as connection:
        connection.sendall(b"POST /v1/models/lite0:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/json\r\nAuthorization: Bearer " + API_KEY.encode()
                           + b"\r\nContent-Length: 1000\r\n\r\n{\"inst")
        start = time.monotonic()
        answer = read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request body not received within 8 s" in answer
    assert time.monotonic() - start < BODY_TIMEOUT + 3


def test_requests_whose_body_never_comes_hold_nobody_past_the_body_timeout(served):
    # Issue 23: 63 connections (the 64th is the last the server admits) send their headers and no
    # body. Waiting for a request slot counts against the body timeout, so all of them are answered
    # and closed within it, and a real request gets through then (before: one wave of 8 per timeout).
    host, port = served[1].removeprefix("http://").split(":")
    head = (b"POST /v1/models/lite0:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n")
    stalled = [socket.create_connection((host, int(port)), timeout=BODY_TIMEOUT + 10) for _ in range(63)]
    for connection in stalled:
        connection.sendall(head)
    start = time.monotonic()
    files = {"files": ("cat.jpg", photo("test", "cats", 4001).read_bytes())}
    while True:  # over the connection limit, a request gets 503 at once: try again, as a client would
        response = httpx.post(f"{served[1]}/predict", files=files, headers={"X-API-Key": API_KEY}, timeout=60)
        if response.status_code != 503 or time.monotonic() - start > BODY_TIMEOUT + 5:
            break
        time.sleep(0.25)
    assert response.status_code == 200, response.text
    assert time.monotonic() - start < BODY_TIMEOUT + 2
    for connection in stalled:
        answer = read_until_closed(connection)
        assert answer.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")), answer
        connection.close()
    assert time.monotonic() - start < BODY_TIMEOUT + 3


def test_millions_of_tiny_json_instances_are_refused_before_they_are_parsed(served, client):
    # Issue 23: parsed first, 2 million {"b64": "AAAA"} took 1.7 GB and the event loop for 5-11 s.
    server, url, _ = served
    body = tiny_instances_json(31 * 2**20)
    before = reset_peak_rss(server.pid)
    with HealthWatch(url) as health:
        response = client.post("/v1/models/lite0:predict", content=body, headers={"Content-Type": "application/json"})
        time.sleep(0.2)
    assert response.status_code == 413, response.text
    assert "send at most 32 instances" in response.json()["error"]
    assert rss_bytes(server.pid, "VmHWM") - before < 3 * len(body)  # docs/serving.md: 3 x the body per active request
    assert set(health.statuses) == {"200"}
    assert health.slowest < 0.5


def test_eight_concurrent_bodies_of_tiny_instances_stay_inside_the_stated_bound(served, client):
    server, url, _ = served
    body = tiny_instances_json(31 * 2**20)

    def one(_):
        return client.post("/v1/models/lite0:predict", content=body, headers={"Content-Type": "application/json"})

    before = reset_peak_rss(server.pid)
    with HealthWatch(url) as health, concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = [response.status_code for response in pool.map(one, range(8))]
    peak = rss_bytes(server.pid, "VmHWM")
    print(f"8 x {len(body) / 2**20:.0f} MiB of tiny instances: RSS before {before / 1e9:.2f} GB, peak "
          f"{peak / 1e9:.2f} GB; slowest /healthz {health.slowest * 1000:.0f} ms")
    assert statuses == [413] * 8
    assert peak - before < 8 * 3 * len(body)
    assert peak < stated_worst_case_bytes()
    assert health.slowest < 0.5


def test_a_burst_of_large_pngs_stays_under_the_stated_worst_case_and_memory_is_returned(served, client):
    server = served[0]
    large = large_png(7000)  # 49 MP in under a megabyte: only the pixel limits stop it
    assert len(large) < 1_000_000
    files = [("files", ("large-1.png", large)), ("files", ("large-2.png", large))]  # 98 MP: under 100 MP a request
    instances = {"instances": [{"b64": base64.b64encode(large).decode()}] * 2}

    def one(i):  # half of them to each route, half with heatmaps
        params = {"heatmap": str(i % 4 < 2).lower()}
        if i % 2:
            return client.post("/v1/models/lite0:predict", params=params, json=instances).status_code
        return client.post("/predict", params=params, files=files).status_code

    def burst():
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(8)))

    burst()  # once, so that "before" is the server's working state (TensorFlow's buffers for batches of 16)
    time.sleep(1)
    before = reset_peak_rss(server.pid)
    start = time.monotonic()
    with HealthWatch(served[1]) as health:
        statuses = burst()
    over_budget = client.post("/predict", files=files + files[:1])  # 147 MP: over the request's budget
    assert statuses == [200] * 8
    assert over_budget.status_code == 413 and "the limit is 100000000" in over_budget.json()["error"]
    peak = rss_bytes(server.pid, "VmHWM")
    time.sleep(1)
    after = rss_bytes(server.pid)
    print(f"16 decodes of 7000x7000 in {time.monotonic() - start:.1f} s; RSS before {before / 1e9:.2f} GB, "
          f"peak {peak / 1e9:.2f} GB, after {after / 1e9:.2f} GB; slowest /healthz {health.slowest * 1000:.0f} ms")
    assert peak < stated_worst_case_bytes()
    assert health.slowest < 0.5
    assert after < 1.10 * before


def test_sigterm_exits_within_the_shutdown_timeout_while_a_client_stalls_mid_body(served):
    # Last in this module: it stops the shared server.
    server, url, log_path = served
    host, port = url.removeprefix("http://").split(":")
    stalled = socket.create_connection((host, int(port)), timeout=30)
    stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"X-API-Key: " + API_KEY.encode() + b"\r\nContent-Length: 100000\r\n\r\n--b\r\n")
    silent = socket.create_connection((host, int(port)), timeout=30)
    time.sleep(0.5)
    start = time.monotonic()
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=BODY_TIMEOUT + 30)
    elapsed = time.monotonic() - start
    stalled.close()
    silent.close()
    # Within the graceful-shutdown timeout (and well before the stalled body's own timeout ends it).
    assert elapsed < SHUTDOWN_TIMEOUT + 4, log_path.read_text()[-2000:]
    assert server.returncode in (0, -signal.SIGTERM)
    log = log_path.read_text()
    assert "timeout graceful shutdown exceeded" in log and "Application shutdown complete" in log
