"""Other web pages cannot use `catsdogs serve` or `catsdogs review` (issue 23): a Host allow-list
against DNS rebinding, an Origin check on state-changing requests, security headers, the review
page's token, names escaped wherever they become HTML, an API key that HTTP can carry.

The model is a real run whose first class folder is named as HTML that runs a script."""

import base64
import json
import pathlib
import re
import signal
import urllib.parse

import httpx
import pytest

from catsdogs.cli import build_parser, main
from catsdogs.config.serve import ServeSettings
from catsdogs.errors import ConfigError
from conftest import ServerThread, link_photos, photo, review_login, serve_command, start_server_command

XSS = "<img src=x onerror=alert(1)>"  # a class folder, a model name, a run directory
TOKEN = "a-token-for-these-tests"
ATTACKER = "attacker.example"
HEADERS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


@pytest.fixture(scope="module")
def xss_run(tmp_path_factory):
    """A real efficientnet_lite0 run on lite0_run's photos (their features are cached), with the cats in a
    class folder named `XSS`.

    Returns:
        the run directory.
    """
    import catsdogs

    data = tmp_path_factory.mktemp("xss-data")
    for cls, name in (("cats", XSS), ("dogs", "dogs")):
        link_photos(data / "training_set" / "training_set" / name, "train", cls, range(1, 101))
        link_photos(data / "test_set" / "test_set" / name, "test", cls, range(4001, 4101))
    run = catsdogs.train(data, backbone="efficientnet_lite0", runtime="keras",
                         runs_dir=str(tmp_path_factory.mktemp("xss-runs")), name="xss")
    assert run.classifier.info.class_names == [XSS, "dogs"]
    return pathlib.Path(run.run_dir)


@pytest.fixture(scope="module")
def loaded(xss_run):
    """(classifier, metrics) of the run, loaded once for every app of this module."""
    from catsdogs.apps.serve.app import load_served_model

    classifier, _, metrics = load_served_model(xss_run)
    return classifier, metrics


def serve_app(loaded, host="127.0.0.1", name=XSS, **settings):
    from catsdogs.apps.serve.app import create_app

    classifier, metrics = loaded
    return create_app(classifier, name, metrics, ServeSettings(**settings), host)


def client_of(app, host="127.0.0.1", **kwargs):
    """A client of `app` in this process, sending `host` in Host (no lifespan: nothing that needs the batcher)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=f"http://{host}", **kwargs)


@pytest.fixture(scope="module")
def served(loaded):
    """The run served for real on loopback as XSS, also answering to catsdogs.test: (URL, port)."""
    with ServerThread(serve_app(loaded, allowed_hosts=("catsdogs.test",))) as url:
        yield url, urllib.parse.urlsplit(url).port


def predict_requests(cat):
    """Every route of serve as (method, path, httpx arguments): the page, its files, the docs, the API."""
    model = f"/v1/models/{urllib.parse.quote(XSS)}"
    body = json.dumps({"instances": [{"b64": base64.b64encode(cat).decode()}]})
    return [("GET", "/", {}), ("GET", "/static/app.js", {}), ("GET", "/docs", {}), ("GET", "/openapi.json", {}),
            ("GET", "/healthz", {}), ("GET", model, {}),
            ("POST", "/predict", {"files": {"files": ("cat.jpg", cat)}}),
            ("POST", f"{model}:predict", {"content": body, "headers": {"Content-Type": "application/json"}}),
            ("GET", f"{model}/metadata", {}), ("GET", "/v2/health/ready", {}),
            ("GET", f"/v2/models/{urllib.parse.quote(XSS)}", {}),
            ("POST", f"/v2/models/{urllib.parse.quote(XSS)}/infer", {"json": {"inputs": [
                {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(cat).decode()]}]}})]


def assert_headers(response):
    for name, value in HEADERS.items():
        assert response.headers.get(name) == value, (response.url, name, response.headers)
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, policy


# Serve.

def test_serve_refuses_a_foreign_host_on_every_route_and_answers_its_own_names(served):
    url, port = served
    cat = photo("test", "cats", 4200).read_bytes()
    with httpx.Client(base_url=url, timeout=60) as client:
        for method, path, arguments in predict_requests(cat):
            headers = {**arguments.get("headers", {}), "Host": f"{ATTACKER}:{port}"}  # a DNS rebinding page
            refused = client.request(method, path, **{**arguments, "headers": headers})
            assert refused.status_code == 403, (path, refused.text)
            error = refused.json()["error"]
            assert f"--allowed-host {ATTACKER}" in error and "DNS rebinding" in error, error
            assert_headers(refused)
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"CATSDOGS.test:{port}"):
                answer = client.request(method, path, **{**arguments, "headers": {**headers, "Host": host}})
                assert answer.status_code == 200, (path, host, answer.text)
        probabilities = answer.json()["outputs"][0]
        assert probabilities["name"] == "probabilities" and probabilities["data"][0] > 0.5  # the last route saw the cat
        for host in (f"catsdogs.test.{ATTACKER}:{port}", f"127.0.0.1.{ATTACKER}", "", f"127.0.0.1@{ATTACKER}"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 403, host


def test_serve_on_every_address_answers_any_ip_address_and_only_the_names_allowed(loaded):
    app = serve_app(loaded, host="0.0.0.0")
    for host in ("192.0.2.7:8000", "[2001:db8::7]:8000", "localhost:8000", "10.1.2.3"):
        assert client_of(app, host).get("/healthz").status_code == 200, host
    refused = client_of(app, "myhost.lan:8000").get("/healthz")
    assert refused.status_code == 403 and "any IP address of this machine" in refused.json()["error"]
    assert client_of(serve_app(loaded, host="0.0.0.0", allowed_hosts=("MyHost.lan",)), "myhost.lan:8000").get(
        "/healthz").status_code == 200
    bound = serve_app(loaded, host="192.0.2.7")
    assert client_of(bound, "192.0.2.7:8000").get("/healthz").status_code == 200
    assert client_of(bound, "192.0.2.8:8000").get("/healthz").status_code == 403


def test_serve_refuses_a_post_from_another_origin_and_takes_one_without_origin(served):
    url, port = served
    cat = photo("test", "cats", 4200).read_bytes()
    instances = json.dumps({"instances": [{"b64": base64.b64encode(cat).decode()}]})
    model = f"/v1/models/{urllib.parse.quote(XSS)}"
    with httpx.Client(base_url=url, timeout=60) as client:
        for origin in (f"http://{ATTACKER}", f"http://127.0.0.1:{port + 1}", "null"):
            refused = client.post("/predict", files={"files": ("cat.jpg", cat)}, headers={"Origin": origin})
            assert refused.status_code == 403 and "another origin" in refused.json()["error"], origin
        for origin in (f"http://127.0.0.1:{port}", None):  # the page itself; curl, Python
            headers = {"Origin": origin} if origin else {}
            answer = client.post("/predict", files={"files": ("cat.jpg", cat)}, headers=headers)
            assert answer.status_code == 200, answer.text
        # A form any page may post without a preflight: what curl -d sends as well.
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        refused = client.post(f"{model}:predict", content=instances, headers={**form, "Origin": f"http://{ATTACKER}"})
        assert refused.status_code == 403
        answer = client.post(f"{model}:predict", content=instances, headers=form)
        assert answer.status_code == 200 and len(answer.json()["predictions"][0]["probabilities"]) == 2
        answer = client.post("/predict", content=instances, headers=form)  # the labelled answer
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == XSS
        # The Open Inference Protocol's infer, as a page could post it (no preflight for this content type).
        infer = json.dumps({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                        "data": [base64.b64encode(cat).decode()]}]})
        v2_model = f"/v2/models/{urllib.parse.quote(XSS)}"
        refused = client.post(f"{v2_model}/infer", content=infer, headers={**form, "Origin": f"http://{ATTACKER}"})
        assert refused.status_code == 403
        assert client.post(f"{v2_model}/infer", content=infer, headers=form).status_code == 200


def test_every_answer_of_serve_has_the_security_headers(loaded):
    client = client_of(serve_app(loaded))
    for path in ("/", "/docs", "/redoc", "/healthz", "/openapi.json", "/static/app.js", "/no-such-route"):
        assert_headers(client.get(path))
    assert "unsafe-inline" not in client.get("/").headers["content-security-policy"]
    assert "script-src 'self' 'unsafe-inline'" in client.get("/docs").headers["content-security-policy"]  # Swagger UI
    assert "script-src" not in client.get("/redoc").headers["content-security-policy"]  # no inline script at all
    assert_headers(client_of(serve_app(loaded), ATTACKER).get("/"))  # refusals too


def test_names_from_the_model_are_escaped_in_the_api_description(loaded):
    schema = client_of(serve_app(loaded)).get("/openapi.json").json()
    description = schema["info"]["description"]
    assert "<img" not in description and "&lt;img src=x onerror=alert\\(1\\)&gt;" in description, description
    assert XSS not in json.dumps(schema["info"])


def test_with_an_api_key_the_open_routes_name_the_model_and_nothing_else_of_it(loaded):
    client = client_of(serve_app(loaded, name="pets", api_key="a-key"))
    for path in ("/openapi.json", "/healthz", "/", "/docs", "/redoc"):
        text = client.get(path).text
        assert "onerror" not in text and not re.search(r"\bdogs\b", text) and "efficientnet" not in text, path
    assert "pets" in client.get("/openapi.json").text
    assert client.get("/v1/models/pets").status_code == 401


def test_an_api_key_that_http_cannot_carry_is_refused_at_start_up(xss_run, capsys):
    for key in ("clé", " padded", "tab\there", "new\nline"):
        with pytest.raises(ConfigError, match="printable ASCII"):
            ServeSettings(api_key=key)
    assert main(["serve", str(xss_run), "--api-key", "clé"]) == 2
    error = capsys.readouterr().err
    assert "api_key must be printable ASCII" in error and "clé" not in error  # the key stays out of the log
    assert ServeSettings(api_key="a key with inner spaces~!").api_key


def test_allowed_host_is_a_repeatable_option_of_review_too_and_takes_names_only(capsys):
    args = build_parser().parse_args(["review", "run", "--allowed-host", "a.lan", "--allowed-host", "[::1]"])
    assert ServeSettings(allowed_hosts=args.allowed_hosts).allowed_hosts == ("a.lan", "::1")
    for name in ("http://a.lan", "a.lan:8000", "*.lan", "a.lan/x", ""):
        with pytest.raises(ConfigError, match="expected a host name or an IP address"):
            ServeSettings(allowed_hosts=(name,))
    assert main(["review", "no-such-run", "--allowed-host", "a.lan:80"]) == 2
    assert "allowed host 'a.lan:80'" in capsys.readouterr().err


def test_the_serve_command_answers_an_allowed_host_and_refuses_others(xss_run):
    with serve_command(xss_run, "--name", "pets", "--allowed-host", "serve.test") as (url, _):
        port = urllib.parse.urlsplit(url).port
        assert httpx.get(f"{url}/healthz", headers={"Host": f"serve.test:{port}"}, timeout=30).status_code == 200
        assert httpx.get(f"{url}/healthz", headers={"Host": f"other.test:{port}"}, timeout=30).status_code == 403


# Review.

@pytest.fixture(scope="module")
def review_parts(xss_run):
    """(run directory, its photos, its explainer) for review apps."""
    import catsdogs
    from catsdogs.apps.review.photos import read_run_photos

    return xss_run, read_run_photos(xss_run), catsdogs.load(xss_run, "keras").explainer()


def review_app(review_parts, corrections_file, **kwargs):
    from catsdogs.apps.review.app import create_app

    return create_app(*review_parts, corrections_file, TOKEN, **kwargs)


def review_routes():
    """Every route of review as (method, path, httpx arguments)."""
    return [("GET", "/", {}), ("GET", "/photos", {}), ("GET", "/photos/0/photo.jpg", {}),
            ("GET", "/photos/0/gradcam.png", {}), ("GET", "/review/review.js", {}), ("GET", "/openapi.json", {}),
            ("POST", "/photos/0/decision", {"json": {"decision": "keep"}})]


def test_review_answers_only_with_its_token_and_a_token_in_the_address_becomes_a_cookie(review_parts, tmp_path):
    file = tmp_path / "corrections.csv"
    client = client_of(review_app(review_parts, file), follow_redirects=False)
    for wrong in ("none", "cookie", "query", "header"):
        client.cookies.clear()
        if wrong == "cookie":
            client.cookies.set("catsdogs-review-80", "wrong")
        for method, path, arguments in review_routes():
            arguments = {**arguments, "params": {"token": "wrong"}} if wrong == "query" else arguments
            arguments = {**arguments, "headers": {"Authorization": "Bearer wrong"}} if wrong == "header" else arguments
            refused = client.request(method, path, **arguments)
            assert refused.status_code == 403, (path, wrong)
            if path == "/":  # the page says what to open
                assert refused.headers["content-type"].startswith("text/html") and "?token=" in refused.text
            else:
                assert "needs its token" in refused.json()["error"]
            assert_headers(refused)
    assert not file.exists()  # no decision was written

    client.cookies.clear()
    opened = client.get("/", params={"token": TOKEN, "keep": "this"})
    assert opened.status_code == 303 and opened.headers["location"] == "/?keep=this"  # the token leaves the address
    cookie = opened.headers["set-cookie"].lower()
    assert "catsdogs-review-80=" in cookie and "httponly" in cookie and "samesite=strict" in cookie, cookie
    for method, path, arguments in review_routes():  # with the cookie
        assert client.request(method, path, **arguments).status_code == 200, path
    assert file.exists()
    client.cookies.clear()
    for script in ({"params": {"token": TOKEN}}, {"headers": {"Authorization": f"Bearer {TOKEN}"}}):
        assert client.get("/photos", **script).status_code == 200


def test_review_refuses_foreign_hosts_and_origins_even_with_its_token(review_parts, tmp_path):
    file = tmp_path / "corrections.csv"
    app = review_app(review_parts, file, allowed_hosts=("review.test",))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    rebinding = client_of(app, f"{ATTACKER}:8001", headers=bearer)
    for method, path, arguments in review_routes():
        refused = rebinding.request(method, path, **arguments)
        assert refused.status_code == 403 and "DNS rebinding" in refused.json()["error"], path
    assert client_of(app, "review.test:8001", headers=bearer).get("/photos").status_code == 200
    client = client_of(app, "127.0.0.1:8001", headers=bearer)
    refused = client.post("/photos/0/decision", json={"decision": "keep"}, headers={"Origin": f"http://{ATTACKER}"})
    assert refused.status_code == 403 and "another origin" in refused.json()["error"]
    assert not file.exists()
    assert client.post("/photos/0/decision", json={"decision": "keep"},
                       headers={"Origin": "http://127.0.0.1:8001"}).status_code == 200  # the page's own
    for path in ("/", "/photos", "/docs", "/photos/0/photo.jpg"):
        assert_headers(client.get(path))


def test_review_escapes_the_run_name_in_its_api_description(review_parts, tmp_path):
    run_dir, photos, explainer = review_parts
    named = tmp_path / "<img src=x onerror=alert(2)>"
    named.symlink_to(run_dir)
    client = client_of(review_app((named, photos, explainer), tmp_path / "c.csv"),
                         headers={"Authorization": f"Bearer {TOKEN}"})
    description = client.get("/openapi.json").json()["info"]["description"]
    assert "<img" not in description and "&lt;img src=x onerror=alert\\(2\\)&gt;" in description


def test_the_review_command_prints_its_address_with_a_token_that_lets_a_browser_in(xss_run, tmp_path):
    file = tmp_path / "corrections.csv"
    server, url, lines = start_server_command("review", xss_run, "--corrections", file, "--allowed-host", "review.test")
    try:
        port = urllib.parse.urlsplit(url).port
        printed = re.search(r"open (http://\S+)", "".join(lines)).group(1)
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/\?token=[\w-]{{40,}}", printed), printed
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/").status_code == 403 and client.get("/photos").status_code == 403
            review_login(client, lines)
            assert client.get("/photos").status_code == 200
            assert client.get("/photos", headers={"Host": f"review.test:{port}"}).status_code == 200
            assert client.get("/photos", headers={"Host": f"{ATTACKER}:{port}"}).status_code == 403
            assert client.post("/photos/0/decision", json={"decision": "keep"}).status_code == 200
        assert file.exists()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    assert server.returncode == 0


# In Chromium: the pages render under their Content-Security-Policy, and names stay text.

INJECTED = "return document.querySelectorAll('[onerror], img[src=\"x\"]').length"


def test_pages_render_under_their_policy_and_names_stay_text(browser, served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = served
    wait = WebDriverWait(browser, 60)
    browser.get_log("browser")  # what earlier tests left
    browser.get(url + "/")
    wait.until(lambda d: "efficientnet_lite0" in d.find_element(By.ID, "model-info").text)
    assert f"classes {XSS}, dogs" in browser.find_element(By.ID, "model-info").text
    browser.find_element(By.ID, "file-input").send_keys(str(photo("test", "cats", 4200)))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '.card[data-state="done"] .bar-row .class'))
    assert XSS in [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".bar-row .class")]
    assert browser.execute_script(INJECTED) == 0

    browser.get(url + "/docs")
    wait.until(lambda d: len(d.find_elements(By.CLASS_NAME, "opblock")) >= 5)  # Swagger UI ran
    wait.until(lambda d: XSS in d.find_element(By.CLASS_NAME, "info").text)
    assert browser.execute_script(INJECTED) == 0

    browser.get(url + "/redoc")
    wait.until(lambda d: XSS in d.find_element(By.TAG_NAME, "body").text)  # ReDoc rendered the description
    assert browser.execute_script(INJECTED) == 0
    # ReDoc's menu shows its maker's logo from their CDN: the policy stops that one, as it should.
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
              and "Loading the image 'https://cdn.redoc.ly/" not in entry["message"]]
    assert not errors, errors  # a Content-Security-Policy violation is one
