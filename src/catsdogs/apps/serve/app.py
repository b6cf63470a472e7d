"""The HTTP service: TensorFlow Serving's predict API, multipart uploads, model status, a web page.

Requests are decoded in worker threads, then queued for a `MicroBatcher` that runs the model in
its own thread: the event loop only moves bytes. Every error is a JSON `{"error": "..."}`, the
shape TensorFlow Serving uses, with a 4xx status for anything the client can fix.

Memory is bounded by design (README, "Serving"): at most `max_active_requests` requests hold a
body, at most `max_decodes` images are decoded at once, each near the model's input size, and
the pixels of one request are budgeted from the images' headers before any is decoded. A JSON
body's structure is counted before it is parsed, and its images before they are decoded.
"""

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import secrets
import threading

import numpy as np
from fastapi import Depends, Path, Query, Request
from fastapi.responses import FileResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from catsdogs import __version__
from catsdogs.apps.serve.batcher import MicroBatcher
from catsdogs.apps.web.handlers import add_error_handlers, describe_validation_error
from catsdogs.apps.web.limits import CLOSE_CONNECTION, BodyLimit, release_free_memory
from catsdogs.apps.web.security import markdown_text, protect
from catsdogs.config.serve import ServeSettings
from catsdogs.data.images import open_image
from catsdogs.errors import CatsdogsError, ImageError
from catsdogs.inference import explain
from catsdogs.inference.classifier import decide, load, set_coverage
from catsdogs.inference.preprocess import decode_photo, prepare
from catsdogs.models import model as model_lib
from catsdogs.store import run_dir

log = logging.getLogger(__name__)


STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
JSON_EXAMPLE = '{"instances": [{"b64": "<base64 of an image file>"}]}'
MULTIPART_HINT = "send one or more images as multipart/form-data in the field 'files'"
# What each predict route expects, added to its 400 answers.
PREDICT_HINTS = {"/v1/models/{model_name}:predict": f"expected JSON like {JSON_EXAMPLE}",
                 "/v1/models/{model_name}/versions/{version}:predict": f"expected JSON like {JSON_EXAMPLE}",
                 "/predict": MULTIPART_HINT}
MODEL_VERSION = 1  # TF Serving's URLs name versions; a catsdogs server has one
# Decodes of at least this many pixels hand their freed memory back to the system afterwards.
TRIM_AFTER_PIXELS = 4_000_000


class ModelNameConvertor(Convertor):
    """A model name in a URL: anything but '/' and ':', so that /v1/models/NAME never swallows
    NAME:predict (which would answer OPTIONS on the predict URL with the status route's Allow)."""

    regex = "[^/:]+"

    def convert(self, value):
        return value

    def to_string(self, value):
        return str(value)


register_url_convertor("model_name", ModelNameConvertor())

@dataclasses.dataclass
class Job:
    """One decoded photo waiting for the model."""

    pixels: np.ndarray
    heatmap: bool
    source: str


@dataclasses.dataclass
class Result:
    """The model's answer for one photo."""

    outputs: dict  # as a runtime gives them, for this photo: probabilities [, in_distribution_score]
    label: int  # the most probable class (the one its heatmap explains)
    heatmap: np.ndarray = None  # Grad-CAM of the predicted class, when asked for


class Predictor:
    """The batch function: decoded photos in, the runtime's outputs (and heatmaps on request) out.

    The classifier's runtime computes the outputs, whatever it is (Keras, SavedModel, ONNX,
    TFLite: `model_formats.load`), on pixels prepared as `catsdogs predict` prepares them. Grad-CAM
    runs only for the photos that ask for a heatmap, and needs the Keras model. A photo that cannot
    be prepared gets an `ImageError` in its place; the others still run.
    """

    def __init__(self, classifier):
        """Args:
            classifier: the `Classifier` to serve.
        """
        self.classifier = classifier
        # Grad-CAM opens the Keras model at its last convolutional block: an export has no such block.
        self.explainer = classifier.explainer() if classifier.model is not None else None

    def __call__(self, jobs):
        info = self.classifier.info
        results, prepared = [None] * len(jobs), []
        for i, job in enumerate(jobs):
            try:
                prepared.append((i, prepare(job.pixels, info.image_size, job.source)))
            except Exception as error:  # whatever is wrong with one photo stays with that photo
                results[i] = ImageError(job.source, f"cannot be prepared for the model ({error})")
        if not prepared:
            return results
        indices = [i for i, _ in prepared]
        batch = np.stack([pixels for _, pixels in prepared])
        outputs = self.classifier.runtime(batch)
        labels = model_lib.predicted_classes(outputs["probabilities"], info.threshold)
        explained = [k for k, i in enumerate(indices) if jobs[i].heatmap]
        heatmaps = dict(zip(explained, self.explainer.heatmaps(batch[explained], labels[explained]))) if explained else {}
        for k, i in enumerate(indices):
            results[i] = Result({name: values[k] for name, values in outputs.items()}, int(labels[k]),
                                heatmaps.get(k))
        return results

    def warm_up(self):
        """Traces the model's compiled functions once, so that the first request is not slow."""
        self([Job(np.zeros((8, 8, 3), np.uint8), self.explainer is not None, "warm-up")])


# Fields beyond these are refused: they would cost a parse and mean nothing (TF Serving reads an
# object with more keys than "b64" as named inputs, not as an image).
class B64Image(BaseModel):
    model_config = ConfigDict(extra="forbid")

    b64: str = Field(description="an image file (JPEG, PNG, WEBP, GIF, BMP, TIFF), base64-encoded")


class PredictRequest(BaseModel):
    """TensorFlow Serving's REST predict request, row format."""

    model_config = ConfigDict(extra="forbid")

    instances: list[B64Image] = Field(description="the images")
    signature_name: str = Field("serving_default", description="accepted for compatibility; one signature")


# Standard base64 with its padding: what `base64.b64decode(..., validate=True)` accepts.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def _request_schema(settings):
    """The OpenAPI schema of a predict request, with the limits this server enforces.

    The request is parsed by hand (TF Serving clients send it with any content type), so its
    schema is given to OpenAPI by hand too, with the image object inlined.
    """
    schema = PredictRequest.model_json_schema()
    image = schema.pop("$defs")["B64Image"]
    image["properties"]["b64"].update(minLength=4, maxLength=settings.max_upload_bytes, pattern=BASE64_PATTERN)
    schema["properties"]["instances"].update(items=image, minItems=1, maxItems=settings.max_images)
    schema["properties"]["signature_name"]["enum"] = ["serving_default"]
    return schema


def _upload_schema(settings):
    """The OpenAPI schema of a multipart upload (parsed by hand, to answer too many parts with 413)."""
    files = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
             "maxItems": settings.max_images, "description": "one or more image files"}
    return {"type": "object", "required": ["files"], "properties": {"files": files}, "additionalProperties": False}


class PredictionAnswer(BaseModel):
    """One photo's answer on the wire: `classifier.Prediction`'s fields, and the heatmap where asked for."""

    label: str = Field(description="the predicted class, or 'unknown' when the photo looks like none of them")
    probability: float = Field(description="the probability of the most probable class")
    probabilities: dict[str, float] = Field(description="the probability of every class")
    in_distribution_score: float | None = Field(None, ge=0, le=1, description=(
        "how typical the photo is of the training photos: the share of them that look less typical "
        "(models with an open-set score)"))
    accepted: bool | None = Field(None, description="whether the score reaches the reject threshold; if not, "
                                                    "the label is 'unknown'")
    prediction_set: list[str] | None = Field(None, description=(
        "with a coverage (?coverage=, or the server's or model's default): the classes that hold the photo's true "
        "class for that share of photos; always the label among them, empty when the photo is rejected as unknown"))
    coverage: float | None = Field(None, description="the coverage of prediction_set")
    heatmap_png: str | None = Field(None, description=(
        "with heatmap=true: the Grad-CAM heatmap of the predicted class, a base64 PNG with "
        "transparency in the photo's proportions, to stretch over the photo"))


class PredictResponse(BaseModel):
    predictions: list[PredictionAnswer] = Field(description="one per image, in order")


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
    reject_threshold: float | None = Field(None, description=(
        "photos whose in-distribution score is below it are answered 'unknown' (models with an open-set score)"))
    metrics: dict | None = Field(description="the test metrics of the run (metrics.json), if the model came with them")
    format: str = Field(description="how the model served is stored: keras, or the format of the export served")
    heatmaps: bool = Field(description="whether heatmap=true is available (Grad-CAM needs the Keras model)")
    prediction_sets: bool = Field(False, description="whether ?coverage= is available (the model keeps the "
                                                     "calibration of prediction sets)")
    coverage: float | None = Field(None, description="the coverage of the prediction sets answered when a request "
                                                     "asks for none (the server's --coverage, else the model's)")


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
    (400, "malformed request: bad JSON, base64 or multipart, no images, an invalid parameter"),
    (401, "missing or wrong API key (only when the server has one)"),
    (404, "no model or version of that name"),
    (408, "the request body did not arrive in time"),
    (413, "request body, image count or the images' total pixels over the limit"),
    (415, "wrong content type"),
    (422, "a file that is not a usable image: not an image, truncated, too many pixels"),
    (503, "the server is busy: no request slot came free within the body timeout; try again"),
)}


def _responses(*statuses):
    return {status: ERRORS[status] for status in statuses}


def _name_and_metrics(model_file):
    """A model file's name in URLs and its run's test metrics: the run directory's name and
    metrics.json for a run's model.keras, else the file's name and None."""
    if os.path.basename(model_file) != run_dir.MODEL:
        return os.path.splitext(os.path.basename(model_file))[0], None
    run = run_dir.RunDirectory(os.path.dirname(os.path.abspath(model_file)))
    return run.name, run.metrics() if run.has(run_dir.METRICS) else None


def load_served_model(path, format=None):
    """Loads a model for serving, as `catsdogs predict` loads it, with its name and its run's test metrics.

    Args:
        path: a run directory, a .keras file, or an export folder (or the exported file in it).
        format: as for `classifier.load`.

    Returns:
        (`Classifier`, name: the run directory's or file's name (an export's: its source model's),
        metrics dict or None).
    """
    classifier = load(path, format)
    if classifier.model is not None:
        return (classifier, *_name_and_metrics(model_lib.resolve_model_path(path)))
    # An export names the model it came from; where that is still there, it gives the name and metrics.
    source = classifier.runtime.source  # None unless the export lies in its source model's folder
    if source:
        return (classifier, *_name_and_metrics(source))
    return classifier, os.path.basename(os.path.normpath(classifier.runtime.folder)), None


def _media_type(request):
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _require_multipart(request: Request):
    if _media_type(request) != "multipart/form-data":
        raise HTTPException(415, f"expected Content-Type multipart/form-data, got {_media_type(request) or 'none'}: "
                                 f"{MULTIPART_HINT}")


def _api_key_dependency(api_key):
    """A dependency that requires the API key, as `Authorization: Bearer KEY` or `X-API-Key: KEY`.

    Both schemes are declared in the OpenAPI schema, so /docs' "Authorize" button can send them.
    """
    bearer = HTTPBearer(auto_error=False, description="the server's API key (--api-key)")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key (--api-key)")
    expected = api_key.encode()

    async def require_api_key(credentials=Depends(bearer), key: str | None = Depends(header)):
        given = credentials.credentials if credentials else key
        if not given or not secrets.compare_digest(given.encode(), expected):  # constant time
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_api_key


class Service:
    """What the routes share: the model, its batcher, the limits and the semaphores that hold them."""

    def __init__(self, classifier, name, metrics, settings):
        self.name = name
        self.metrics = metrics
        self.settings = settings
        self.info = classifier.info
        self.predictor = Predictor(classifier)
        self.format = classifier.runtime.format
        self.heatmaps = self.predictor.explainer is not None
        # The coverage answered by default; a --coverage the model cannot answer fails here.
        self.default_coverage = set_coverage(self.info, settings.coverage or None)
        self.batcher = MicroBatcher(self.predictor, settings.max_batch_size, settings.max_wait_ms)
        self.request_slots = asyncio.Semaphore(settings.max_active_requests)
        self.decode_slots = asyncio.Semaphore(settings.max_decodes)
        # Decodes run in threads of their own: glibc gives each thread that allocates its own
        # heap (arena) and keeps what is freed there, so decoding in any of the thread pool's 40
        # threads left up to 40 heaps holding a decoded image each (measured: RSS up 0.2 GB per
        # burst of large PNGs, never coming down); in `max_decodes` threads it is that many.
        self.decoder = concurrent.futures.ThreadPoolExecutor(settings.max_decodes, thread_name_prefix="catsdogs-decode")
        self._decoding = 0
        self._decoding_lock = threading.Lock()

    def check_model(self, model_name, version=None):
        if model_name != self.name:
            raise HTTPException(404, f"model {model_name!r} not found; this server serves {self.name!r}")
        if version is not None and version != MODEL_VERSION:
            raise HTTPException(404, f"version {version} of model {self.name!r} not found; it has version {MODEL_VERSION}")

    @contextlib.asynccontextmanager
    async def request_slot(self, request):
        """Holds one of the `max_active_requests` slots of the requests that read or hold a body.

        Waiting for one counts against the request's body deadline (`BodyLimit`): a request that
        gets none by then is answered 503 and its connection closed, so that clients who never
        send their body cannot keep the others waiting beyond it.
        """
        try:
            async with asyncio.timeout_at(request.state.body_deadline):
                await self.request_slots.acquire()
        except TimeoutError:
            raise HTTPException(503, f"server busy: no request slot came free within "
                                     f"{self.settings.body_timeout_s:g} s; try again", headers=CLOSE_CONNECTION) from None
        try:
            yield
        finally:
            self.request_slots.release()

    def measure(self, images):
        """Checks every image's header and the request's pixel budget, before anything is decoded.

        Returns:
            the pixels of each image.
        """
        pixels = []
        for data, source in images:
            width, height = open_image(data, source, self.settings.max_pixels).size
            pixels.append(width * height)
        if sum(pixels) > self.settings.max_request_pixels:
            raise HTTPException(413, f"the images of this request have {sum(pixels)} pixels in all; the limit is "
                                     f"{self.settings.max_request_pixels} a request (send them in several requests)")
        return pixels

    def decode(self, data, source, pixels):
        """Decodes one image near the model's input size (in a decoder thread).

        After a large image, once no other decode is running, the memory freed is handed back
        to the system, so that RSS comes down after a burst (`malloc_trim` takes tens of
        milliseconds on a large heap: not after every image while others are being decoded).
        """
        with self._decoding_lock:
            self._decoding += 1
        try:
            return decode_photo(data, source, self.info.image_size, self.settings.max_pixels)
        finally:
            with self._decoding_lock:
                self._decoding -= 1
                idle = self._decoding == 0
            if idle and pixels >= TRIM_AFTER_PIXELS:
                release_free_memory()

    def coverage(self, asked, reject, reject_threshold):
        """The coverage of the sets to answer a request (`classifier.set_coverage`): `asked` (?coverage=), else
        the server's --coverage, else the model's default; 0 for none; 400 if it cannot be answered."""
        try:
            return set_coverage(self.info, self.settings.coverage or None if asked is None else asked, reject,
                                reject_threshold) or 0
        except CatsdogsError as error:
            raise HTTPException(400, f"coverage: {error}")

    async def predict_images(self, images, heatmap, reject=True, reject_threshold=None, coverage=0):
        """images: list of (file bytes, source name) -> list of PredictionAnswer (see `classifier.decide`)."""
        if heatmap and not self.heatmaps:
            raise HTTPException(400, f"heatmap=true needs the Keras model (Grad-CAM opens it at its last "
                                     f"convolutional block), and this server runs a {self.format} export: ask "
                                     f"without heatmap, or serve the run directory or its .keras file")
        pixels = await run_in_threadpool(self.measure, images)

        loop = asyncio.get_running_loop()

        async def decode(data, source, count):
            async with self.decode_slots:  # waiting here costs no memory: the bytes are already in
                return await loop.run_in_executor(self.decoder, self.decode, data, source, count)

        photos = await asyncio.gather(*(decode(data, source, count) for (data, source), count in zip(images, pixels)))
        results = await asyncio.gather(*(self.batcher.submit(Job(photo, heatmap, source))
                                         for photo, (_, source) in zip(photos, images)))
        predictions = []
        for photo, result in zip(photos, results):
            png = None
            if result.heatmap is not None:
                height, width = photo.shape[:2]  # shrunk or not, the photo's proportions
                png = await run_in_threadpool(explain.heatmap_png, result.heatmap, width, height)
            decision = decide(self.info, {name: value[None] for name, value in result.outputs.items()}, reject,
                              reject_threshold, coverage=coverage)[0]
            predictions.append(PredictionAnswer(**decision, heatmap_png=base64.b64encode(png).decode() if png else None))
        return predictions


def _check_image_count(count, max_images):
    if count > max_images:
        raise HTTPException(413, f"{count} images in one request; the limit is {max_images}")


def _max_json_tokens(max_images):
    """The most separators and brackets (`,` `:` `[` `{`) a predict request of `max_images` images may hold.

    Every JSON value or key but the first follows one of them, so their count bounds what a parse
    builds. A valid request holds 3 per image and 4 more; the margin lets a request of up to a
    third more images be parsed, to be told how many it holds.
    """
    return 4 * max_images + 4


async def _read_instances(request, max_images):
    """The images of a TF Serving predict request: list of (bytes, "instances[i]")."""
    # TF Serving reads the body as JSON whatever its content type; so do we for the types its
    # clients send: JSON, none, and curl -d's default (x-www-form-urlencoded).
    if _media_type(request) not in ("application/json", "application/x-www-form-urlencoded", ""):
        raise HTTPException(415, f"expected Content-Type application/json, got {_media_type(request)}")
    body = await request.body()
    # In a worker thread, so that the event loop goes on answering: a parse or a decode of a
    # body of 32 MiB holds the interpreter for tens of milliseconds at a time.
    return await run_in_threadpool(_parse_instances, body, max_images)


def _parse_instances(body, max_images):
    """Parses and decodes the body of a TF Serving predict request: list of (bytes, "instances[i]").

    Its JSON structure is counted before it is parsed (a body of millions of tiny instances is
    refused for the cost of a scan), and the instances before any is decoded. While it is parsed,
    a body of n bytes costs at most 3n: itself, pydantic's copy of its strings, the strings.
    """
    if not body or body.isspace():
        raise HTTPException(400, "empty request body")
    tokens = sum(body.count(char) for char in b",:[{")
    if tokens > _max_json_tokens(max_images):
        raise HTTPException(413, f"the request's JSON has {tokens} separators and brackets, more than "
                                 f"{max_images} images need ({_max_json_tokens(max_images)}): send at most "
                                 f"{max_images} instances")
    try:
        parsed = PredictRequest.model_validate_json(body)
    except ValidationError as error:
        raise HTTPException(400, describe_validation_error(error.errors()))
    if not parsed.instances:
        raise HTTPException(400, "no instances")
    if parsed.signature_name != "serving_default":
        raise HTTPException(400, f"unknown signature_name {parsed.signature_name!r}; the model has 'serving_default'")
    _check_image_count(len(parsed.instances), max_images)
    images = []
    for i, instance in enumerate(parsed.instances):
        if not instance.b64:
            raise HTTPException(400, f"instances[{i}].b64: empty")
        try:
            images.append((base64.b64decode(instance.b64, validate=True), f"instances[{i}]"))
        except ValueError as error:  # binascii.Error, or non-ASCII characters (a plain ValueError)
            raise HTTPException(400, f"instances[{i}].b64: not valid base64 ({error})")
    return images


async def _read_uploads(request, max_images):
    """The images of a multipart upload: list of (bytes, file name).

    Parsed here rather than by FastAPI's `File()`, to stop at a number of parts (413) instead of
    Starlette's 1000 (400), and to name the problem.
    """
    # One part over the image limit is still read, so that the count check can say how many.
    parser = MultiPartParser(request.headers, request.stream(), max_files=max_images + 1, max_fields=max_images + 1)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        if error.message.startswith("Too many files"):
            raise HTTPException(413, f"more than {max_images} images in one request; the limit is {max_images}")
        if error.message.startswith("Too many fields"):
            raise HTTPException(413, f"more than {max_images + 1} form fields in one request; {MULTIPART_HINT}")
        raise HTTPException(400, f"malformed multipart body: {error.message}")
    try:
        files = form.getlist("files")
        if not files:
            raise HTTPException(400, "files: Field required")
        unexpected = sorted(set(form.keys()) - {"files"})
        if unexpected:
            raise HTTPException(400, f"unexpected field {unexpected[0]!r}")
        _check_image_count(len(files), max_images)
        images = []
        for i, file in enumerate(files):
            if not isinstance(file, UploadFile):
                raise HTTPException(400, f"files[{i}]: a text field, not a file")
            images.append((await file.read(), file.filename or f"files[{i}]"))
        return images
    finally:
        await form.close()


def _add_page_and_health(app, service):
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    @app.get("/healthz", response_model=Health, summary="Liveness, the model's name and batching counters")
    async def healthz():
        stats, settings = service.batcher.stats, service.settings
        return Health(status="ok", model=service.name, batching=BatchingStatus(
            max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
            batches=stats.batches, images=stats.items, largest_batch=stats.largest_batch))


def _model_name_path(service):
    # The enum tells OpenAPI clients (and fuzzers) the one name that exists; others get 404.
    return Path(description="the model's name", json_schema_extra={"enum": [service.name]})


VERSION_PATH = Path(description="the model's version; a catsdogs server has one", ge=1,
                    json_schema_extra={"enum": [MODEL_VERSION]})


def _add_status_routes(app, service, auth):
    info = service.info

    def status():
        return ModelStatus(
            model_version_status=[ModelVersionStatus(version=str(MODEL_VERSION))], name=service.name,
            classes=info.class_names, backbone=info.backbone, input_size=[info.image_size, info.image_size, 3],
            threshold=info.threshold, temperature=info.temperature, reject_threshold=info.reject_threshold,
            metrics=service.metrics, format=service.format, heatmaps=service.heatmaps,
            prediction_sets=info.conformal is not None, coverage=service.default_coverage)

    common = dict(response_model=ModelStatus, dependencies=auth["dependencies"])

    @app.get("/v1/models/{model_name:model_name}", responses=_responses(400, 404, *auth["statuses"]),
             summary="The model: TensorFlow Serving's status, classes, backbone, input size, test metrics", **common)
    async def model_status(model_name: str = _model_name_path(service)):
        service.check_model(model_name)
        return status()

    @app.get("/v1/models/{model_name:model_name}/versions/{version:int}", responses=_responses(400, 404, *auth["statuses"]),
             summary="The model's status at a version, as TensorFlow Serving's clients ask for it", **common)
    async def model_version_status(model_name: str = _model_name_path(service), version: int = VERSION_PATH):
        service.check_model(model_name, version)
        return status()


def _add_predict_routes(app, service, auth):
    settings = service.settings
    heatmap_query = Query(False, description="also return the Grad-CAM heatmap of the predicted class")
    reject_query = Query(True, description="answer 'unknown' for photos under the reject threshold "
                                           "(false: always one of the classes)")
    threshold_query = Query(None, ge=0, le=1, description="reject threshold instead of the model's own "
                                                          "(higher rejects more)")
    coverage_query = Query(None, ge=0, lt=1, description="also answer each photo's prediction set at this coverage, "
                                                         "e.g. 0.95 (0: none; default: the server's)")
    tf_serving = dict(
        response_model=PredictResponse, response_model_exclude_none=True, dependencies=auth["dependencies"],
        responses=_responses(400, 404, 408, 413, 415, 422, 503, *auth["statuses"]),
        openapi_extra={"requestBody": {"required": True,
                                       "content": {"application/json": {"schema": _request_schema(settings)}}}})

    async def tf_serving_predict(request, heatmap, reject, reject_threshold, coverage):
        coverage = service.coverage(coverage, reject, reject_threshold)
        async with service.request_slot(request):  # bounds the bodies held in memory at once
            images = await _read_instances(request, settings.max_images)
            return PredictResponse(predictions=await service.predict_images(images, heatmap, reject, reject_threshold,
                                                                            coverage))

    @app.post("/v1/models/{model_name:model_name}:predict",
              summary="Predict, TensorFlow Serving's REST API (base64 images)", **tf_serving)
    async def predict_latest(request: Request, model_name: str = _model_name_path(service),
                             heatmap: bool = heatmap_query, reject: bool = reject_query,
                             reject_threshold: float | None = threshold_query,
                             coverage: float | None = coverage_query):
        service.check_model(model_name)
        return await tf_serving_predict(request, heatmap, reject, reject_threshold, coverage)

    @app.post("/v1/models/{model_name:model_name}/versions/{version:int}:predict",
              summary="Predict with a version of the model, TensorFlow Serving's REST API", **tf_serving)
    async def predict_version(request: Request, model_name: str = _model_name_path(service),
                              version: int = VERSION_PATH, heatmap: bool = heatmap_query,
                              reject: bool = reject_query, reject_threshold: float | None = threshold_query,
                              coverage: float | None = coverage_query):
        service.check_model(model_name, version)
        return await tf_serving_predict(request, heatmap, reject, reject_threshold, coverage)

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              responses=_responses(400, 408, 413, 415, 422, 503, *auth["statuses"]),
              summary="Predict uploaded images (multipart/form-data, field 'files')",
              dependencies=[Depends(_require_multipart), *auth["dependencies"]],
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"multipart/form-data": {"schema": _upload_schema(settings)}}}})
    async def upload_predict(request: Request, heatmap: bool = heatmap_query, reject: bool = reject_query,
                             reject_threshold: float | None = threshold_query,
                             coverage: float | None = coverage_query):
        coverage = service.coverage(coverage, reject, reject_threshold)
        async with service.request_slot(request):
            images = await _read_uploads(request, settings.max_images)
            return PredictResponse(predictions=await service.predict_images(images, heatmap, reject, reject_threshold,
                                                                            coverage))


def create_app(classifier, name="model", metrics=None, settings=None, host="127.0.0.1"):
    """The FastAPI application serving one catsdogs model.

    Args:
        classifier: the `Classifier` to serve (`load_served_model`), in any runtime.
        name: the model's name in TensorFlow Serving's URLs (/v1/models/NAME).
        metrics: test metrics to report with the model, if any.
        settings: `ServeSettings`; with an `api_key`, the model's routes require it.
        host: the address the server listens on: requests must name it, loopback or an allowed host
            (`security.protect`).

    Returns:
        a FastAPI app; `app.state.batcher` is its `MicroBatcher`.
    """
    settings = settings or ServeSettings()
    service = Service(classifier, name, metrics, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(service.predictor.warm_up)
        await service.batcher.start()
        yield
        await service.batcher.stop()
        service.decoder.shutdown(wait=False, cancel_futures=True)

    # The schema is open even with an API key, so it names the model and nothing more of it
    # (README, "Authentication"); /redoc renders the description as HTML: the name is escaped.
    app = FastAPIOffline(
        title="catsdogs", version=__version__, lifespan=lifespan,
        description=f"Serves the image classifier {markdown_text(name)}: its classes, backbone and test metrics are "
                    "at `GET /v1/models/{model_name}` (which needs the API key when the server has one). Errors are "
                    "JSON objects `{\"error\": \"...\"}`.")
    app.state.batcher = service.batcher
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes, timeout_s=settings.body_timeout_s)
    protect(app, host, settings.allowed_hosts)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    auth = {"dependencies": [], "statuses": []}
    if settings.api_key:
        auth = {"dependencies": [Depends(_api_key_dependency(settings.api_key))], "statuses": [401]}
    add_error_handlers(app, PREDICT_HINTS)
    _add_page_and_health(app, service)
    _add_status_routes(app, service, auth)
    _add_predict_routes(app, service, auth)
    return app


def _warn_if_exposed(host, settings):
    from catsdogs.apps.web.server import LOOPBACK_HOSTS

    if host not in LOOPBACK_HOSTS and not settings.api_key:
        log.warning("listening on %s without an API key: anyone who can reach this machine can use the service "
                    "(set --api-key or CATSDOGS_API_KEY)", host)


def serve(run_or_model, host="127.0.0.1", port=8000, settings=None, name=None, format=None):
    """Loads a model and serves it with uvicorn until interrupted (SIGINT or SIGTERM).

    Args:
        run_or_model: a run directory, a .keras file or an export folder (`catsdogs export`).
        host: the address to listen on; the default is reachable from this machine only.
        port: 0 picks a free port (the log says which).
        settings: `ServeSettings`, limits and timeouts included.
        name: the model's name in the URLs (default: the run directory's name).
        format: as for `classifier.load` (default: whatever `run_or_model` holds).
    """
    from catsdogs.apps.web.server import Server, uvicorn_config

    settings = settings or ServeSettings()
    classifier, default_name, metrics = load_served_model(run_or_model, format)
    app = create_app(classifier, name or default_name, metrics, settings, host)
    _warn_if_exposed(host, settings)
    log.info("serving %s: web page at /, API documentation at /docs%s", name or default_name,
             " (API key required)" if settings.api_key else "")
    try:
        Server(uvicorn_config(app, host, port, settings)).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it has handled, once it has shut down
        pass
