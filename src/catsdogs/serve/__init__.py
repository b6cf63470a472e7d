"""`catsdogs serve`: a trained model as an HTTP service and a web page (FastAPI + uvicorn).

The serving libraries are an optional extra (`pip install "catsdogs[serve]"`); this module
imports none of them, so that `extras.require` can say what is missing.
"""

import dataclasses

from catsdogs.errors import ConfigError
from catsdogs.images import DEFAULT_MAX_PIXELS


@dataclasses.dataclass
class ServeSettings:
    """Batching and limits of the service (the options of `catsdogs serve`)."""

    max_batch_size: int = 16  # images in one forward pass; 1 turns batching off
    max_wait_ms: float = 5.0  # how long a request waits for others to share its forward pass
    max_upload_bytes: int = 32 * 2**20  # of one request body, checked before anything is decoded
    max_pixels: int = DEFAULT_MAX_PIXELS  # of one image, read from its header before decoding
    max_images: int = 32  # in one request

    def __post_init__(self):
        for field in dataclasses.fields(self):
            minimum = 0 if field.name == "max_wait_ms" else 1
            if getattr(self, field.name) < minimum:
                raise ConfigError(f"{field.name} must be at least {minimum}, got {getattr(self, field.name)}")

