"""`catsdogs serve`: a trained model as an HTTP service and a web page (FastAPI + uvicorn).

The serving libraries are an optional extra (`pip install "catsdogs[serve]"`); this module
imports none of them, so that `extras.require` can say what is missing.
"""

import dataclasses
import ipaddress
import re

from catsdogs.config.choices import DEFAULT_MAX_PIXELS
from catsdogs.config.fields import setting
from catsdogs.errors import ConfigError

API_KEY_ENV = "CATSDOGS_API_KEY"
HOST_NAME = re.compile(r"[a-z0-9_.-]+")  # a DNS name as a Host header carries it (IDNs in punycode)


@dataclasses.dataclass
class ServeSettings:
    """Batching, limits, timeouts and authentication of the service (the options of `catsdogs serve`).

    Every field is an option of `catsdogs serve` (`fields.setting`): cli.py generates them from these fields.
    """

    max_batch_size: int = setting(16, "most images in one forward pass; 1 turns batching off")
    max_wait_ms: float = setting(5.0, "how long a request waits for others to share its forward pass")
    max_upload_bytes: int = setting(32 * 2**20, "largest request body, refused before decoding")
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "largest image in pixels, read from its header before decoding")
    max_request_pixels: int = setting(2 * DEFAULT_MAX_PIXELS, "most pixels of all the images of one request, read "
                                      "from their headers before decoding")
    max_images: int = setting(32, "most images in one request")
    max_decodes: int = setting(2, "most images decoded at once, across requests")
    max_active_requests: int = setting(8, "most prediction requests reading or holding their body at once; others "
                                       "wait, within --body-timeout")
    max_connections: int = setting(64, "most open connections; requests beyond get 503")
    header_timeout_s: float = setting(10.0, "seconds for a request's headers to arrive before the connection is "
                                      "closed", flag="--header-timeout")
    body_timeout_s: float = setting(60.0, "seconds from a request's headers to the end of its body, waiting for a "
                                    "request slot included, else 408 (503 if no slot came free)",
                                    flag="--body-timeout")
    keep_alive_s: float = setting(5.0, "seconds an idle connection stays open between requests", flag="--keep-alive")
    shutdown_timeout_s: float = setting(10.0, "on SIGTERM or Ctrl-C, seconds to let requests finish before "
                                        "cancelling them", flag="--shutdown-timeout")
    # The CLI falls back to $CATSDOGS_API_KEY, so that the key stays out of `ps` and shell history.
    api_key: str | None = setting(None, f"require this key on the API (Authorization: Bearer KEY or X-API-Key: "
                                  f"KEY); default: ${API_KEY_ENV} if set, else none (the variable keeps it out of "
                                  f"`ps`). Use it whenever --host is not loopback", repr=False)
    allowed_hosts: tuple[str, ...] = setting(
        (), "also answer requests addressed to this host name (repeat the option for more). Only 127.0.0.1, "
        "localhost, [::1] and the --host address are answered by default, so that no web page can reach the server "
        "under a DNS name of its own (DNS rebinding); with --host 0.0.0.0 or ::, any IP address of the machine is "
        "answered as well, names only when allowed here", flag="--allowed-host")

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if field.type not in (int, float):
                continue
            minimum = 0 if field.name == "max_wait_ms" else 1
            if getattr(self, field.name) < minimum:
                raise ConfigError(f"{field.name} must be at least {minimum}, got {getattr(self, field.name)}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key must not be empty (leave it unset to serve without authentication)")
        # HTTP headers carry latin-1 at best, and clients encode other characters each their own way:
        # such a key could never match. The key itself stays out of the message.
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()
                                             and self.api_key == self.api_key.strip()):
            raise ConfigError("api_key must be printable ASCII, without spaces at its ends (it travels in an HTTP "
                              "header); make one with: python -c 'import secrets; print(secrets.token_urlsafe(24))'")
        self.allowed_hosts = tuple(allowed_host(name) for name in self.allowed_hosts)


def allowed_host(name):
    """A host name or IP address given to --allowed-host, as a Host header carries it: lowercase,
    an IPv6 address without its brackets.

    Raises:
        ConfigError: anything else (a URL, a port, a wildcard).
    """
    host = name.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not HOST_NAME.fullmatch(host):
        raise ConfigError(f"allowed host {name!r}: expected a host name or an IP address, without scheme, port or "
                          f"path (e.g. myhost.lan)")
    return host


AUTOSCALE = re.compile(r"(\d+)-(\d+)")


@dataclasses.dataclass
class ReplicaSettings:
    """How many model replicas `catsdogs serve --engine ray` runs on Ray Serve, and what each reserves.

    Every field is an option of `catsdogs serve` (`fields.setting`); the cluster is train's --address.
    """

    replicas: int = setting(1, "with --engine ray: model replicas, each loading the model once and batching its "
                            "requests", metavar="N")
    autoscale: str = setting("", "with --engine ray: instead of --replicas, from MIN to MAX replicas as the load "
                             "asks (Ray Serve's autoscaling)", metavar="MIN-MAX")
    replica_cpus: float = setting(1.0, "with --engine ray: CPUs each replica reserves on its node (Ray sets its "
                                  "OMP_NUM_THREADS, which TensorFlow's kernels follow, to as many)", metavar="N")

    def __post_init__(self):
        if self.replicas < 1:
            raise ConfigError(f"replicas must be at least 1, got {self.replicas}")
        if self.replica_cpus <= 0:
            raise ConfigError(f"replica_cpus must be above 0, got {self.replica_cpus}")
        if self.autoscale:
            if self.replicas != 1:
                raise ConfigError("give --replicas N or --autoscale MIN-MAX, not both")
            low_high = self.autoscale_range
            if low_high is None or not 1 <= low_high[0] <= low_high[1]:
                raise ConfigError(f"autoscale {self.autoscale!r}: expected MIN-MAX replicas, 1 <= MIN <= MAX (e.g. 1-4)")

    @property
    def autoscale_range(self):
        """(MIN, MAX) of --autoscale, or None."""
        match = AUTOSCALE.fullmatch(self.autoscale.strip())
        return (int(match.group(1)), int(match.group(2))) if match else None
