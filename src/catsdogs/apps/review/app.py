"""The review page's HTTP app (FastAPI + uvicorn, as `catsdogs serve`): the photos of a run to
review, their Grad-CAM, and each decision saved to the corrections file before it is answered.

Routes: the page at /, GET /photos (the list, with the decisions in force), GET
/photos/{index}/photo.jpg, GET /photos/{index}/gradcam.png (computed on first request, then kept
in memory), GET /photos/{index}/similar (the training photos most similar to it, where the model
keeps them) and GET /training-photos/{row}.jpg (one of those), and POST /photos/{index}/decision.
Errors are JSON `{"error": "..."}` as in serve.
"""

import dataclasses
import logging
import os
import secrets
import threading
from typing import Literal

from fastapi import Path
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from catsdogs import __version__
from catsdogs.apps.review.photos import read_run_photos
from catsdogs.apps.serve.app import STATIC_DIR as SERVE_STATIC_DIR
from catsdogs.apps.web.handlers import add_error_handlers
from catsdogs.apps.web.limits import BodyLimit
from catsdogs.apps.web.photos import (
    TRAINING_PHOTO_ROUTE,
    SimilarPhotoAnswer,
    jpeg_bytes,
    shown,
    similar_answers,
    training_photo_response,
)
from catsdogs.apps.web.security import ANY_ADDRESS, TOKEN_PARAMETER, markdown_text, protect
from catsdogs.config.choices import DECISIONS, REVIEW_MISTAKES, SIMILAR_SHOWN
from catsdogs.config.serve import ServeSettings
from catsdogs.data import corrections
from catsdogs.data.dataset import label_set
from catsdogs.errors import CatsdogsError, ConfigError, DataError
from catsdogs.inference import explain
from catsdogs.inference.classifier import load
from catsdogs.inference.preprocess import load_photo
from catsdogs.store.run_dir import CORRECTIONS

log = logging.getLogger(__name__)


STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
SHOWN_SIDE = 480  # longest side of the photos and overlays sent to the page
MAX_DECISION_BYTES = 4096  # a decision is a few words of JSON


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal[DECISIONS] = Field(description=(
        "keep the given label, relabel to another class, or exclude the photo from training (never a test photo)"))
    label: str | None = Field(None, description=(
        "the new class, for relabel; for a photo of a multi-label run, its new labels joined by the run's "
        "label_separator (GET /photos), '' for none"))


class PhotoState(BaseModel):
    index: int = Field(description="the photo's number in the list, in its URLs")
    path: str = Field(description="relative to the data folder, as in the run's splits.csv")
    split: str
    given_label: str = Field(description="multi-label runs: the photo's labels joined by the label_separator")
    predicted: str = Field(description="out-of-sample: out-of-fold for training photos; multi-label runs: the "
                                       "labels predicted, joined by the label_separator")
    probability: float = Field(description="of the predicted class (multi-label: of the predicted set of labels)")
    loss: float = Field(description="cross-entropy of the given label; the list is sorted by it, highest first")
    label_looks_wrong: bool = Field(description="flagged by cleanlab")
    confident_mistake: bool = Field(description="among the most confident mistakes listed")
    decision: str | None = Field(None, description="keep, relabel or exclude; none before a decision")
    label: str | None = Field(None, description="the label to train with, once decided")
    explained: str = Field(description="the class whose evidence the Grad-CAM shows: the predicted one (multi-label: "
                                       "the first label predicted, else the first given)")


class Listing(BaseModel):
    run: str = Field(description="the run directory's name")
    classes: list[str]
    label_separator: str | None = Field(None, description=(
        "a multi-label run's: what joins a photo's labels (a photo may have any number of the classes; adding or "
        "removing one is a relabel to the new set); None for one class a photo"))
    source: str = Field(description="the file the photos were read from: review.csv (predictions.csv for old runs)")
    note: str = Field(description="what to know about that source, if anything")
    corrections_file: str
    similar: bool = Field(description="whether GET /photos/{index}/similar names the training photos most similar "
                                      "to a photo (the model keeps them)")
    photos: list[PhotoState]


class Review:
    """What the routes share: the photos, the model's explainer, the decisions and their file, and the
    classifier that names the training photos most similar to a photo (None: not shown)."""

    def __init__(self, run_dir, run_photos, explainer, corrections_file, classifier=None):
        self.run = os.path.basename(os.path.normpath(run_dir))
        self.run_photos = run_photos
        self.explainer = explainer
        self.classes = explainer.class_names
        self.separator = explainer.info.label_separator  # None but for a multi-label run
        self.corrections_file = corrections_file
        self.decisions = corrections.read_corrections(corrections_file) if os.path.exists(corrections_file) else {}
        self._decision_lock = threading.Lock()  # one append at a time, in the order answered
        self._gradcam_lock = threading.Lock()  # one Grad-CAM at a time: each uses every core
        self._gradcams = {}  # index -> PNG bytes
        self.classifier = classifier
        self._similar = {}  # index -> its similar training photos
        self.why_not_similar = "this review was started without the run's classifier"
        if classifier is not None:
            try:
                classifier.check_similar(1)
                self.why_not_similar = None
            except CatsdogsError as error:  # a model without a kNN bank, or a run without similar.csv
                self.why_not_similar = str(error)

    def photo(self, index):
        photos = self.run_photos.photos
        if index >= len(photos):
            raise HTTPException(404, f"no photo {index}: the list has {len(photos)} (0 to {len(photos) - 1})")
        return photos[index]

    def state(self, index):
        photo = self.photo(index)
        decided = self.decisions.get(photo.path)
        return PhotoState(index=index, **dataclasses.asdict(photo), decision=decided.decision if decided else None,
                          label=decided.label if decided else None, explained=self.explained(photo))

    def listing(self):
        return Listing(run=self.run, classes=self.classes, label_separator=self.separator, source=self.run_photos.source,
                       note=self.run_photos.note, corrections_file=os.path.abspath(self.corrections_file),
                       similar=not self.why_not_similar,
                       photos=[self.state(index) for index in range(len(self.run_photos.photos))])

    def decide(self, index, decision, label):
        """Appends a decision to the corrections file (synced to disk) and puts it in force."""
        photo = self.photo(index)
        with self._decision_lock:
            try:
                self.decisions[photo.path] = corrections.append_decision(
                    self.corrections_file, photo.path, photo.split, photo.given_label, decision, self.classes, label,
                    self.separator)
            except DataError as error:
                raise HTTPException(400, f"{photo.path}: {error}")
        return self.state(index)

    def pixels(self, index):
        """The photo's upright RGB pixels, decoded near the model's input size."""
        path = os.path.join(self.run_photos.data_dir, self.photo(index).path)
        return load_photo(path, self.explainer.info.image_size)

    def explained(self, photo):
        """The class a photo's Grad-CAM shows the evidence for: the predicted one; of a multi-label run's photo,
        the first label predicted, else the first it is given, else the first label."""
        if self.separator is None:
            return photo.predicted
        return next(iter(label_set(photo.predicted, self.separator) + label_set(photo.given_label, self.separator)),
                    self.classes[0])

    def gradcam_png(self, index):
        """The photo with the Grad-CAM heatmap of its class (`explained`) over it, as PNG bytes."""
        with self._gradcam_lock:
            if index not in self._gradcams:
                pixels = self.pixels(index)
                class_index = self.classes.index(self.explained(self.photo(index)))
                heatmap = self.explainer.heatmaps(self.explainer.prepare(pixels)[None], [class_index])[0]
                self._gradcams[index] = explain.png_bytes(explain.overlay(shown(pixels, SHOWN_SIDE), heatmap))
            return self._gradcams[index]

    def similar(self, index):
        """The `SIMILAR_SHOWN` training photos most similar to a photo, itself left out (a training photo
        finds itself first), as the model finds them (`Classifier.predict(similar=k)`)."""
        if self.why_not_similar:
            raise HTTPException(404, self.why_not_similar)
        with self._gradcam_lock:  # the model's forward pass uses every core too
            if index not in self._similar:
                photo = self.photo(index)
                k = min(SIMILAR_SHOWN + 1, self.classifier.runtime.bank_size)
                path = os.path.join(self.run_photos.data_dir, photo.path)
                prediction = self.classifier.predict([path], similar=k, reject=False)[0]
                if prediction.error:
                    raise HTTPException(404, f"{photo.path}: {prediction.error}")
                self._similar[index] = [p for p in prediction.similar if p.path != photo.path][:SIMILAR_SHOWN]
            return self._similar[index]


INDEX_PATH = Path(ge=0, description="the photo's number in the list (GET /photos)")


def check_writable(corrections_file):
    """Refuses, before anything is shown, a corrections file that decisions could not be appended to."""
    folder = os.path.dirname(os.path.abspath(corrections_file))
    if not os.access(folder, os.W_OK) or (os.path.exists(corrections_file) and not os.access(corrections_file, os.W_OK)):
        raise ConfigError(f"corrections file {corrections_file}: cannot be written here (a missing or read-only "
                          f"folder, or a read-only file)")


def review_app(title, description, page, token, host, allowed_hosts):
    """A review page's FastAPI application, before its routes: decisions' bodies bounded, other web pages kept
    out (`security.protect`: the token, the Host and Origin checks, the headers), serve's look and the review
    page's files, JSON errors, and `page` (a file of the review's static folder) at /."""
    app = FastAPIOffline(title=title, version=__version__, description=description)
    app.add_middleware(BodyLimit, max_bytes=MAX_DECISION_BYTES, timeout_s=ServeSettings().body_timeout_s)
    protect(app, host, allowed_hosts, token)
    app.mount("/static", StaticFiles(directory=SERVE_STATIC_DIR), name="static")  # the look of serve's page
    app.mount("/review", StaticFiles(directory=STATIC_DIR), name="review")
    add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(os.path.join(STATIC_DIR, page))

    return app


def create_app(run_dir, run_photos, explainer, corrections_file, token, host="127.0.0.1", allowed_hosts=(),
               classifier=None):
    """The FastAPI application of the review page.

    Args:
        run_dir: the run directory.
        run_photos: its `apps.review.photos.RunPhotos`.
        explainer: the run's `explain.Explainer` (`catsdogs.load(run_dir, "keras").explainer()`).
        corrections_file: where decisions are appended; the decisions already there are shown.
        token: the secret every request needs (`security.TokenGate`).
        host: the address the server listens on: requests must name it, loopback or an allowed host.
        allowed_hosts: more names it answers to, as `ServeSettings.allowed_hosts` holds them.
        classifier: the run's `Classifier`, to show the training photos most similar to each photo (None: not shown).

    Returns:
        a FastAPI app.
    """
    check_writable(corrections_file)
    review = Review(run_dir, run_photos, explainer, corrections_file, classifier)
    app = review_app("catsdogs review", f"Review the labels of run {markdown_text(review.run)}: keep, relabel or "
                     "exclude each photo. Every route needs the token in the address that `catsdogs review` printed: "
                     "its cookie, `?token=TOKEN` or `Authorization: Bearer TOKEN`. Errors are JSON objects "
                     "`{\"error\": \"...\"}`.", "index.html", token, host, allowed_hosts)
    app.state.review = review

    @app.get("/photos", response_model=Listing, summary="The photos to review, highest loss first, with decisions")
    def photos():
        return review.listing()

    @app.get("/photos/{index}/photo.jpg", response_class=Response, summary="The photo, at most 480 pixels a side")
    def photo(index: int = INDEX_PATH):
        return Response(jpeg_bytes(shown(review.pixels(index), SHOWN_SIDE)), media_type="image/jpeg")

    @app.get("/photos/{index}/gradcam.png", response_class=Response,
             summary="The photo with the Grad-CAM heatmap of its predicted class over it")
    def gradcam(index: int = INDEX_PATH):
        return Response(review.gradcam_png(index), media_type="image/png")

    @app.get("/photos/{index}/similar", response_model=list[SimilarPhotoAnswer],
             summary="The training photos most similar to the photo, by the model's features (itself left out)")
    def similar(index: int = INDEX_PATH):
        return similar_answers(review.similar(index))

    @app.get(TRAINING_PHOTO_ROUTE, response_class=Response,
             summary="A training photo that /photos/{index}/similar named, by its row, at most 160 pixels a side")
    def training_photo(row: int = Path(ge=0, description="its row, as /photos/{index}/similar gives it")):
        return training_photo_response(None if review.why_not_similar else review.classifier.training_photos, row)

    # Plain functions run in a worker thread: the append and its fsync never hold the event loop.
    @app.post("/photos/{index}/decision", response_model=PhotoState,
              summary="Keep, relabel or exclude a photo; saved to the corrections file before the answer")
    def decide(body: DecisionRequest, index: int = INDEX_PATH):
        return review.decide(index, body.decision, body.label)

    return app


def review(run_dir, corrections_file=None, mistakes=REVIEW_MISTAKES, host="127.0.0.1", port=8001, allowed_hosts=(),
           clusters=None):
    """Serves the review page of a run with uvicorn until interrupted (SIGINT or SIGTERM), and logs
    its address with a new token, which lets in the browser that opens it.

    Args:
        run_dir: a run directory (`catsdogs train`).
        corrections_file: where decisions go (default: corrections.csv in the run directory; with
            `clusters`, in the discover folder, where training reads the photos it adds).
        mistakes: how many of the most confident mistakes to list, besides the flagged photos.
        host: the address to listen on; the default is reachable from this machine only.
        port: 0 picks a free port (the log says which).
        allowed_hosts: more host names the page answers to (--allowed-host), besides loopback and `host`.
        clusters: a folder of `catsdogs discover` made with this run: review its clusters instead of the
            run's photos (`apps.review.clusters`).
    """
    from catsdogs.apps.review.clusters import create_clusters_app, read_run_clusters
    from catsdogs.apps.web.server import LOOPBACK_HOSTS, Server, uvicorn_config

    settings = ServeSettings(allowed_hosts=allowed_hosts)  # checks the names
    corrections_file = corrections_file or os.path.join(clusters or run_dir, CORRECTIONS)
    # The photos are read before the model loads, so that their errors come in seconds.
    run_photos = read_run_clusters(run_dir, clusters) if clusters else read_run_photos(run_dir, mistakes)
    if os.path.exists(corrections_file):  # likewise a file that is not a corrections file
        corrections.read_corrections(corrections_file)
    token = secrets.token_urlsafe(32)
    if clusters:
        app = create_clusters_app(run_photos, corrections_file, token, host, settings.allowed_hosts)
    else:
        classifier = load(run_dir, "keras")
        app = create_app(run_dir, run_photos, classifier.explainer(), corrections_file, token, host,
                         settings.allowed_hosts, classifier)
    if host not in LOOPBACK_HOSTS:
        log.warning("listening on %s: anyone who can reach this machine and has the address printed below (its "
                    "token) can see the run's photos and change its corrections; the token travels in clear over "
                    "plain HTTP", host)
    if getattr(run_photos, "note", ""):
        log.warning("%s", run_photos.note)
    log.info("reviewing %s of %s; decisions are saved to %s", f"{len(run_photos.clusters)} clusters" if clusters
             else f"{len(run_photos.photos)} photos", run_dir, corrections_file)
    shown_host = "127.0.0.1" if host in ANY_ADDRESS else f"[{host}]" if ":" in host else host

    def show_address(port):
        log.info("review page: open http://%s:%d/?%s=%s (the token lets the browser in; keep it to yourself)",
                 shown_host, port, TOKEN_PARAMETER, token)

    try:
        Server(uvicorn_config(app, host, port, settings), on_listening=show_address).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it has handled, once it has shut down
        pass
