"""The HTTP service: TensorFlow Serving's REST API, the Open Inference Protocol (V2), catsdogs' own
labelled answers (JSON or multipart uploads), model status, a web page.

Requests are decoded in worker threads, then queued for a `MicroBatcher` that runs the model in
its own thread: the event loop only moves bytes. Every error is a JSON `{"error": "..."}`, the
shape TensorFlow Serving uses, with a 4xx status for anything the client can fix.

Memory is bounded by design (docs/serving.md, "Memory and time are bounded"): at most `max_active_requests` requests hold a
body, at most `max_decodes` images are decoded at once, each near the model's input size, and
the pixels of one request are budgeted from the images' headers before any is decoded. A JSON
body's structure is counted before it is parsed, and its images before they are decoded.

Which route speaks which protocol: TensorFlow Serving's answer the model's output tensors by name
(`tf_serving`), the V2 routes typed tensors (`open_inference`), and /predict catsdogs' labelled
answer (label, probability per class, "unknown", heatmaps) to TF Serving's JSON or a multipart upload.
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
from typing import Annotated

import numpy as np
from fastapi import Depends, Path, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from catsdogs import __version__
from catsdogs.apps.serve import open_inference, tf_serving
from catsdogs.apps.serve.batcher import MicroBatcher
from catsdogs.apps.serve.signature import IMAGE_INPUT, PIXELS_INPUT, Signature
from catsdogs.apps.web.handlers import add_error_handlers, describe_validation_error
from catsdogs.apps.web.limits import (
    CLOSE_CONNECTION,
    BodyLimit,
    check_image_count,
    count_json_tokens,
    release_free_memory,
)
from catsdogs.apps.web.photos import (
    TRAINING_PHOTO_ROUTE,
    SimilarPhotoAnswer,
    similar_answers,
    training_photo_response,
)
from catsdogs.apps.web.security import markdown_text, protect
from catsdogs.config.choices import MAX_SIMILAR
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
JSON_EXAMPLE = ('{"instances": [{"b64": "<base64 of an image file>"}]} (row format) or '
                '{"inputs": [{"b64": "..."}]} (columnar format)')
# TF Serving reads the body as JSON whatever its content type; so do we for the types its clients
# send: JSON, none, and curl -d's default (x-www-form-urlencoded).
JSON_TYPES = ("application/json", "application/x-www-form-urlencoded", "")
MULTIPART_HINT = "send one or more images as multipart/form-data in the field 'files'"
# What each predict route expects, added to its 400 answers.
PREDICT_HINTS = {"/v1/models/{model_name}:predict": f"expected JSON like {JSON_EXAMPLE}",
                 "/v1/models/{model_name}/versions/{version}:predict": f"expected JSON like {JSON_EXAMPLE}",
                 "/predict": f"{MULTIPART_HINT}, or JSON like {JSON_EXAMPLE}"}
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
    similar: int = 0  # how many similar training photos to name


@dataclasses.dataclass
class Result:
    """The model's answer for one photo."""

    outputs: dict  # as a runtime gives them, for this photo: probabilities [, in_distribution_score]
    label: int  # the predicted class (a multi-label model's most probable label): the one its heatmap explains
    heatmap: np.ndarray = None  # Grad-CAM of the predicted class, when asked for
    similar: tuple = None  # the training photos most similar to it (`inference.similar.SimilarPhoto`), when asked for


class Predictor:
    """The batch function: decoded photos in, the runtime's outputs (and heatmaps on request) out.

    The classifier's runtime computes the outputs, whatever it is (Keras, SavedModel, ONNX,
    TFLite: `model_formats.load`), on pixels prepared as `catsdogs predict` prepares them. Grad-CAM
    runs only for the photos that ask for a heatmap, and needs the Keras model. A photo that cannot
    be prepared gets an `ImageError` in its place; the others still run.

    Where the classifier names similar training photos, every batch runs the forward that finds the
    `max_similar` most similar (one compiled graph, the bank's top-k costing little beside the
    backbone), and each photo keeps the number it asked for.
    """

    def __init__(self, classifier):
        """Args:
            classifier: the `Classifier` to serve.
        """
        self.classifier = classifier
        # Grad-CAM opens the Keras model at its last convolutional block: an export has no such block.
        self.explainer = classifier.explainer() if classifier.model is not None else None
        try:
            classifier.check_similar(1)
            self.max_similar, self.why_not_similar = min(MAX_SIMILAR, classifier.runtime.bank_size), None
        except CatsdogsError as error:  # said to a client that asks for similar photos
            self.max_similar, self.why_not_similar = 0, str(error)
        self.forward = classifier.runtime.with_similar(self.max_similar) if self.max_similar else classifier.runtime

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
        outputs = self.forward(batch)
        labels = outputs["probabilities"].argmax(axis=1) if info.multi_label else \
            model_lib.predicted_classes(outputs["probabilities"], info.threshold)
        explained = [k for k, i in enumerate(indices) if jobs[i].heatmap]
        heatmaps = dict(zip(explained, self.explainer.heatmaps(batch[explained], labels[explained]))) if explained else {}
        similar = (outputs.pop(model_lib.SIMILAR_ROWS), outputs.pop(model_lib.SIMILARITIES)) if self.max_similar \
            else None
        for k, i in enumerate(indices):
            photos = self.classifier.training_photos.similar(similar[0][k][:jobs[i].similar],
                                                             similar[1][k][:jobs[i].similar]) \
                if similar and jobs[i].similar else None
            results[i] = Result({name: values[k] for name, values in outputs.items()}, int(labels[k]),
                                heatmaps.get(k), photos)
        return results

    def warm_up(self):
        """Traces the model's compiled functions once, so that the first request is not slow."""
        self([Job(np.zeros((8, 8, 3), np.uint8), self.explainer is not None, "warm-up")])


# Fields beyond these are refused: they would cost a parse and mean nothing (TF Serving reads an
# object with more keys than "b64" as named inputs, not as an image).
class B64Image(BaseModel):
    model_config = ConfigDict(extra="forbid")

    b64: str = Field(description="an image file (JPEG, PNG, WEBP, GIF, BMP, TIFF), base64-encoded")


def _input_value(value):
    """TF Serving also takes the input by its name: an instance {"image_bytes": {"b64": ...}}, the
    columnar {"inputs": {"image_bytes": [...]}}. Its value, so that both forms read as one."""
    if isinstance(value, dict) and set(value) == {IMAGE_INPUT}:
        return value[IMAGE_INPUT]
    return value


def _images_by_name(value):
    """The images of a request given by the input's name ({"image_bytes": [...]}); any other name is refused."""
    if isinstance(value, dict) and set(value) != {IMAGE_INPUT}:
        raise ValueError(f"the model's one input is {IMAGE_INPUT!r}, not {', '.join(map(repr, sorted(value)))}")
    return _input_value(value)


Images = Annotated[list[Annotated[B64Image, BeforeValidator(_input_value)]], BeforeValidator(_images_by_name)]


class PredictRequest(BaseModel):
    """TensorFlow Serving's REST predict request: row format (`instances`) or columnar (`inputs`)."""

    model_config = ConfigDict(extra="forbid")

    instances: Images | None = Field(None, description="row format: the images")
    inputs: Images | None = Field(None, description="columnar format: the images")
    signature_name: str = Field("serving_default", description="accepted for compatibility; one signature")


# Standard base64 with its padding: what `base64.b64decode(..., validate=True)` accepts.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def _request_schema(settings):
    """The OpenAPI schema of a predict request, with the limits this server enforces.

    The request is parsed by hand (TF Serving clients send it with any content type), so its
    schema is given to OpenAPI by hand too: row or columnar format, each image plain or by the
    input's name, the image object inlined.
    """
    image = B64Image.model_json_schema()
    image["properties"]["b64"].update(minLength=4, maxLength=settings.max_upload_bytes, pattern=BASE64_PATTERN)

    def named(schema):
        return {"type": "object", "properties": {IMAGE_INPUT: schema}, "required": [IMAGE_INPUT],
                "additionalProperties": False}

    images = {"type": "array", "items": image, "minItems": 1, "maxItems": settings.max_images}
    named_instances = {**images, "items": named(image)}
    signature_name = {"type": "string", "enum": ["serving_default"], "default": "serving_default",
                      "description": "accepted for compatibility; one signature"}
    row = {"type": "object", "required": ["instances"], "additionalProperties": False, "properties": {
        "instances": {"anyOf": [images, named_instances], "description": "row format: the images"},
        "signature_name": signature_name}}
    columnar = {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
        "inputs": {"anyOf": [images, named(images)], "description": "columnar format: the images"},
        "signature_name": signature_name}}
    return {"title": "PredictRequest", "description": PredictRequest.__doc__, "oneOf": [row, columnar]}


def _upload_schema(settings):
    """The OpenAPI schema of a multipart upload (parsed by hand, to answer too many parts with 413)."""
    files = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
             "maxItems": settings.max_images, "description": "one or more image files"}
    return {"type": "object", "required": ["files"], "properties": {"files": files}, "additionalProperties": False}


class PredictionAnswer(BaseModel):
    """One photo's answer on the wire: `classifier.Prediction`'s fields, and the heatmap where asked for."""

    label: str | None = Field(None, description=(
        "the predicted class, or 'unknown' when the photo looks like none of them (a multi-label model's "
        "answer is `labels`: it has a label only when the photo is rejected, 'unknown')"))
    probability: float | None = Field(None, description="the probability of the most probable class (single-label)")
    probabilities: dict[str, float] = Field(description="the probability of every class (multi-label: of every "
                                                        "label, each its own)")
    labels: list[str] | None = Field(None, description=(
        "a multi-label model's answer: the labels whose probability reaches their threshold, most probable first; "
        "[] when none applies, and when the photo is rejected"))
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
        "with heatmap=true: the Grad-CAM heatmap of the predicted class (multi-label: the most probable label), a "
        "base64 PNG with transparency in the photo's proportions, to stretch over the photo"))
    similar: list[SimilarPhotoAnswer] | None = Field(None, description=(
        "with similar=K: the K training photos whose features are most similar to the photo's, most similar first"))


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
    threshold: float | None = Field(description="for two classes: the probability of the second at which it is "
                                                "predicted (None for a multi-label model: see thresholds)")
    temperature: float | None
    multi_label: bool = Field(False, description="whether the model answers a set of labels, each its own yes or no")
    thresholds: dict[str, float] | None = Field(None, description=(
        "a multi-label model's: the probability at which each label is predicted"))
    reject_threshold: float | None = Field(None, description=(
        "photos whose in-distribution score is below it are answered 'unknown' (models with an open-set score)"))
    metrics: dict | None = Field(description="the test metrics of the run (metrics.json), if the model came with them")
    format: str = Field(description="how the model served is stored: keras, or the format of the export served")
    heatmaps: bool = Field(description="whether heatmap=true is available (Grad-CAM needs the Keras model)")
    similar: int = Field(0, description=(
        "the most training photos similar=K names (0: none, this model does not keep them or is an export)"))
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
    process_id: int = Field(description="the process that answered (with Ray Serve, one per replica)")


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
        self.signature = Signature.of(classifier.info)
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
        if version is not None and str(version) != str(MODEL_VERSION):  # an int in TF Serving's URLs, V2's a string
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

    async def outputs_of_images(self, images, heatmap=False, similar=0):
        """Decodes image files (their pixels budgeted first) and runs them through the batcher.

        Args:
            images: list of (file bytes, source name).
            heatmap: also compute each photo's Grad-CAM heatmap.
            similar: also name each photo's `similar` most similar training photos.

        Returns:
            list of (decoded photo, `Result`), in order.
        """
        if heatmap and not self.heatmaps:
            raise HTTPException(400, f"heatmap=true needs the Keras model (Grad-CAM opens it at its last "
                                     f"convolutional block), and this server runs a {self.format} export: ask "
                                     f"without heatmap, or serve the run directory or its .keras file")
        if similar and not self.predictor.max_similar:
            raise HTTPException(400, f"similar={similar}: {self.predictor.why_not_similar}")
        if similar > self.predictor.max_similar:
            raise HTTPException(400, f"similar={similar}: this model names at most {self.predictor.max_similar}")
        pixels = await run_in_threadpool(self.measure, images)

        loop = asyncio.get_running_loop()

        async def decode(data, source, count):
            async with self.decode_slots:  # waiting here costs no memory: the bytes are already in
                return await loop.run_in_executor(self.decoder, self.decode, data, source, count)

        photos = await asyncio.gather(*(decode(data, source, count) for (data, source), count in zip(images, pixels)))
        results = await asyncio.gather(*(self.batcher.submit(Job(photo, heatmap, source, similar))
                                         for photo, (_, source) in zip(photos, images)))
        return list(zip(photos, results))

    async def outputs_of_pixels(self, pixels, source):
        """Runs photos already at the model's input size through the batcher.

        Args:
            pixels: (n, size, size, 3) RGB values.
            source: what to call them in errors: photo i is `source[i]`.

        Returns:
            list of `Result`, in order.
        """
        return await asyncio.gather(*(self.batcher.submit(Job(photo, False, f"{source}[{i}]"))
                                      for i, photo in enumerate(pixels)))

    async def predict_images(self, images, heatmap, reject=True, reject_threshold=None, similar=0, coverage=0):
        """images: list of (file bytes, source name) -> list of PredictionAnswer (see `classifier.decide`)."""
        predictions = []
        for photo, result in await self.outputs_of_images(images, heatmap, similar):
            png = None
            if result.heatmap is not None:
                height, width = photo.shape[:2]  # shrunk or not, the photo's proportions
                png = await run_in_threadpool(explain.heatmap_png, result.heatmap, width, height)
            decision = decide(self.info, {name: value[None] for name, value in result.outputs.items()}, reject,
                              reject_threshold, coverage=coverage)[0]
            predictions.append(PredictionAnswer(**decision, heatmap_png=base64.b64encode(png).decode() if png else None,
                                                similar=similar_answers(result.similar) if similar else None))
        return predictions


def _max_json_tokens(max_images):
    """The most separators and brackets (`,` `:` `[` `{`) a predict request of `max_images` images may hold.

    Their count bounds what a parse builds (`count_json_tokens`). A valid request holds at most 5
    per image (each named by the input's name) and 4 more; the margin lets a request of up to a
    fifth more images be parsed, to be told how many it holds.
    """
    return 6 * max_images + 4


async def _read_instances(request, max_images):
    """The images of a TF Serving predict request (`_parse_instances`)."""
    if _media_type(request) not in JSON_TYPES:
        raise HTTPException(415, f"expected Content-Type application/json, got {_media_type(request)}")
    body = await request.body()
    # In a worker thread, so that the event loop goes on answering: a parse or a decode of a
    # body of 32 MiB holds the interpreter for tens of milliseconds at a time.
    return await run_in_threadpool(_parse_instances, body, max_images)


def _parse_instances(body, max_images):
    """Parses and decodes the body of a TF Serving predict request, row or columnar format.

    Its JSON structure is counted before it is parsed (a body of millions of tiny instances is
    refused for the cost of a scan), and the instances before any is decoded. While it is parsed,
    a body of n bytes costs at most 3n: itself, pydantic's copy of its strings, the strings.

    Returns:
        (list of (bytes, "instances[i]" or "inputs[i]"), whether the request is in columnar format).
    """
    if not body or body.isspace():
        raise HTTPException(400, "empty request body")
    tokens = count_json_tokens(body)
    if tokens > _max_json_tokens(max_images):
        raise HTTPException(413, f"the request's JSON has {tokens} separators and brackets, more than "
                                 f"{max_images} images need ({_max_json_tokens(max_images)}): send at most "
                                 f"{max_images} instances")
    try:
        parsed = PredictRequest.model_validate_json(body)
    except ValidationError as error:
        raise HTTPException(400, describe_validation_error(error.errors()))
    if parsed.instances is not None and parsed.inputs is not None:
        raise HTTPException(400, "both instances (row format) and inputs (columnar format): send one of them")
    if parsed.instances is None and parsed.inputs is None:
        raise HTTPException(400, "instances (row format) or inputs (columnar format): Field required")
    columnar = parsed.inputs is not None
    field, instances = ("inputs", parsed.inputs) if columnar else ("instances", parsed.instances)
    if not instances:
        raise HTTPException(400, f"no {field}")
    if parsed.signature_name != "serving_default":
        raise HTTPException(400, f"unknown signature_name {parsed.signature_name!r}; the model has 'serving_default'")
    check_image_count(len(instances), max_images)
    images = []
    for i, instance in enumerate(instances):
        if not instance.b64:
            raise HTTPException(400, f"{field}[{i}].b64: empty")
        try:
            images.append((base64.b64decode(instance.b64, validate=True), f"{field}[{i}]"))
        except ValueError as error:  # binascii.Error, or non-ASCII characters (a plain ValueError)
            raise HTTPException(400, f"{field}[{i}].b64: not valid base64 ({error})")
    return images, columnar


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
        check_image_count(len(files), max_images)
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
        return Health(status="ok", model=service.name, process_id=os.getpid(), batching=BatchingStatus(
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
            threshold=info.threshold, temperature=info.temperature, multi_label=info.multi_label,
            thresholds=dict(zip(info.class_names, info.thresholds)) if info.multi_label else None,
            reject_threshold=info.reject_threshold,
            metrics=service.metrics, format=service.format, heatmaps=service.heatmaps,
            similar=service.predictor.max_similar, prediction_sets=info.conformal is not None,
            coverage=service.default_coverage)

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

    metadata = dict(response_model=tf_serving.Metadata, dependencies=auth["dependencies"],
                    responses=_responses(400, 404, *auth["statuses"]))

    @app.get("/v1/models/{model_name:model_name}/metadata", **metadata,
             summary="The model's signature (input and output names, dtypes, shapes) and classes, TensorFlow Serving's "
                     "metadata")
    async def model_metadata(model_name: str = _model_name_path(service)):
        service.check_model(model_name)
        return tf_serving.metadata(service.name, MODEL_VERSION, service.signature)

    @app.get("/v1/models/{model_name:model_name}/versions/{version:int}/metadata", **metadata,
             summary="The model's signature at a version, TensorFlow Serving's metadata")
    async def model_version_metadata(model_name: str = _model_name_path(service), version: int = VERSION_PATH):
        service.check_model(model_name, version)
        return tf_serving.metadata(service.name, MODEL_VERSION, service.signature)


def _add_predict_routes(app, service, auth):
    settings = service.settings
    heatmap_query = Query(False, description="also return the Grad-CAM heatmap of the predicted class")
    reject_query = Query(True, description="answer 'unknown' for photos under the reject threshold "
                                           "(false: always one of the classes)")
    threshold_query = Query(None, ge=0, le=1, description="reject threshold instead of the model's own "
                                                          "(higher rejects more)")
    similar_query = Query(0, ge=0, le=MAX_SIMILAR, description=(
        "also name the K training photos most similar to each photo (models that keep them: GET "
        "/v1/models/NAME says how many at most)"))
    coverage_query = Query(None, ge=0, lt=1, description="also answer each photo's prediction set at this coverage, "
                                                         "e.g. 0.95 (0: none; default: the server's)")
    json_request = {"application/json": {"schema": _request_schema(settings)}}
    tf_serving_route = dict(
        response_model=tf_serving.RowAnswer | tf_serving.ColumnarAnswer, dependencies=auth["dependencies"],
        responses=_responses(400, 404, 408, 413, 415, 422, 503, *auth["statuses"]),
        openapi_extra={"requestBody": {"required": True, "content": json_request}})

    async def tf_serving_predict(request):
        async with service.request_slot(request):  # bounds the bodies held in memory at once
            images, columnar = await _read_instances(request, settings.max_images)
            results = await service.outputs_of_images(images)
            return tf_serving.answer(service.signature, [result.outputs for _, result in results], columnar)

    @app.post("/v1/models/{model_name:model_name}:predict",
              summary="Predict, TensorFlow Serving's REST API: the model's output tensors by name", **tf_serving_route)
    async def predict_latest(request: Request, model_name: str = _model_name_path(service)):
        service.check_model(model_name)
        return await tf_serving_predict(request)

    @app.post("/v1/models/{model_name:model_name}/versions/{version:int}:predict",
              summary="Predict with a version of the model, TensorFlow Serving's REST API", **tf_serving_route)
    async def predict_version(request: Request, model_name: str = _model_name_path(service),
                              version: int = VERSION_PATH):
        service.check_model(model_name, version)
        return await tf_serving_predict(request)

    upload = {"multipart/form-data": {"schema": _upload_schema(settings)}}

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              responses=_responses(400, 408, 413, 415, 422, 503, *auth["statuses"]),
              summary="Predict, catsdogs' labelled answer: images uploaded (multipart/form-data, field 'files') "
                      "or in TensorFlow Serving's JSON",
              dependencies=auth["dependencies"],
              openapi_extra={"requestBody": {"required": True, "content": {**upload, **json_request}}})
    async def labelled_predict(request: Request, heatmap: bool = heatmap_query, reject: bool = reject_query,
                               reject_threshold: float | None = threshold_query, similar: int = similar_query,
                               coverage: float | None = coverage_query):
        coverage = service.coverage(coverage, reject, reject_threshold)
        multipart = _media_type(request) == "multipart/form-data"
        if not multipart and _media_type(request) not in JSON_TYPES:
            raise HTTPException(415, f"expected Content-Type multipart/form-data or application/json, got "
                                     f"{_media_type(request)}: {MULTIPART_HINT}, or JSON like {JSON_EXAMPLE}")
        async with service.request_slot(request):
            if multipart:
                images = await _read_uploads(request, settings.max_images)
            else:
                images, _ = await _read_instances(request, settings.max_images)
            return PredictResponse(predictions=await service.predict_images(images, heatmap, reject, reject_threshold,
                                                                            similar, coverage))

    # A plain function: decoding the photo runs in a worker thread, never in the event loop.
    @app.get(TRAINING_PHOTO_ROUTE, response_class=Response, dependencies=auth["dependencies"],
             responses=_responses(400, 404, *auth["statuses"]),
             summary="A training photo that similar=K named, by its row, at most 160 pixels a side")
    def training_photo(row: int = Path(ge=0, description="its row, as similar=K gives it")):
        return training_photo_response(service.predictor.classifier.training_photos if service.predictor.max_similar
                                       else None, row)


V2_VERSION_PATH = Path(description="the model's version; a catsdogs server has one",
                       json_schema_extra={"enum": [str(MODEL_VERSION)]})


def _inline_references(schema):
    """A pydantic JSON schema with its `$defs` written where they are referred to (OpenAPI looks for
    references at the document's root, where a schema given by hand has none)."""
    definitions = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)


def _infer_schema(service):
    """The OpenAPI schema of an inference request (parsed by hand: it may carry binary data after its
    JSON), with what this server takes: one input, its names and types, at most `max_images` photos."""
    schema = _inline_references(open_inference.InferRequest.model_json_schema())
    tensor = schema["properties"]["inputs"]["items"]
    schema["properties"]["inputs"].update(minItems=1, maxItems=1)
    tensor["properties"]["name"]["enum"] = [IMAGE_INPUT, PIXELS_INPUT]
    tensor["properties"]["datatype"]["enum"] = ["BYTES", *open_inference.PIXEL_TYPES]
    tensor["properties"]["shape"].update(minItems=1, maxItems=4, items={"type": "integer", "minimum": 1,
                                                                       "maximum": service.settings.max_images})
    return schema


def _add_open_inference_routes(app, service, auth):
    settings = service.settings
    max_tokens = open_inference.max_json_tokens(settings.max_images, settings.max_upload_bytes)
    model_routes = dict(dependencies=auth["dependencies"], responses=_responses(400, 404, *auth["statuses"]))

    @app.get("/v2/health/live", response_model=open_inference.ServerLive,
             summary="Open Inference Protocol: whether the server is live")
    async def server_live():
        return open_inference.ServerLive(live=True)

    @app.get("/v2/health/ready", response_model=open_inference.ServerReady,
             summary="Open Inference Protocol: whether the server is ready (its model loaded and warmed up)")
    async def server_ready():
        return open_inference.ServerReady(ready=True)  # the app answers only once its lifespan has started

    @app.get("/v2", response_model=open_inference.ServerMetadata,
             summary="Open Inference Protocol: the server's name, version and extensions")
    async def server_metadata():
        return open_inference.server_metadata()

    def metadata():
        return open_inference.model_metadata(service.name, MODEL_VERSION, service.signature, service.format)

    @app.get("/v2/models/{model_name:model_name}", response_model=open_inference.ModelMetadata,
             summary="Open Inference Protocol: the model's inputs, outputs and classes", **model_routes)
    async def model_metadata(model_name: str = _model_name_path(service)):
        service.check_model(model_name)
        return metadata()

    @app.get("/v2/models/{model_name:model_name}/versions/{version}", response_model=open_inference.ModelMetadata,
             summary="Open Inference Protocol: the model's metadata at a version", **model_routes)
    async def model_version_metadata(model_name: str = _model_name_path(service), version: str = V2_VERSION_PATH):
        service.check_model(model_name, version)
        return metadata()

    @app.get("/v2/models/{model_name:model_name}/ready", response_model=open_inference.ModelReady,
             summary="Open Inference Protocol: whether the model is ready", **model_routes)
    async def model_ready(model_name: str = _model_name_path(service)):
        service.check_model(model_name)
        return open_inference.ModelReady(name=service.name, ready=True)

    @app.get("/v2/models/{model_name:model_name}/versions/{version}/ready", response_model=open_inference.ModelReady,
             summary="Open Inference Protocol: whether the model is ready at a version", **model_routes)
    async def model_version_ready(model_name: str = _model_name_path(service), version: str = V2_VERSION_PATH):
        service.check_model(model_name, version)
        return open_inference.ModelReady(name=service.name, ready=True)

    async def infer(request):
        if _media_type(request) not in (*JSON_TYPES, "application/octet-stream"):
            raise HTTPException(415, f"expected Content-Type application/json (or application/octet-stream with "
                                     f"{open_inference.BINARY_HEADER}), got {_media_type(request)}")
        async with service.request_slot(request):
            body = await request.body()
            parsed = await run_in_threadpool(
                open_inference.parse_request, body, request.headers.get(open_inference.BINARY_HEADER),
                service.signature, settings.max_images, max_tokens)
            if parsed.files is not None:
                results = [result for _, result in await service.outputs_of_images(parsed.files)]
            else:
                results = await service.outputs_of_pixels(parsed.pixels, PIXELS_INPUT)
            content, headers, media_type = open_inference.response(service.name, MODEL_VERSION, parsed,
                                                                   [result.outputs for result in results])
            return Response(content, headers=headers, media_type=media_type)

    answer = {"application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
              "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": (
                  f"with binary outputs: the JSON answer, {open_inference.BINARY_HEADER} bytes, then the outputs")}}}
    infer_route = dict(
        response_model=open_inference.InferResponse, dependencies=auth["dependencies"],
        responses={200: {"content": answer}, **_responses(400, 404, 408, 413, 415, 422, 503, *auth["statuses"])},
        openapi_extra={"requestBody": {"required": True,
                                       "content": {"application/json": {"schema": _infer_schema(service)}}}})

    @app.post("/v2/models/{model_name:model_name}/infer",
              summary="Open Inference Protocol: the model's outputs for photos (BYTES image files or FP32/UINT8 "
                      "pixels)", **infer_route)
    async def infer_latest(request: Request, model_name: str = _model_name_path(service)):
        service.check_model(model_name)
        return await infer(request)

    @app.post("/v2/models/{model_name:model_name}/versions/{version}/infer",
              summary="Open Inference Protocol: inference with a version of the model", **infer_route)
    async def infer_version(request: Request, model_name: str = _model_name_path(service),
                            version: str = V2_VERSION_PATH):
        service.check_model(model_name, version)
        return await infer(request)


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
    # (docs/serving.md, "Authentication"); /redoc renders the description as HTML: the name is escaped.
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
    _add_open_inference_routes(app, service, auth)
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
