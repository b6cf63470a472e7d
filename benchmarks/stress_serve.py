"""Stress test of `catsdogs serve` (issue 12): hostile and heavy traffic mixed with real photos.

Starts `catsdogs serve` with its default limits on a free loopback port and sends a bounded
number of requests at a fixed concurrency, mixing real photos, photos with Grad-CAM heatmaps,
bad uploads (the test corpus' broken files, malformed JSON and base64, wrong content types) and
7000x7000 PNGs (49 megapixels in under a megabyte). It reports the 5xx count (target 0), anything
else unexpected, latency percentiles, and the server's RSS: before, at its peak (against the
worst case docs/serving.md states) and after (target: within 10% of before).

    python benchmarks/stress_serve.py runs/lite0                 # 1000 requests, 16 at a time
    python benchmarks/stress_serve.py runs/lite0 --requests 200  # shorter
"""

import argparse
import asyncio
import json
import pathlib
import random
import re
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
from load_test import DEFAULT_PHOTOS, ROOT, Server, read_photos

sys.path.insert(0, str(ROOT / "tests"))
from corpus import build_corpus, large_png  # noqa: E402  (the tests' corpus of broken files)

# Share of each kind of request; the rest are single photos.
MIX = {"heatmap": 0.15, "bad": 0.20, "large": 0.05}


def rss_bytes(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def stated_worst_case_bytes():
    match = re.search(r"RSS stays under \*\*([\d.]+) GB\*\*", (ROOT / "docs" / "serving.md").read_text())
    return float(match.group(1)) * 1e9 if match else None


class RssSampler(threading.Thread):
    """Samples a process' RSS every `interval` seconds; `peak` is the largest seen."""

    def __init__(self, pid, interval=0.02):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.stop = pid, interval, 0, threading.Event()

    def run(self):
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pid))


def bad_requests(folder):
    """(kind, request arguments) of uploads that must get a 4xx."""
    requests = [(kind, {"url": "/predict", "files": {"files": (path.name, path.read_bytes())}})
                for kind, path, expected in build_corpus(folder) if expected == "error"]
    json_route = "/v1/models/{name}:predict"
    requests += [
        ("malformed JSON", {"url": json_route, "content": b'{"instances": [', "headers": {"Content-Type": "application/json"}}),
        ("non-ASCII base64", {"url": json_route, "json": {"instances": [{"b64": "chat-été"}]}}),
        ("no instances", {"url": json_route, "json": {"instances": []}}),
        ("wrong content type", {"url": "/predict", "content": b"x", "headers": {"Content-Type": "image/jpeg"}}),
        ("too many images", {"url": "/predict", "files": [("files", ("a.png", b"x"))] * 40}),
        ("unknown model", {"url": "/v1/models/other:predict", "json": {"instances": [{"b64": "AAAA"}]}}),
    ]
    return requests


def plan(count, photos, bad, large, seed=0):
    """The list of (kind, expected status class, request arguments), shuffled."""
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        draw = rng.random()
        name, data, _ = photos[i % len(photos)]
        if draw < MIX["large"]:
            requests.append(("large", 200, {"url": "/predict", "files": {"files": ("large.png", large)}}))
        elif draw < MIX["large"] + MIX["bad"]:
            kind, arguments = bad[i % len(bad)]
            requests.append((f"bad: {kind}", 400, arguments))
        elif draw < MIX["large"] + MIX["bad"] + MIX["heatmap"]:
            requests.append(("heatmap", 200, {"url": "/predict?heatmap=true", "files": {"files": (name, data)}}))
        else:
            requests.append(("photo", 200, {"url": "/predict", "files": {"files": (name, data)}}))
    return requests


async def run_all(url, model_name, requests, concurrency):
    """Sends every request, `concurrency` at a time; returns (kind, expected, status, seconds) each."""
    results, queue = [], asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        async def worker():
            while not queue.empty():
                kind, expected, arguments = queue.get_nowait()
                arguments = {**arguments, "url": arguments["url"].format(name=model_name)}
                start = time.perf_counter()
                try:
                    status = (await client.post(**arguments)).status_code
                except httpx.HTTPError as error:
                    status = f"no answer ({type(error).__name__})"
                results.append((kind, expected, status, time.perf_counter() - start))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory or .keras file to serve")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS), help="folder of class folders of .jpg photos")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()

    photos = read_photos(args.photos, per_class=50)
    with tempfile.TemporaryDirectory(prefix="catsdogs-stress-") as folder:
        bad = bad_requests(pathlib.Path(folder))
    large = large_png(7000)
    requests = plan(args.requests, photos, bad, large)
    server = Server(args.model, max_batch_size=16, max_wait_ms=5)
    try:
        url = server.wait_for_url()
        model_name = httpx.get(f"{url}/healthz", timeout=60).json()["model"]
        pid = server.process.pid
        # Warm-up, not counted: every kind once, so that "before" is the server's working state.
        warm_up = [plan(1, photos, bad, large, seed)[0] for seed in range(40)]
        asyncio.run(run_all(url, model_name, warm_up, args.concurrency))
        time.sleep(2)
        before = rss_bytes(pid)
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets the kernel's peak RSS (VmHWM) to now
        sampler = RssSampler(pid)
        sampler.start()
        start = time.perf_counter()
        results = asyncio.run(run_all(url, model_name, requests, args.concurrency))
        elapsed = time.perf_counter() - start
        sampler.stop.set()
        peak = max(rss_bytes(pid, "VmHWM"), sampler.peak)
        time.sleep(2)
        after = rss_bytes(pid)
    finally:
        server.stop()

    server_errors = [r for r in results if not isinstance(r[2], int) or r[2] >= 500]
    unexpected = [r for r in results if isinstance(r[2], int) and r[2] < 500
                  and (r[2] == 200) != (r[1] == 200)]
    latencies = np.array([r[3] for r in results]) * 1000
    kinds = {}
    for kind, _, status, _ in results:
        kinds.setdefault(kind.split(":")[0], {}).setdefault(str(status), 0)
        kinds[kind.split(":")[0]][str(status)] += 1
    worst_case = stated_worst_case_bytes()
    summary = {
        "requests": len(results), "concurrency": args.concurrency, "seconds": round(elapsed, 1),
        "server_errors": len(server_errors), "unexpected": len(unexpected), "statuses_by_kind": kinds,
        "p50_ms": round(float(np.percentile(latencies, 50)), 1), "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "rss_before_gb": round(before / 1e9, 3), "rss_peak_gb": round(peak / 1e9, 3), "rss_after_gb": round(after / 1e9, 3),
        "stated_worst_case_gb": worst_case and worst_case / 1e9,
    }
    print(f"{len(results)} requests at {args.concurrency}-way concurrency in {elapsed:.1f} s: "
          f"{len(server_errors)} 5xx or unanswered, {len(unexpected)} unexpected; p50 {summary['p50_ms']} ms, "
          f"p99 {summary['p99_ms']} ms; RSS before {summary['rss_before_gb']} GB, peak {summary['rss_peak_gb']} GB "
          f"(the stated worst case: {summary['stated_worst_case_gb']} GB), after {summary['rss_after_gb']} GB")
    print("statuses by kind:", kinds)
    for kind, expected, status, _ in (server_errors + unexpected)[:10]:
        print(f"  {kind}: expected {'200' if expected == 200 else '4xx'}, got {status}")
    if args.json:
        print(json.dumps(summary))
    ok = (not server_errors and not unexpected and after < 1.10 * before
          and (worst_case is None or peak < worst_case))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
