"""Latency and throughput of each protocol of `catsdogs serve`, in one process and on Ray Serve.

For each deployment (one process; Ray Serve with one replica and with two), the command is
started, timed until it listens, and then, on the same photos, each protocol is sent the same
requests of one photo each:

- tf-serving: TF Serving's REST API, row format, base64 JSON (POST /v1/models/NAME:predict);
- labelled: catsdogs' labelled answer, the same JSON (POST /predict);
- v2-binary: the Open Inference Protocol with the photo as BYTES in binary data, as tritonclient sends it;
- v2-json: the same with the photo as a base64 string in JSON.

Latency: one request at a time (median and 95th percentile). Throughput: photos per second at a
fixed concurrency. Memory: the RSS of the serving processes (each replica's, and the whole
process tree of the command: Ray's own processes included).

    python benchmarks/serving_protocols.py runs/lite0 --output results.json
"""

import argparse
import asyncio
import base64
import json
import pathlib
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import httpx
import psutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from load_test import DEFAULT_PHOTOS, read_photos  # noqa: E402  (a sibling script)

DEPLOYMENTS = {  # name -> extra arguments of `catsdogs serve`
    "one process": [],
    "ray 1 replica": ["--engine", "ray", "--replicas", "1", "--replica-cpus", "2"],
    "ray 2 replicas": ["--engine", "ray", "--replicas", "2", "--replica-cpus", "1"],
}
PROTOCOLS = ("tf-serving", "labelled", "v2-binary", "v2-json")


def request_for(protocol, model, data):
    """(path, httpx arguments) of a request of one photo in `protocol`."""
    encoded = base64.b64encode(data).decode()
    if protocol == "tf-serving":
        return f"/v1/models/{model}:predict", {"json": {"instances": [{"b64": encoded}]}}
    if protocol == "labelled":
        return "/predict", {"json": {"instances": [{"b64": encoded}]}}
    tensor = {"name": "image_bytes", "shape": [1], "datatype": "BYTES"}
    if protocol == "v2-json":
        return f"/v2/models/{model}/infer", {"json": {"inputs": [{**tensor, "data": [encoded]}]}}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 4 + len(data)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return f"/v2/models/{model}/infer", {"content": header + struct.pack("<I", len(data)) + data,
                                         "headers": {"Inference-Header-Content-Length": str(len(header))}}


async def measure(url, model, protocol, photos, requests, concurrency):
    """(latencies of requests sent one at a time, photos per second at `concurrency`)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def send(i):
            path, arguments = request_for(protocol, model, photos[i % len(photos)][1])
            response = await client.post(path, **arguments)
            response.raise_for_status()

        for i in range(concurrency):  # warm-up, connections included
            await send(i)
        latencies = []
        for i in range(requests // 4):
            start = time.perf_counter()
            await send(i)
            latencies.append(time.perf_counter() - start)
        queue = iter(range(requests))

        async def worker():
            for i in queue:
                await send(i)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, requests / (time.perf_counter() - start)


def tree_rss(pid):
    """RSS of a process and all its descendants, in bytes."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def replica_rss(url):
    """{process id: RSS} of the processes that answer /healthz (every replica, with enough tries)."""
    pids = {httpx.get(f"{url}/healthz", timeout=30).json()["process_id"] for _ in range(40)}
    return {pid: psutil.Process(pid).memory_info().rss for pid in pids}


def run_deployment(model, name, extra, photos, requests, concurrency):
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="catsdogs-serve-")
    start = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "catsdogs.cli", "serve", model, "--port", "0", *extra],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        url = None
        while url is None and time.monotonic() - start < 600:
            log.seek(0)
            found = re.search(r"running on (http://\S+)", log.read())
            url = found.group(1) if found else None
            if server.poll() is not None:
                break
            time.sleep(0.2)
        if url is None:
            log.seek(0)
            raise SystemExit(f"{name}: the server did not start:\n{log.read()[-3000:]}")
        result = {"start_s": time.monotonic() - start}
        model_name = httpx.get(f"{url}/healthz", timeout=30).json()["model"]
        for protocol in PROTOCOLS:
            latencies, rate = asyncio.run(measure(url, model_name, protocol, photos, requests, concurrency))
            result[protocol] = {"p50_ms": 1000 * statistics.median(latencies),
                                "p95_ms": 1000 * statistics.quantiles(latencies, n=20)[-1], "photos_per_s": rate}
            print(f"{name:16} {protocol:10} p50 {result[protocol]['p50_ms']:6.1f} ms  p95 "
                  f"{result[protocol]['p95_ms']:6.1f} ms  {rate:5.1f} photos/s", flush=True)
        result["replica_rss_mb"] = {str(pid): rss / 2**20 for pid, rss in replica_rss(url).items()}
        result["tree_rss_mb"] = tree_rss(server.pid) / 2**20
        print(f"{name:16} started in {result['start_s']:.1f} s; replicas' RSS "
              f"{', '.join(f'{v:.0f}' for v in result['replica_rss_mb'].values())} MB; all its processes "
              f"{result['tree_rss_mb']:.0f} MB", flush=True)
        return result
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory (or model file, export folder) to serve")
    parser.add_argument("--photos", default=str(DEFAULT_PHOTOS), help="folder of class folders of .jpg photos")
    parser.add_argument("--per-class", type=int, default=16, help="photos of each class")
    parser.add_argument("--requests", type=int, default=200, help="requests per protocol for throughput "
                                                                   "(a quarter of them for latency)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--deployments", default=",".join(DEPLOYMENTS),
                        help=f"comma-separated, from: {', '.join(DEPLOYMENTS)}")
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args()
    photos = read_photos(args.photos, args.per_class)
    results = {name: run_deployment(args.model, name, DEPLOYMENTS[name], photos, args.requests, args.concurrency)
               for name in args.deployments.split(",")}
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
