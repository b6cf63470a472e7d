"""Error answers of the catsdogs web apps (`catsdogs serve`, `catsdogs review`): every error is a
JSON `{"error": "..."}`, with a 4xx status for anything the client can fix."""

import logging

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from catsdogs.errors import ImageError

log = logging.getLogger(__name__)


def describe_validation_error(errors):
    """One readable line from pydantic's error list, e.g. "instances[0].b64: Field required"."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"malformed JSON: {first['ctx']['error']}"
    location = ""
    for part in first["loc"]:
        if part in ("body", "query", "path"):
            continue
        location += f"[{part}]" if isinstance(part, int) else f"{'.' if location else ''}{part}"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{location or 'request'}: {first['msg']}{more}"


def add_error_handlers(app, hints=None):
    """Answers every error of `app` as JSON: HTTP errors with their status, invalid requests with
    400, unusable images with 422, anything else with 500 (and its traceback in the log).

    Args:
        app: the FastAPI app.
        hints: route path -> what the route expects, added to its 400 answers.
    """
    hints = hints or {}

    def with_hint(request, message):
        """A malformed request's error, followed by what its route expects."""
        hint = hints.get(getattr(request.scope.get("route"), "path_format", ""))
        return f"{message}; {hint}" if hint else message

    @app.exception_handler(HTTPException)
    async def http_error(request, error):
        message = with_hint(request, error.detail) if error.status_code == 400 else error.detail
        return JSONResponse({"error": message}, error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error):
        return JSONResponse({"error": with_hint(request, describe_validation_error(error.errors()))}, 400)

    @app.exception_handler(ImageError)
    async def image_error(request, error):
        return JSONResponse({"error": str(error)}, 422)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request, error):  # nobody is left to read the answer
        log.info("client went away during %s %s", request.method, request.url.path)
        return JSONResponse({"error": "client disconnected"}, 400)

    @app.exception_handler(Exception)
    async def internal_error(request, error):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal server error (the server's log says more)"}, 500)
