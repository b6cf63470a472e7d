"""Shared fixtures: images made by the tests, slices of the real photos, one trained run."""

import contextlib
import io
import json
import logging
import os
import pathlib
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "cats-and-dogs"
UNKNOWN_DATA = ROOT.parent / "shared" / "data" / "not-cats-or-dogs"  # photos of neither class: only to measure


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains or runs a full backbone (still minutes on CPU)")


# The files that take longest, longest first: pytest-xdist hands out whole files in collection order, and one
# of these started last would run on alone while the other worker idles (measured with --durations).
LONGEST_FIRST = ("test_ray.py", "test_reliability.py", "test_library.py", "test_train.py", "test_readme_promises.py",
                 "test_ensemble.py", "test_export.py", "test_serve_protocols.py")


def pytest_collection_modifyitems(items):
    """The longest files first (`LONGEST_FIRST`); the others, and the tests within each file, in their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Captured output as valid UTF-8: tests of file names that are not (their bytes kept by Python as lone
    surrogates) log them, and pytest-xdist's workers cannot send such text to the main process."""
    def utf8(text):
        return text.encode("utf-8", "backslashreplace").decode("utf-8")

    report = (yield).get_result()
    report.sections = [(name, utf8(text)) for name, text in report.sections]
    if report.longrepr is not None and utf8(str(report.longrepr)) != str(report.longrepr):
        report.longrepr = utf8(str(report.longrepr))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Features and converted weights go to a fresh cache, never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["CATSDOGS_CACHE"] = str(cache)
    return cache


def photo(split, cls, number):
    """A real photo of the shared data, e.g. photo("test", "cats", 4001)."""
    folder = {"train": "training_set", "test": "test_set"}[split]
    path = SHARED_DATA / folder / cls / f"{cls[:-1]}.{number}.jpg"
    if not path.exists():
        missing = f"shared data not found at {SHARED_DATA}"
        if os.environ.get("CI"):  # CI has the shared data: its absence there is a failure, never a skip
            pytest.fail(missing)
        pytest.skip(missing)
    return path


def unknown_photo(folder, name):
    """A real photo of neither class, e.g. unknown_photo("cars", "00029.jpg")."""
    path = UNKNOWN_DATA / folder / name
    if not path.exists():
        missing = f"shared data not found at {UNKNOWN_DATA}"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return path


def link_photos(folder, split, cls, numbers):
    """Symlinks real photos into a test dataset folder (the shared data is never copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        source = photo(split, cls, number)
        (folder / source.name).symlink_to(source)


def real_dataset(root, train_per_class, test_per_class):
    """A Kaggle-layout slice of the shared data: the first photos of each class."""
    for cls in ("cats", "dogs"):
        link_photos(root / "training_set" / "training_set" / cls, "train", cls, range(1, train_per_class + 1))
        link_photos(root / "test_set" / "test_set" / cls, "test", cls, range(4001, 4001 + test_per_class))
    return root


def image_bytes(image, fmt, **save_args):
    """Encodes a PIL image or a numpy array in the given format."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, fmt, **save_args)
    return buffer.getvalue()


def gradient(height=40, width=60, mode="RGB"):
    """A small image whose every pixel differs, so orientation and channels can be checked.

    Returns a numpy array for RGB, else a PIL image in that mode.
    """
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    return rgb if mode == "RGB" else Image.fromarray(rgb).convert(mode)


def run_bounded(code, *arguments, timeout=60, memory_bytes=2 << 30):
    """Runs Python `code` (with `arguments` as sys.argv[1:]) in a subprocess that is killed after
    `timeout` seconds and refused data memory past `memory_bytes` (RLIMIT_DATA): a test of what
    could hang or fill the memory fails instead of stopping the suite or the machine.

    Returns:
        the `subprocess.CompletedProcess`, output as text; raises `subprocess.TimeoutExpired`.
    """
    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))

    return subprocess.run([sys.executable, "-c", code, *map(str, arguments)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)


def built_once(tmp_path_factory, name, build):
    """What `build(folder)` returns, built once per test session, also when pytest-xdist runs the suite in
    several worker processes: the first worker builds it into the session's shared temporary folder while
    the others wait on its lock, then every worker reads the JSON the builder wrote.

    Args:
        name: the resource's name (its folder, lock and JSON file in the shared folder).
        build: folder -> a JSON-serializable value (paths as str).
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # one folder for the session, above each worker's own
    description = shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not description.exists():
            folder = shared / name
            folder.mkdir()
            description.write_text(json.dumps(build(folder)))
    return json.loads(description.read_text())


@pytest.fixture(scope="session")
def lite0_run(tmp_path_factory):
    """One real training run of efficientnet_lite0 on 100 + 100 photos, shared by several tests
    (by every worker under pytest-xdist): (run directory, its metrics, its data folder)."""

    def train(folder):
        import catsdogs

        data = real_dataset(folder / "data", train_per_class=100, test_per_class=100)
        # A cache of its own, beside it (config.json names it), so that every worker can read its features.
        run = catsdogs.train(data, backbone="efficientnet_lite0", runs_dir=str(folder / "runs"), name="lite0",
                             cache_dir=str(folder / "cache"))
        return {"run_dir": str(run.run_dir), "metrics": run.metrics, "data": str(data)}

    run = built_once(tmp_path_factory, "lite0_run", train)
    return pathlib.Path(run["run_dir"]), run["metrics"], pathlib.Path(run["data"])


def collage_dataset(root, train_per_kind=10, test_per_kind=4):
    """A small multi-label set from the shared photos, with its labels.csv (path, label, split): collages of two
    cats ("cats"), two dogs ("dogs") and a cat and a dog ("cats;dogs") side by side (`data.collages`), training
    ones from the training folder and test ones from the test folder, and photos of neither class with no label
    (6 training, 2 test)."""
    from catsdogs.data.collages import make_collages
    from catsdogs.utils.csvfiles import write_csv

    count = 3 * max(train_per_kind, test_per_kind)  # photos of a class that the collages of a split use at most
    rows = []
    for split, first in (("train", 1), ("test", 4001)):
        photos = {cls: [photo(split, cls, number) for number in range(first, first + count)] for cls in ("cats", "dogs")}
        per_kind = train_per_kind if split == "train" else test_per_kind
        rows += [{**row, "path": f"{split}/{row['path']}", "split": split}
                 for row in make_collages(photos, root / split, per_kind, seed=1)]
    (root / "neither").mkdir()
    for split, folder, names in (("train", "cars", ("00029.jpg", "00055.jpg", "00084.jpg")),
                                 ("train", "buildings", ("urban_img_001.jpg", "urban_img_002.jpg", "urban_img_003.jpg")),
                                 ("test", "cars", ("00193.jpg",)), ("test", "buildings", ("urban_img_004.jpg",))):
        for name in names:
            (root / "neither" / f"{folder}-{name}").symlink_to(unknown_photo(folder, name))
            rows.append({"path": f"neither/{folder}-{name}", "label": "", "split": split})
    write_csv(rows, root / "labels.csv")
    return root


@pytest.fixture(scope="session")
def multilabel_run(tmp_path_factory):
    """One real multi-label training of efficientnet_lite0 at 128 px on a small collage set (`collage_dataset`).

    Returns:
        (run directory, the `Run`, data folder).
    """
    import catsdogs

    data = collage_dataset(tmp_path_factory.mktemp("collages"))
    run = catsdogs.train(data, labels=str(data / "labels.csv"), multi_label=True, backbone="efficientnet_lite0",
                         image_size=128, runtime="keras", runs_dir=str(tmp_path_factory.mktemp("runs")),
                         name="multilabel")
    return pathlib.Path(run.run_dir), run, data


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory):
    """One `catsdogs train --learning-curve` on 20 + 20 real training photos and 10 + 10 test ones, with
    crops of training photos planted beside them (four) and in the test folder (one): near-duplicates
    only the features find.

    Returns:
        (run directory, {crop: (kind, the photo it copies)}, data folder, what the command printed and logged).
    """
    from catsdogs.cli import main
    from planted import plant

    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(1)
    planted = {}
    for cls in ("cats", "dogs"):
        link_photos(root / "train" / cls, "train", cls, range(1, 21))
        link_photos(root / "test" / cls, "test", cls, range(4001, 4011))
        for number, split in ((1, "train"), (2, "train"), (3, "test")):
            if split == "test" and cls == "dogs":
                continue
            copy = root / split / cls / f"crop-of-{cls[:-1]}.{number}.jpg"
            plant(photo("train", cls, number), "cropped", copy, rng)
            planted[str(copy)] = ("cropped", str(root / "train" / cls / f"{cls[:-1]}.{number}.jpg"))
    logs, printed = io.StringIO(), io.StringIO()
    handler, logger = logging.StreamHandler(logs), logging.getLogger("catsdogs")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(printed):
            assert main(["train", str(root), "--backbone", "efficientnet_lite0", "--runtime", "keras",
                         "--precision", "float32", "--open-set", "none", "--learning-curve", "--seed", "3",
                         "--runs-dir", str(tmp_path_factory.mktemp("runs")), "--name", "planted"]) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    run_dir = pathlib.Path(printed.getvalue().split("run directory: ")[1].split()[0])
    return run_dir, planted, root, logs.getvalue() + printed.getvalue()


class ServerThread:
    """A real uvicorn server on a free loopback port, in a thread: `with ServerThread(app) as url:`."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 120  # start-up traces the model
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc_info):
        self.server.should_exit = True
        self.thread.join(timeout=30)


# Every format and quantization catsdogs exports, each into the run's own exports folder (where export.json's
# source is trusted to name the run), checked on 12 test photos and, for int8, calibrated on 16 training photos.
EXPORTS = (("onnx", "float32"), ("tflite", "float32"), ("tflite", "int8"), ("tflite", "float16"),
           ("savedmodel", "float32"))


@pytest.fixture(scope="session")
def lite0_exports(lite0_run, tmp_path_factory):
    """The lite0 run exported by `catsdogs export` in every format: (format, quantization) -> export folder."""

    def export(_folder):
        from catsdogs.cli import main
        from catsdogs.store import export_dir

        folders = []
        for format, quantization in EXPORTS:
            argv = ["export", str(lite0_run[0]), "--format", format, "--parity-images", "12", "--batch-size", "4"]
            if format == "tflite":
                argv += ["--quantization", quantization, "--calibration-images", "16"]
            assert main(argv) == 0
            folder = export_dir.default_folder(lite0_run[0] / "model.keras", format, quantization)
            folders.append([format, quantization, str(folder)])
        return folders

    return {(format, quantization): folder
            for format, quantization, folder in built_once(tmp_path_factory, "lite0_exports", export)}


@pytest.fixture(scope="session")
def lite0_server(lite0_run):
    """The lite0 run served for real on loopback, with small limits so that tests can reach them.

    Yields:
        (base URL, the FastAPI app).
    """
    from catsdogs.apps.serve.app import create_app, load_served_model
    from catsdogs.config.serve import ServeSettings

    classifier, name, metrics = load_served_model(lite0_run[0])
    settings = ServeSettings(max_batch_size=8, max_wait_ms=50, max_upload_bytes=2_000_000, max_pixels=4_000_000,
                             max_request_pixels=6_000_000, max_images=4)
    app = create_app(classifier, name, metrics, settings)
    with ServerThread(app) as url:
        yield url, app


LISTENING = re.compile(r"running on (http://[^ ]+)")  # uvicorn's line
REVIEW_ADDRESS = re.compile(r"open ((http://[^ /]+)/\?token=[^ ]+)")  # the address `catsdogs review` prints


def start_server_command(*arguments, env=None):
    """`catsdogs ARGUMENTS --port 0` (serve, review) in a subprocess, returned once it listens (review:
    once it has printed its address with the token, which `review_login` opens).

    Returns:
        (the `subprocess.Popen`, the URL it listens on, the lines it has printed so far).
    """
    command = [sys.executable, "-m", "catsdogs.cli", *map(str, arguments), "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    ready = REVIEW_ADDRESS if arguments[0] == "review" else LISTENING
    deadline, lines, started = time.monotonic() + 180, [], None
    while time.monotonic() < deadline and not started:
        line = server.stdout.readline()
        if not line:
            break
        lines.append(line)
        started = ready.search(line)
    if not started:
        server.kill()
        server.wait()
    assert started, "".join(lines)
    return server, started.group(2 if ready is REVIEW_ADDRESS else 1), lines


def review_login(client, lines):
    """Opens the address that `catsdogs review` printed (`lines`), as a browser does: the cookie it
    sets lets `client` (an httpx.Client) in from then on."""
    address = REVIEW_ADDRESS.search("".join(lines)).group(1)
    page = client.get(address, follow_redirects=True)
    assert page.status_code == 200 and "token" not in str(page.url), (page.status_code, page.url)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Debian's chromedriver; Selenium is never let to download one."""
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        reason = "needs Chromium and its driver: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run on CI; it {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,760"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver), options=options)
    yield driver
    driver.quit()


@contextlib.contextmanager
def serve_command(*arguments, env=None):
    """`catsdogs serve ARGUMENTS --port 0` in a subprocess, stopped with Ctrl-C at the end.

    Yields:
        (the URL it listens on, the lines it has printed so far).
    """
    server, url, lines = start_server_command("serve", *arguments, env=env)
    try:
        yield url, lines
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    assert server.returncode == 0
