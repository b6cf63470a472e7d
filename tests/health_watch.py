"""`HealthWatch`: how long a server's /healthz takes to answer while something else loads it
(the serving tests and benchmarks/serve_worst_case.py)."""

import threading
import time

import httpx


class HealthWatch(threading.Thread):
    """Asks /healthz every 100 ms, each time on a new connection (as a new client would), while its
    `with` block runs: `slowest` is the longest wait for an answer in seconds, `statuses` counts
    the answers by status (or by the error, for none)."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.slowest, self.statuses, self.stop = url, 0.0, {}, threading.Event()

    def run(self):
        # One client (making one costs tens of milliseconds), keeping no connection between requests.
        with httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while not self.stop.wait(0.1):
                start = time.monotonic()
                try:
                    status = str(client.get(f"{self.url}/healthz").status_code)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                self.slowest = max(self.slowest, time.monotonic() - start)
                self.statuses[status] = self.statuses.get(status, 0) + 1

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        self.join()
