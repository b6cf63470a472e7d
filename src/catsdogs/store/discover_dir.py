"""The folder that `catsdogs discover` writes: its files named once here, written atomically, read back here.

    discover.json    (INFO) the run, the folders the photos were listed from (its *sources*), the
                     clustering's parameters and counts
    clusters.csv     (CLUSTERS) every photo proposed: its absolute path, its cluster (-1: in none), why it
                     was taken (rejected or unsure), and the model's answer
    cluster-N.png    (`montage_name`) the photos of cluster N
    corrections.csv  (CORRECTIONS) the decisions on its clusters made in `catsdogs review RUN --clusters DIR`

A discover folder from elsewhere may be hostile, and its clusters.csv names photos: they are read
only inside the sources its discover.json names, by name (`..` and absolute paths that lead out
are refused), as a run directory's tables are confined to its data folder. A corrections table
adds photos from outside the data folder to training only from here (`added_photo_sources`).
"""

import dataclasses
import os

from catsdogs.errors import DataError
from catsdogs.store import run_dir
from catsdogs.utils.files import is_inside

INFO = "discover.json"
CLUSTERS = "clusters.csv"
CORRECTIONS = run_dir.CORRECTIONS
CLUSTER_COLUMNS = ("path", "cluster", "why", "predicted", "probability", "in_distribution_score")


def montage_name(number):
    """The montage of cluster `number`."""
    return f"cluster-{number}.png"


def is_discover_folder(folder):
    """Whether `folder` holds a discover.json."""
    return os.path.isfile(os.path.join(folder, INFO))


@dataclasses.dataclass
class DiscoverFolder:
    """A discover folder, read back and checked.

    Attributes:
        folder: the folder.
        info: its discover.json.
        run: the run directory the photos were judged by.
        sources: the folders the photos were listed from (absolute).
        rows: clusters.csv's rows as dicts of text, "cluster" as an int, each photo inside a source.
    """

    folder: str
    info: dict
    run: str
    sources: list
    rows: list

    def clusters(self) -> dict:
        """cluster number -> the paths of its photos, clusters in order (photos in none left out)."""
        grouped = {}
        for row in self.rows:
            if row["cluster"] >= 0:
                grouped.setdefault(row["cluster"], []).append(row["path"])
        return dict(sorted(grouped.items()))


def read(folder) -> DiscoverFolder:
    """A discover folder's discover.json and clusters.csv.

    Raises:
        DataError: naming the file: missing, unreadable, without the columns or sources needed, or naming
            a photo outside the sources (a discover folder from elsewhere could name any file).
    """
    folder = os.fspath(folder)
    info_file, clusters_file = os.path.join(folder, INFO), os.path.join(folder, CLUSTERS)
    info = run_dir.read_json(info_file)
    sources, run = info.get("sources"), info.get("run")
    if not (isinstance(sources, list) and sources and all(isinstance(s, str) and os.path.isabs(s) for s in sources)
            and isinstance(run, str)):
        raise DataError(f"{info_file}: expected the run directory (\"run\") and the absolute folders the photos came "
                        f"from (\"sources\"); this is not a discover.json that catsdogs wrote")
    rows = run_dir.RunDirectory(folder).rows(CLUSTERS)
    missing = [column for column in CLUSTER_COLUMNS if rows and column not in rows[0]]
    if missing:
        raise DataError(f"{clusters_file}: no column {', '.join(missing)}; it has {', '.join(rows[0])}")
    outside = [row["path"] for row in rows
               if not (os.path.isabs(row["path"]) and any(is_inside(source, row["path"]) for source in sources))]
    if outside:
        raise DataError(f"{clusters_file}: the photo {outside[0]!r} lies outside the folders discover was run on "
                        f"({', '.join(sources)})" + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else "")
                        + ": only photos inside them are read, as a discover folder from elsewhere could name any file")
    try:
        rows = [{**row, "cluster": int(row["cluster"])} for row in rows]
    except ValueError:
        raise DataError(f"{clusters_file}: a cluster that is not a whole number") from None
    return DiscoverFolder(folder, info, run, sources, rows)


def added_photo_sources(corrections_file, paths) -> list:
    """The folders from which a corrections table may add photos to training: those of the discover folder
    that holds it, if every photo it adds is one of that folder's clusters.csv.

    Args:
        corrections_file: a corrections table.
        paths: the photos outside the data folder it names as new classes or merged into known ones.

    Returns:
        the discover folder's sources (absolute).

    Raises:
        DataError: a table outside a discover folder, or a photo its clusters.csv does not list.
    """
    folder = os.path.dirname(os.path.abspath(corrections_file))
    if not is_discover_folder(folder):
        raise DataError(f"{corrections_file}: names photos outside the data folder ({paths[0]}"
                        + (f" and {len(paths) - 1} more" if len(paths) > 1 else "") + "); only the corrections table "
                        f"of a `catsdogs discover` folder (beside its {INFO}) adds photos to training, those of its "
                        f"{CLUSTERS}")
    discovered = read(folder)
    listed = {os.path.normpath(row["path"]) for row in discovered.rows}
    unlisted = [path for path in paths if os.path.normpath(path) not in listed]
    if unlisted:
        raise DataError(f"{corrections_file}: names photos that {os.path.join(folder, CLUSTERS)} does not list "
                        f"({unlisted[0]}" + (f" and {len(unlisted) - 1} more" if len(unlisted) > 1 else "")
                        + "); only photos that discover proposed are added to training")
    return discovered.sources
