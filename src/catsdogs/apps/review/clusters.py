"""`catsdogs review RUN --clusters DIR`: the clusters of `catsdogs discover`, each a group to name as a
new class, merge into a known one, or leave out; every decision saved to the corrections file
(`data.corrections`: one row per photo of the cluster) before it is answered.

Routes: the page at / (clusters.html), GET /clusters (the list, with the decisions in force),
GET /clusters/{number}/montage.png and POST /clusters/{number}/decision. Errors are JSON
`{"error": "..."}` as in serve. No model is loaded: the clusters and their montages are on disk.
"""

import collections
import dataclasses
import os
import threading
from typing import Literal

from fastapi import Path
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from catsdogs.apps.review.app import check_writable, review_app
from catsdogs.apps.web.security import markdown_text
from catsdogs.config.choices import CLUSTER_DECISIONS
from catsdogs.data import corrections
from catsdogs.errors import DataError
from catsdogs.store import discover_dir, run_dir


@dataclasses.dataclass(frozen=True)
class ClusterPhoto:
    """A photo of a cluster, as its decision is written: the run's split and label where the run has it."""

    path: str  # absolute
    split: str  # train, val or test for a photo of the run's dataset; "" for a photo from elsewhere
    given_label: str  # the run's label of it, or ""


@dataclasses.dataclass
class RunClusters:
    """The clusters of a discover folder, with what the run knows of their photos."""

    run: str
    classes: list
    discovered: discover_dir.DiscoverFolder
    clusters: dict  # cluster number -> list of `ClusterPhoto`


def read_run_clusters(run, folder) -> RunClusters:
    """The clusters of a discover folder, their photos matched with the run's splits.csv.

    Raises:
        DataError: a discover folder or run directory that cannot be read (see `discover_dir.read`), or a
            discover folder made from another run.
    """
    discovered = discover_dir.read(folder)
    run_directory = run_dir.RunDirectory(run)
    if os.path.realpath(discovered.run) != os.path.realpath(run):
        raise DataError(f"{os.path.join(folder, discover_dir.INFO)}: its clusters were made by {discovered.run}, not "
                        f"{run}; review them with that run")
    data_dir = run_directory.data_dir()
    known = {os.path.normpath(os.path.join(data_dir, row["path"])): (row["split"], row["label"])
             for row in run_directory.photo_rows(run_dir.SPLITS, run_dir.SPLITS_COLUMNS)}
    clusters = {number: [ClusterPhoto(path, *known.get(os.path.normpath(path), ("", ""))) for path in paths]
                for number, paths in discovered.clusters().items()}
    return RunClusters(run_directory.name, run_directory.metrics()["class_names"], discovered, clusters)


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal[CLUSTER_DECISIONS] = Field(description=(
        "new_class: its photos are a class of their own, named by label; merge: they are of the known class "
        "label; leave_out: neither"))
    label: str | None = Field(None, description="the new class's name, or the known class, for new_class and merge")


class ClusterState(BaseModel):
    number: int = Field(description="the cluster's number, as in clusters.csv and its montage's name")
    photos: int
    examples: list[str] = Field(description="the names of a few of its photos")
    decision: str | None = Field(None, description="new_class, merge or leave_out, once all its photos have it")
    label: str | None = Field(None, description="the class its photos train as, once decided")


class Listing(BaseModel):
    run: str = Field(description="the run directory's name")
    classes: list[str]
    folder: str = Field(description="the discover folder")
    corrections_file: str
    clusters: list[ClusterState]


class ClusterReview:
    """What the routes share: the clusters, the decisions in force and their file."""

    def __init__(self, run_clusters, corrections_file):
        self.run_clusters = run_clusters
        self.corrections_file = corrections_file
        self.decisions = corrections.read_corrections(corrections_file) if os.path.exists(corrections_file) else {}
        self._lock = threading.Lock()  # one cluster's rows at a time, in the order answered

    def photos(self, number):
        if number not in self.run_clusters.clusters:
            raise HTTPException(404, f"no cluster {number}: the clusters are "
                                     f"{', '.join(map(str, self.run_clusters.clusters))}")
        return self.run_clusters.clusters[number]

    def state(self, number):
        photos = self.photos(number)
        decided = collections.Counter((d.decision, d.label) for d in (self.decisions.get(p.path) for p in photos) if d)
        whole = len(decided) == 1 and sum(decided.values()) == len(photos)  # every photo has the same decision
        decision, label = next(iter(decided)) if whole else (None, None)
        return ClusterState(number=number, photos=len(photos), examples=[os.path.basename(p.path) for p in photos[:3]],
                            decision=decision, label=label)

    def listing(self):
        return Listing(run=self.run_clusters.run, classes=self.run_clusters.classes,
                       folder=self.run_clusters.discovered.folder,
                       corrections_file=os.path.abspath(self.corrections_file),
                       clusters=[self.state(number) for number in self.run_clusters.clusters])

    def decide(self, number, decision, label):
        """Appends the decision of every photo of a cluster to the corrections file (each synced to disk)."""
        photos, classes = self.photos(number), self.run_clusters.classes
        try:  # checked once before any row is written: a refused decision writes nothing
            corrections.check_decision("", "", decision, label, classes)
        except DataError as error:
            raise HTTPException(400, f"cluster {number}: {error}")
        with self._lock:
            for photo in photos:
                self.decisions[photo.path] = corrections.append_decision(
                    self.corrections_file, photo.path, photo.split, photo.given_label, decision, classes,
                    label if decision != "leave_out" else None)
        return self.state(number)


NUMBER_PATH = Path(ge=0, description="the cluster's number (GET /clusters)")


def create_clusters_app(run_clusters, corrections_file, token, host="127.0.0.1", allowed_hosts=()):
    """The FastAPI application of the clusters' review page.

    Args:
        run_clusters: from `read_run_clusters`.
        corrections_file: where decisions are appended; the decisions already there are shown.
        token, host, allowed_hosts: as for `app.create_app`.

    Returns:
        a FastAPI app.
    """
    check_writable(corrections_file)
    review = ClusterReview(run_clusters, corrections_file)
    folder = run_clusters.discovered.folder
    app = review_app("catsdogs review of discovered clusters", f"Name the clusters that `catsdogs discover` found "
                     f"among the photos run {markdown_text(run_clusters.run)} rejects: a new class, a known one, or "
                     "none. Every route needs the token in the address that `catsdogs review` printed. Errors are "
                     "JSON objects `{\"error\": \"...\"}`.", "clusters.html", token, host, allowed_hosts)
    app.state.review = review

    @app.get("/clusters", response_model=Listing, summary="The clusters, largest first, with their decisions")
    def clusters():
        return review.listing()

    @app.get("/clusters/{number}/montage.png", response_class=FileResponse, summary="Photos of the cluster")
    def montage(number: int = NUMBER_PATH):
        review.photos(number)
        path = os.path.join(folder, discover_dir.montage_name(number))
        if not os.path.isfile(path):
            raise HTTPException(404, f"cluster {number} has no montage in {folder}")
        return FileResponse(path, media_type="image/png")

    @app.post("/clusters/{number}/decision", response_model=ClusterState,
              summary="Name a cluster as a new class, merge it into a known one, or leave it out; saved first")
    def decide(body: DecisionRequest, number: int = NUMBER_PATH):
        return review.decide(number, body.decision, body.label)

    return app
