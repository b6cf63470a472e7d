"""Load test of `catsdogs serve`: real photos over loopback, latency percentiles and throughput.

Starts `catsdogs serve` itself (or uses --url, which must be a loopback address), sends a bounded
number of requests at a fixed concurrency, and exits non-zero if any request gets a 5xx or no
answer at all. Warm-up requests come first and are not counted.

    python benchmarks/load_test.py runs/lite0                       # 1000 requests, 8 at a time
    python benchmarks/load_test.py runs/lite0 --max-batch-size 1    # server batching off
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --route tfserving
"""

import argparse
import asyncio
import base64
import ipaddress
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

import httpx
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "cats-and-dogs" / "test_set"


def read_photos(folder, per_class):
    """(file name, bytes, true class) of the first photos of each class folder."""
    photos = []
    for class_dir in sorted(p for p in pathlib.Path(folder).iterdir() if p.is_dir()):
        for path in sorted(class_dir.glob("*.jpg"))[:per_class]:
            photos.append((path.name, path.read_bytes(), class_dir.name))
    if not photos:
        raise SystemExit(f"{folder}: no class folders of .jpg photos")
    return photos


def check_loopback(url):
    host = urllib.parse.urlparse(url).hostname
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"{url}: this load test only targets this machine (127.0.0.1, localhost, ::1)")


class Server:
    """`catsdogs serve` in a subprocess on a free port; its log goes to a temporary file."""

    def __init__(self, model, max_batch_size, max_wait_ms):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="catsdogs-serve-")
        command = [sys.executable, "-m", "catsdogs.cli", "serve", model, "--port", "0",
                   "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_for_url(self, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.log.seek(0)
            started = re.search(r"running on (http://\S+)", self.log.read())
            if started:
                return started.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.log.seek(0)
        raise SystemExit(f"the server did not start:\n{self.log.read()[-3000:]}")

    def stop(self):
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def request_arguments(route, model_name, photo):
    name, data, _ = photo
    if route == "upload":
        return "/predict", {"files": {"files": (name, data, "image/jpeg")}}
    return f"/v1/models/{model_name}:predict", {"json": {"instances": [{"b64": base64.b64encode(data).decode()}]}}


def answered_label(route, answer, classes):
    """The label of a 200 answer: catsdogs' labelled answer names it; TF Serving's gives the probabilities
    (by name, or the list itself where the model has no open-set score)."""
    prediction = answer["predictions"][0]
    if route == "upload":
        return prediction["label"]
    probabilities = prediction["probabilities"] if isinstance(prediction, dict) else prediction
    return classes[int(np.argmax(probabilities))]


async def run_load(url, photos, route, requests, concurrency, warmup, time_limit):
    """Sends the requests; returns (latencies in s, status codes, correct labels, wall seconds)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        model_name = (await client.get("/healthz")).json()["model"]
        classes = (await client.get(f"/v1/models/{model_name}")).json()["classes"]
        latencies, statuses, correct = [], [], 0
        next_index = 0

        async def worker(count, record):
            nonlocal next_index, correct
            while next_index < count:
                photo = photos[next_index % len(photos)]
                next_index += 1
                path, arguments = request_arguments(route, model_name, photo)
                start = time.perf_counter()
                try:
                    response = await client.post(path, **arguments)
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0  # no answer
                if record:
                    latencies.append(time.perf_counter() - start)
                    statuses.append(status)
                    if status == 200:
                        correct += answered_label(route, response.json(), classes) == photo[2]

        await asyncio.gather(*(worker(warmup, False) for _ in range(concurrency)))
        next_index = 0
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(requests, True) for _ in range(concurrency))), time_limit)
        return latencies, statuses, correct, time.perf_counter() - start, (await client.get("/healthz")).json()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="run directory or .keras file to serve (not with --url)")
    parser.add_argument("--url", help="a running server on this machine instead")
    parser.add_argument("--route", choices=("upload", "tfserving"), default="upload",
                        help="POST /predict (multipart) or /v1/models/NAME:predict (base64 JSON)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=32, help="requests sent first and not counted")
    parser.add_argument("--max-batch-size", type=int, default=16, help="server batching; 1 turns it off")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS), help="folder of class folders of .jpg photos")
    parser.add_argument("--per-class", type=int, default=50, help="photos read from each class folder")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds before the test gives up")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.url):
        parser.error("give either a model to serve or --url")

    photos = read_photos(args.photos, args.per_class)
    server = None if args.url else Server(args.model, args.max_batch_size, args.max_wait_ms)
    try:
        url = args.url or server.wait_for_url()
        check_loopback(url)
        latencies, statuses, correct, seconds, health = asyncio.run(run_load(
            url, photos, args.route, args.requests, args.concurrency, args.warmup, args.time_limit))
    finally:
        if server:
            server.stop()

    milliseconds = 1000 * np.array(latencies)
    statuses = np.array(statuses)
    batching = health["batching"]
    result = {
        "requests": len(statuses), "concurrency": args.concurrency, "route": args.route,
        "max_batch_size": batching["max_batch_size"], "max_wait_ms": batching["max_wait_ms"],
        "ok": int((statuses == 200).sum()), "client_errors": int(((statuses >= 400) & (statuses < 500)).sum()),
        "server_errors": int((statuses >= 500).sum()), "no_answer": int((statuses == 0).sum()),
        "correct_labels": correct,
        **{f"p{q}_ms": round(float(np.percentile(milliseconds, q)), 1) for q in (50, 95, 99)},
        "max_ms": round(float(milliseconds.max()), 1),
        "requests_per_s": round(len(statuses) / seconds, 1), "seconds": round(seconds, 1),
        "mean_batch": round(batching["images"] / max(1, batching["batches"]), 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['requests']} requests, {args.concurrency} at a time, route {args.route}, server batching "
              f"max {result['max_batch_size']} images / {result['max_wait_ms']} ms wait")
        print(f"ok {result['ok']} ({correct} labelled right), client errors {result['client_errors']}, "
              f"server errors {result['server_errors']}, no answer {result['no_answer']}")
        print(f"latency ms: p50 {result['p50_ms']}  p95 {result['p95_ms']}  p99 {result['p99_ms']}  max {result['max_ms']}")
        print(f"throughput {result['requests_per_s']} requests/s over {result['seconds']} s; "
              f"mean batch {result['mean_batch']} images (server total, warm-up included)")
    return 1 if result["server_errors"] or result["no_answer"] else 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
