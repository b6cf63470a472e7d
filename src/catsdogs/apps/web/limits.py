"""Request bodies bounded in size and time, requests in images and JSON structure, and freed memory handed
back to the system."""

import asyncio
import ctypes
import ctypes.util

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

# Sent with answers given before the request's body was read: the connection is freed at once.
CLOSE_CONNECTION = {"Connection": "close"}


class BodyLimit:
    """Refuses request bodies over a size with a JSON 413, and bodies that arrive too slowly with 408.

    A declared Content-Length over the limit is refused before the body is read; a body sent
    without one (chunked) is counted as it arrives. (Starlette's own limit answers in plain text.)
    The time limit runs from the request's arrival (its headers in) to the body's last part, so
    that waiting for a request slot counts against it (`request.state.body_deadline`, in the
    event loop's clock) and a client that never sends its body, or stalls in it, frees its
    request, its slot and its connection after `timeout_s`.
    """

    def __init__(self, app, max_bytes, timeout_s):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body too large: the limit is {self.max_bytes} bytes"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse({"error": message}, 413)(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        scope.setdefault("state", {})["body_deadline"] = deadline
        received, complete = 0, False

        async def guarded_receive():
            nonlocal received, complete
            if complete:  # after the body, receive() only waits for a disconnect: no deadline
                return await receive()
            try:
                event = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"request body not received within {self.timeout_s:g} s",
                                    headers=CLOSE_CONNECTION) from None
            received += len(event.get("body", b""))
            complete = not event.get("more_body", False)
            if received > self.max_bytes:
                raise HTTPException(413, message)  # inside the route: answered by the app's handler
            return event

        await self.app(scope, guarded_receive, send)


def check_image_count(count, max_images):
    """Refuses a request of more than `max_images` images with 413 (before any of them is decoded)."""
    if count > max_images:
        raise HTTPException(413, f"{count} images in one request; the limit is {max_images}")


def count_json_tokens(body):
    """The separators and brackets (`,` `:` `[` `{`) of a JSON body, counted before it is parsed:
    every JSON value or key but the first follows one of them, so their count bounds what a parse builds."""
    return sum(body.count(char) for char in b",:[{")


def release_free_memory():
    """Hands memory that the process has freed back to the system (glibc's `malloc_trim`).

    After a large image is decoded and dropped, glibc keeps the freed pages in its heaps for
    reuse, so the server's RSS would stay at its peak after a burst. A no-op on other C libraries.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()
