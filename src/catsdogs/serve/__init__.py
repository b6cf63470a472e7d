"""`catsdogs serve`: a trained model as an HTTP service and a web page (FastAPI + uvicorn).

The serving libraries are an optional extra (`pip install "catsdogs[serve]"`); this module
imports none of them, so that `extras.require` can say what is missing.
"""

import dataclasses

from catsdogs.errors import ConfigError
from catsdogs.images import DEFAULT_MAX_PIXELS

API_KEY_ENV = "CATSDOGS_API_KEY"


@dataclasses.dataclass
class ServeSettings:
    """Batching, limits, timeouts and authentication of the service (the options of `catsdogs serve`)."""

    max_batch_size: int = 16  # images in one forward pass; 1 turns batching off
    max_wait_ms: float = 5.0  # how long a request waits for others to share its forward pass
    max_upload_bytes: int = 32 * 2**20  # of one request body, checked before anything is decoded
    max_pixels: int = DEFAULT_MAX_PIXELS  # of one image, read from its header before decoding
    max_request_pixels: int = 2 * DEFAULT_MAX_PIXELS  # of all the images of one request, from their headers
    max_images: int = 32  # in one request
    max_decodes: int = 2  # images decoded at once, whatever the number of requests
    max_active_requests: int = 8  # prediction requests reading or holding their body at once; others wait
    max_connections: int = 64  # open connections; requests beyond get 503
    header_timeout_s: float = 10.0  # for a request's headers to arrive, from its first byte or the connection
    body_timeout_s: float = 60.0  # for a request's whole body to arrive, once the server reads it
    keep_alive_s: float = 5.0  # an idle connection between requests is closed after this
    shutdown_timeout_s: float = 10.0  # on SIGTERM, requests still running after this are cancelled
    api_key: str | None = dataclasses.field(default=None, repr=False)  # if set, required by the API routes

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if field.name == "api_key":
                continue
            minimum = 0 if field.name == "max_wait_ms" else 1
            if getattr(self, field.name) < minimum:
                raise ConfigError(f"{field.name} must be at least {minimum}, got {getattr(self, field.name)}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key must not be empty (leave it unset to serve without authentication)")
