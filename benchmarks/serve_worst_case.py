"""`catsdogs serve` under hostile load (issue 23): 8 concurrent requests of the worst shape for each route.

Starts `catsdogs serve` with its default limits on a free loopback port and, one shape at a time,
sends 8 concurrent requests of: 2 million tiny `{"b64": "AAAA"}` instances (a 31 MiB JSON body),
two 7000x7000 PNGs (98 megapixels in under 2 MB; multipart, then JSON), one PNG of random pixels
that fills the body limit (multipart, then JSON). Then 8, and then 63 (the connection limit less
one), connections send their request headers and never their body, while a normal photo is sent
every 0.25 s until it is answered. Throughout, RSS is sampled and /healthz asked (on a new
connection each time) every 100 ms. Per shape it reports the statuses, the server's peak RSS (the
kernel's VmHWM, reset before each shape) against the worst case docs/serving.md states, and the slowest
/healthz; it exits non-zero if a peak is over that number or a /healthz took 0.5 s or more.

    python benchmarks/serve_worst_case.py RUN_DIR          # about 4 minutes (two 60 s body timeouts)
    python benchmarks/serve_worst_case.py RUN_DIR --json   # the results as JSON too
"""

import argparse
import base64
import concurrent.futures
import io
import json
import math
import socket
import sys
import time

import httpx
import numpy as np
from load_test import DEFAULT_PHOTOS, ROOT, Server, read_photos
from PIL import Image
from stress_serve import RssSampler, rss_bytes, stated_worst_case_bytes

from catsdogs.config.serve import ServeSettings

sys.path.insert(0, str(ROOT / "tests"))
from corpus import large_png, tiny_instances_json  # noqa: E402  (the tests' hostile inputs)
from health_watch import HealthWatch  # noqa: E402

CONCURRENCY = 8
SLOW_HEALTH_S = 0.5


class Measurement:
    """RSS and /healthz while its `with` block runs: `summary()` after it."""

    def __init__(self, url, pid):
        self.url, self.pid = url, pid

    def __enter__(self):
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")  # resets the kernel's peak RSS (VmHWM) to now
        self.before, self.start = rss_bytes(self.pid), time.perf_counter()
        self.rss, self.health = RssSampler(self.pid, interval=0.1), HealthWatch(self.url)
        self.rss.start()
        self.health.start()
        return self

    def __exit__(self, *exc_info):
        self.seconds = time.perf_counter() - self.start
        for watcher in (self.rss, self.health):
            watcher.stop.set()
            watcher.join()
        self.peak = max(rss_bytes(self.pid, "VmHWM"), self.rss.peak)

    def summary(self):
        return {"seconds": round(self.seconds, 1), "rss_before_gb": round(self.before / 1e9, 3),
                "rss_peak_gb": round(self.peak / 1e9, 3), "slowest_healthz_ms": round(self.health.slowest * 1000),
                "healthz_statuses": self.health.statuses}


def noise_png(max_bytes):
    """A square RGB PNG of random pixels, stored uncompressed: the most pixels' worth of file that
    fits in `max_bytes` (zlib cannot shrink noise, so nothing smaller carries as much)."""
    side = math.isqrt(max_bytes // 3) - 64  # room for the filter bytes and the zlib and PNG framing
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    assert len(buffer.getvalue()) <= max_bytes
    return buffer.getvalue()


def shapes(model_name, max_upload_bytes):
    """Shape name -> (expected status, arguments of one request of that shape)."""
    json_route = f"/v1/models/{model_name}:predict"
    large = large_png(7000)
    upload = noise_png(max_upload_bytes - 1000)  # room for the multipart framing
    embedded = noise_png((max_upload_bytes - 100) * 3 // 4)  # base64 makes 4 bytes of 3

    def as_json(*files):
        return {"instances": [{"b64": base64.b64encode(data).decode()} for data in files]}

    return {
        "tiny instances, JSON (31 MiB)": (413, {"url": json_route, "content": tiny_instances_json(31 * 2**20),
                                                "headers": {"Content-Type": "application/json"}}),
        "two 7000x7000 PNGs, multipart": (200, {"url": "/predict", "files": [("files", ("a.png", large)),
                                                                             ("files", ("b.png", large))]}),
        "two 7000x7000 PNGs, JSON": (200, {"url": json_route, "json": as_json(large, large)}),
        f"noise PNG of {len(upload) / 2**20:.1f} MiB, multipart": (200, {"url": "/predict",
                                                                       "files": {"files": ("noise.png", upload)}}),
        f"noise PNG of {len(embedded) / 2**20:.1f} MiB, JSON": (200, {"url": json_route, "json": as_json(embedded)}),
    }


def concurrent_requests(url, arguments, count=CONCURRENCY):
    """Sends `count` copies of one request at once; returns {status: how many}."""
    def one(_):
        try:
            return str(httpx.post(url + arguments["url"], **{k: v for k, v in arguments.items() if k != "url"},
                                  timeout=300).status_code)
        except httpx.HTTPError as error:
            return type(error).__name__

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(one, range(count)))
    return {status: statuses.count(status) for status in sorted(set(statuses))}


def stalled_bodies(url, model_name, count, photo, give_up_s):
    """`count` connections send a JSON predict request's headers and never its body; meanwhile a
    normal photo is sent every 0.25 s (each on a new connection) until it gets an answer other
    than 503. Returns (the stalled connections' answers {status line: how many}, seconds until
    the normal photo was answered, seconds until the last stalled connection was closed)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = (f"POST /v1/models/{model_name}:predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n").encode()
    connections = [socket.create_connection((host, int(port)), timeout=give_up_s) for _ in range(count)]
    for connection in connections:
        connection.sendall(head)
    start = time.perf_counter()
    answered = None
    while answered is None and time.perf_counter() - start < give_up_s:
        try:
            status = httpx.post(f"{url}/predict", files={"files": photo}, timeout=give_up_s).status_code
        except httpx.HTTPError:
            status = 503  # refused at the connection limit before any answer: try again too
        if status != 503:
            answered = round(time.perf_counter() - start, 1)
        else:
            time.sleep(0.25)
    answers = {}
    for connection in connections:
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
            line = answer.split(b"\r\n", 1)[0].decode() or "closed without an answer"
        except OSError as error:  # socket.timeout: never answered or never closed
            line = type(error).__name__
        answers[line] = answers.get(line, 0) + 1
        connection.close()
    return answers, answered, round(time.perf_counter() - start, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory or .keras file to serve")
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS), help="folder of class folders of .jpg photos")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()

    defaults = ServeSettings()
    name, data, _ = read_photos(args.photos, per_class=1)[0]
    server = Server(args.model, max_batch_size=defaults.max_batch_size, max_wait_ms=defaults.max_wait_ms)
    results = {}
    try:
        url = server.wait_for_url()
        pid = server.process.pid
        model_name = httpx.get(f"{url}/healthz", timeout=60).json()["model"]
        requests = shapes(model_name, defaults.max_upload_bytes)
        for expected, arguments in requests.values():  # warm-up, not counted: TensorFlow's buffers
            concurrent_requests(url, arguments)
        time.sleep(2)
        for shape, (expected, arguments) in requests.items():
            with Measurement(url, pid) as measured:
                statuses = concurrent_requests(url, arguments)
            results[shape] = {"expected": expected, "statuses": statuses, **measured.summary()}
            time.sleep(1)
        for count in (CONCURRENCY, defaults.max_connections - 1):
            with Measurement(url, pid) as measured:
                answers, answered, closed = stalled_bodies(url, model_name, count, (name, data),
                                                           give_up_s=defaults.body_timeout_s + 60)
            results[f"{count} stalled bodies"] = {"statuses": answers, "photo_answered_s": answered,
                                                  "all_closed_s": closed, **measured.summary()}
        time.sleep(2)
        after = rss_bytes(pid)
    finally:
        server.stop()

    worst_case = stated_worst_case_bytes()
    print(f"the stated worst case: {worst_case / 1e9} GB; RSS after all shapes: {after / 1e9:.2f} GB\n")
    print("| shape (8 at once unless said) | answers | seconds | RSS before | RSS peak | slowest /healthz (answers) |")
    print("|---|---|---:|---:|---:|---:|")
    for shape, result in results.items():
        answers = ", ".join(f"{count} x {status}" for status, count in result["statuses"].items())
        if "photo_answered_s" in result:
            answers += (f"; a normal photo answered after {result['photo_answered_s']} s, all stalled closed after "
                        f"{result['all_closed_s']} s")
        health = ", ".join(f"{count} x {status}" for status, count in result["healthz_statuses"].items())
        print(f"| {shape} | {answers} | {result['seconds']} | {result['rss_before_gb']:.2f} GB | "
              f"{result['rss_peak_gb']:.2f} GB | {result['slowest_healthz_ms']} ms ({health}) |")
    if args.json:
        print(json.dumps({"results": results, "rss_after_gb": round(after / 1e9, 3),
                          "stated_worst_case_gb": worst_case / 1e9}))
    within = all(result["rss_peak_gb"] * 1e9 < worst_case and result["slowest_healthz_ms"] < SLOW_HEALTH_S * 1000
                 and ("expected" not in result or set(result["statuses"]) == {str(result["expected"])})
                 for result in results.values())
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
