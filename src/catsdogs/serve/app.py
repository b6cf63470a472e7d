"""The HTTP service: TensorFlow Serving's predict API, multipart uploads, model status, a web page.

Requests are decoded in worker threads, then queued for a `MicroBatcher` that runs the model in
its own thread: the event loop only moves bytes. Every error is a JSON `{"error": "..."}`, the
shape TensorFlow Serving uses, with a 4xx status for anything the client can fix.
"""

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os

import numpy as np
from fastapi import Depends, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from catsdogs import __version__, explain
from catsdogs import model as model_lib
from catsdogs.images import ImageError, decode_image
from catsdogs.serve import ServeSettings
from catsdogs.serve.batcher import MicroBatcher

log = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
JSON_EXAMPLE = '{"instances": [{"b64": "<base64 of an image file>"}]}'
MULTIPART_HINT = "send one or more images as multipart/form-data in the field 'files'"


@dataclasses.dataclass
class Job:
    """One decoded photo waiting for the model."""

    pixels: np.ndarray
    heatmap: bool
    source: str


@dataclasses.dataclass
class Result:
    """The model's answer for one photo."""

    probabilities: np.ndarray
    label: int
    heatmap: np.ndarray = None  # Grad-CAM of the predicted class, when asked for


class Predictor:
    """The batch function: decoded photos in, probabilities (and heatmaps on request) out.

    A photo that cannot be prepared gets an `ImageError` in its place; the others still run.
    """

    def __init__(self, explainer):
        self.explainer = explainer

    def __call__(self, jobs):
        results, prepared = [None] * len(jobs), []
        for i, job in enumerate(jobs):
            try:
                prepared.append((i, self.explainer.prepare(job.pixels)))
            except Exception as error:  # whatever is wrong with one photo stays with that photo
                results[i] = ImageError(job.source, f"cannot be prepared for the model ({error})")
        if not prepared:
            return results
        indices = [i for i, _ in prepared]
        batch = np.stack([pixels for _, pixels in prepared])
        probabilities = self.explainer.predict(batch)["probabilities"]
        labels = model_lib.predicted_classes(probabilities, self.explainer.info.threshold)
        explained = [k for k, i in enumerate(indices) if jobs[i].heatmap]
        heatmaps = dict(zip(explained, self.explainer.heatmaps(batch[explained], labels[explained]))) if explained else {}
        for k, i in enumerate(indices):
            results[i] = Result(probabilities[k], int(labels[k]), heatmaps.get(k))
        return results

    def warm_up(self):
        """Traces the model's compiled functions once, so that the first request is not slow."""
        self([Job(np.zeros((8, 8, 3), np.uint8), True, "warm-up")])


class B64Image(BaseModel):
    b64: str = Field(description="an image file (JPEG, PNG, WEBP, GIF, BMP, TIFF), base64-encoded")


class PredictRequest(BaseModel):
    """TensorFlow Serving's REST predict request, row format."""

    instances: list[B64Image] = Field(description="the images")
    signature_name: str = Field("serving_default", description="accepted for compatibility; one signature")


def _request_schema():
    # The request is parsed by hand (TF Serving clients send it with any content type), so its
    # schema is given to OpenAPI by hand too, with the image object inlined.
    schema = PredictRequest.model_json_schema()
    schema["properties"]["instances"]["items"] = schema.pop("$defs")["B64Image"]
    return schema


class Prediction(BaseModel):
    label: str = Field(description="the predicted class")
    probability: float = Field(description="the probability of the predicted class")
    probabilities: dict[str, float] = Field(description="the probability of every class")
    heatmap_png: str | None = Field(None, description=(
        "with heatmap=true: the Grad-CAM heatmap of the predicted class, a base64 PNG with "
        "transparency in the photo's proportions, to stretch over the photo"))


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per image, in order")


class ModelVersionStatus(BaseModel):
    version: str = "1"
    state: str = "AVAILABLE"
    status: dict = {"error_code": "OK", "error_message": ""}


class ModelStatus(BaseModel):
    model_version_status: list[ModelVersionStatus] = Field(description="as TensorFlow Serving reports it")
    name: str
    classes: list[str]
    backbone: str
    input_size: list[int] = Field(description="height, width, channels that photos are resized to")
    threshold: float = Field(description="for two classes: the probability of the second at which it is predicted")
    temperature: float
    metrics: dict | None = Field(description="the test metrics of the run (metrics.json), if the model came with them")


class BatchingStatus(BaseModel):
    max_batch_size: int
    max_wait_ms: float
    batches: int = Field(description="forward passes so far")
    images: int = Field(description="images predicted so far")
    largest_batch: int


class Health(BaseModel):
    status: str
    model: str
    batching: BatchingStatus


class ErrorResponse(BaseModel):
    error: str


ERRORS = {status: {"model": ErrorResponse, "description": description} for status, description in (
    (400, "malformed request: bad JSON or base64, no images"),
    (404, "no model of that name"),
    (413, "request body or image count over the limit"),
    (415, "wrong content type"),
    (422, "a file that is not a usable image: not an image, truncated, too many pixels"),
)}


def load_served_model(run_or_model):
    """Loads a model for serving, with its name and the test metrics of its run.

    Returns:
        (model, name: the run directory's or file's name, metrics dict or None).
    """
    path = model_lib.resolve_model_path(run_or_model)
    folder = os.path.dirname(os.path.abspath(path))
    is_run = os.path.basename(path) == model_lib.MODEL_FILE
    name = os.path.basename(folder) if is_run else os.path.splitext(os.path.basename(path))[0]
    metrics_file = os.path.join(folder, "metrics.json")
    metrics = None
    if is_run and os.path.isfile(metrics_file):
        with open(metrics_file) as f:
            metrics = json.load(f)
    return model_lib.load(path), name, metrics


class BodyLimit:
    """Refuses request bodies over a size with a JSON 413, before anything is decoded.

    A declared Content-Length over the limit is refused before the body is read; a body sent
    without one (chunked) is counted as it arrives. (Starlette's own limit answers in plain text.)
    """

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body too large: the limit is {self.max_bytes} bytes"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse({"error": message}, 413)(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, message)  # inside the route: answered by the app's handler
            return event

        await self.app(scope, counting_receive, send)


def _media_type(request):
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _require_multipart(request: Request):
    if _media_type(request) != "multipart/form-data":
        raise HTTPException(415, f"expected Content-Type multipart/form-data, got {_media_type(request) or 'none'}: "
                                 f"{MULTIPART_HINT}")


def _describe_validation_error(errors):
    """One readable line from pydantic's error list, e.g. "instances[0].b64: Field required"."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"malformed JSON: {first['ctx']['error']}"
    location = ""
    for part in first["loc"]:
        if part in ("body", "query"):
            continue
        location += f"[{part}]" if isinstance(part, int) else f"{'.' if location else ''}{part}"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{location or 'request'}: {first['msg']}{more}"


def create_app(model, name="model", metrics=None, settings=None):
    """The FastAPI application serving one catsdogs model.

    Args:
        model: a loaded catsdogs model.
        name: the model's name in TensorFlow Serving's URLs (/v1/models/NAME).
        metrics: test metrics to report with the model, if any.
        settings: `ServeSettings`.

    Returns:
        a FastAPI app; `app.state.batcher` is its `MicroBatcher`.
    """
    settings = settings or ServeSettings()
    explainer = explain.Explainer(model)
    info = explainer.info
    predictor = Predictor(explainer)
    batcher = MicroBatcher(predictor, settings.max_batch_size, settings.max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(predictor.warm_up)
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPIOffline(
        title="catsdogs", version=__version__, lifespan=lifespan,
        description=f"Serves the image classifier `{name}` ({info.backbone}, classes {', '.join(info.class_names)}). "
                    "Errors are JSON objects `{\"error\": \"...\"}`.")
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    hints = {"/v1/models/{model_name}:predict": f"expected JSON like {JSON_EXAMPLE}", "/predict": MULTIPART_HINT}

    def with_hint(request, message):
        """A malformed request's error, followed by what its route expects."""
        hint = hints.get(getattr(request.scope.get("route"), "path", ""))
        return f"{message}; {hint}" if hint else message

    @app.exception_handler(HTTPException)
    async def http_error(request, error):
        message = with_hint(request, error.detail) if error.status_code == 400 else error.detail
        return JSONResponse({"error": message}, error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error):
        return JSONResponse({"error": with_hint(request, _describe_validation_error(error.errors()))}, 400)

    @app.exception_handler(ImageError)
    async def image_error(request, error):
        return JSONResponse({"error": str(error)}, 422)

    @app.exception_handler(Exception)
    async def internal_error(request, error):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal server error (the server's log says more)"}, 500)

    def check_name(model_name):
        if model_name != name:
            raise HTTPException(404, f"model {model_name!r} not found; this server serves {name!r}")

    async def predict_images(images, heatmap):
        """images: list of (file bytes, source name) -> list of Prediction."""
        if len(images) > settings.max_images:
            raise HTTPException(413, f"{len(images)} images in one request; the limit is {settings.max_images}")
        pixels = await asyncio.gather(*(run_in_threadpool(decode_image, data, source, settings.max_pixels)
                                        for data, source in images))
        results = await asyncio.gather(*(batcher.submit(Job(p, heatmap, source))
                                         for p, (_, source) in zip(pixels, images)))
        predictions = []
        for photo, result in zip(pixels, results):
            png = None
            if result.heatmap is not None:
                height, width = photo.shape[:2]
                png = await run_in_threadpool(explain.heatmap_png, result.heatmap, width, height)
            predictions.append(Prediction(
                label=info.class_names[result.label], probability=float(result.probabilities[result.label]),
                probabilities=dict(zip(info.class_names, map(float, result.probabilities))),
                heatmap_png=base64.b64encode(png).decode() if png else None))
        return predictions

    heatmap_query = Query(False, description="also return the Grad-CAM heatmap of the predicted class")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    @app.get("/healthz", response_model=Health, summary="Liveness, the model's name and batching counters")
    async def healthz():
        stats = batcher.stats
        return Health(status="ok", model=name, batching=BatchingStatus(
            max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
            batches=stats.batches, images=stats.items, largest_batch=stats.largest_batch))

    @app.get("/v1/models/{model_name}", response_model=ModelStatus, responses={404: ERRORS[404]},
             summary="The model: TensorFlow Serving's status, classes, backbone, input size, test metrics")
    async def model_status(model_name: str):
        check_name(model_name)
        return ModelStatus(
            model_version_status=[ModelVersionStatus()], name=name, classes=info.class_names,
            backbone=info.backbone, input_size=[info.image_size, info.image_size, 3],
            threshold=info.threshold, temperature=info.temperature, metrics=metrics)

    @app.post("/v1/models/{model_name}:predict", response_model=PredictResponse, response_model_exclude_none=True,
              responses=ERRORS, summary="Predict, TensorFlow Serving's REST API (base64 images)",
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": _request_schema()}}}})
    async def tf_serving_predict(model_name: str, request: Request, heatmap: bool = heatmap_query):
        check_name(model_name)
        # TF Serving reads the body as JSON whatever its content type; so do we for the types its
        # clients send: JSON, none, and curl -d's default (x-www-form-urlencoded).
        if _media_type(request) not in ("application/json", "application/x-www-form-urlencoded", ""):
            raise HTTPException(415, f"expected Content-Type application/json, got {_media_type(request)}")
        body = await request.body()
        if not body.strip():
            raise HTTPException(400, "empty request body")
        try:
            parsed = PredictRequest.model_validate_json(body)
        except ValidationError as error:
            raise HTTPException(400, _describe_validation_error(error.errors()))
        if not parsed.instances:
            raise HTTPException(400, "no instances")
        if parsed.signature_name != "serving_default":
            raise HTTPException(400, f"unknown signature_name {parsed.signature_name!r}; the model has 'serving_default'")
        images = []
        for i, instance in enumerate(parsed.instances):
            try:
                images.append((base64.b64decode(instance.b64, validate=True), f"instances[{i}]"))
            except binascii.Error as error:
                raise HTTPException(400, f"instances[{i}].b64: not valid base64 ({error})")
        return PredictResponse(predictions=await predict_images(images, heatmap))

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              responses={status: response for status, response in ERRORS.items() if status != 404},
              summary="Predict uploaded images (multipart/form-data, field 'files')",
              dependencies=[Depends(_require_multipart)])
    async def upload_predict(files: list[UploadFile] = File(description="one or more image files"),
                             heatmap: bool = heatmap_query):
        images = [(await file.read(), file.filename or f"files[{i}]") for i, file in enumerate(files)]
        return PredictResponse(predictions=await predict_images(images, heatmap))

    return app


def serve(run_or_model, host="127.0.0.1", port=8000, settings=None, name=None):
    """Loads a model and serves it with uvicorn until interrupted.

    Args:
        run_or_model: a run directory or .keras file.
        host: the address to listen on; the default is reachable from this machine only.
        port: 0 picks a free port (the log says which).
        settings: `ServeSettings`.
        name: the model's name in the URLs (default: the run directory's name).
    """
    import uvicorn

    model, default_name, metrics = load_served_model(run_or_model)
    app = create_app(model, name or default_name, metrics, settings)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this machine can use the service (no authentication)", host)
    log.info("serving %s: web page at /, API documentation at /docs", name or default_name)
    uvicorn.run(app, host=host, port=port, log_level="info")
