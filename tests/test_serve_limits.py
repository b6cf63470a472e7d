"""`catsdogs serve` as a real process under hostile load: memory, slow clients, shutdown, auth,
and the bad-input corpus (issue 12). Everything stays on 127.0.0.1 and is bounded in time."""

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

from catsdogs.serve import ServeSettings
from catsdogs.serve.app import _warn_if_exposed
from conftest import ROOT, photo
from corpus import build_corpus, large_png

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


def stated_worst_case_bytes():
    """The worst-case RSS that README.md states for the default limits."""
    match = re.search(r"RSS stays under \*\*([\d.]+) GB\*\*", (ROOT / "README.md").read_text())
    assert match, "README.md must state the server's worst-case RSS"
    return float(match.group(1)) * 1e9


def test_the_api_key_is_required_on_the_api_but_not_on_the_page(served, client):
    url = served[1]
    assert httpx.get(f"{url}/v1/models/lite0", timeout=30).status_code == 401
    wrong = httpx.post(f"{url}/predict", files={"files": ("a.jpg", b"x")}, headers={"X-API-Key": "nope"}, timeout=30)
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
    assert httpx.get(f"{url}/v1/models/lite0", headers={"X-API-Key": API_KEY}, timeout=30).status_code == 200
    assert client.get("/v1/models/lite0").status_code == 200  # Authorization: Bearer
    for open_route in ("/healthz", "/", "/static/app.js", "/openapi.json", "/docs"):
        assert httpx.get(f"{url}{open_route}", timeout=30).status_code == 200, open_route
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


def test_a_body_that_stalls_gets_408(served):
    host, port = served[1].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=BODY_TIMEOUT + 10) as connection:
        connection.sendall(b"POST /v1/models/lite0:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/json\r\nAuthorization: Bearer " + API_KEY.encode()
                           + b"\r\nContent-Length: 1000\r\n\r\n{\"inst")
        start = time.monotonic()
        answer = connection.recv(4096)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
        while len(body) < length:  # headers and body may come in separate segments
            body += connection.recv(4096)
        answer = head + b"\r\n\r\n" + body
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request body not received within 8 s" in answer
    assert time.monotonic() - start < BODY_TIMEOUT + 3


def test_a_burst_of_large_pngs_stays_under_the_stated_worst_case_and_memory_is_returned(served, client):
    server = served[0]
    large = large_png(7000)  # 49 MP in under a megabyte: only the pixel limits stop it
    assert len(large) < 1_000_000
    files = [("files", ("large-1.png", large)), ("files", ("large-2.png", large))]  # 98 MP: under 100 MP a request

    def one(i):
        return client.post("/predict", params={"heatmap": str(i % 2 == 0).lower()}, files=files).status_code

    def burst():
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(8)))

    burst()  # once, so that "before" is the server's working state (TensorFlow's buffers for batches of 16)
    time.sleep(1)
    before = rss_bytes(server.pid)
    with open(f"/proc/{server.pid}/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS
    start = time.monotonic()
    statuses = burst()
    over_budget = client.post("/predict", files=files + files[:1])  # 147 MP: over the request's budget
    assert statuses == [200] * 8
    assert over_budget.status_code == 413 and "the limit is 100000000" in over_budget.json()["error"]
    peak = rss_bytes(server.pid, "VmHWM")
    time.sleep(1)
    after = rss_bytes(server.pid)
    print(f"16 decodes of 7000x7000 in {time.monotonic() - start:.1f} s; RSS before {before / 1e9:.2f} GB, "
          f"peak {peak / 1e9:.2f} GB, after {after / 1e9:.2f} GB")
    assert peak < stated_worst_case_bytes()
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
