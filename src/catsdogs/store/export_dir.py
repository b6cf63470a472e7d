"""The export folder that `catsdogs export` writes: its files named once here, written atomically, read back here.

An export folder holds the exported model (`FILE_NAMES`, by format), `export.json` (`INFO`: its
format, the file, the class names, threshold and input size of the model it came from, the
source model) and `parity.json` (`PARITY`: how closely it agrees with the Keras model, how fast
and large it is). By default it lies in the run directory of its source model, RUN/exports/FORMAT
(`default_folder`).

An export folder from elsewhere may be hostile, and its export.json names files: the exported file
must lie inside the folder (links followed), and the model it names as its source is believed only
where the export lies inside that model's folder, as `catsdogs export` writes it by default.
"""

import dataclasses
import os

from catsdogs.config.choices import FORMATS
from catsdogs.errors import DataError
from catsdogs.store import run_dir
from catsdogs.utils.files import is_inside

INFO = "export.json"
PARITY = "parity.json"
# The exported model's file (a folder for a SavedModel), by format.
FILE_NAMES = {"keras": run_dir.MODEL, "savedmodel": "saved_model", "onnx": "model.onnx", "tflite": "model.tflite"}


def default_folder(model_path, export_format, quantization="float32"):
    """<folder of the model>/exports/<format>, or tflite-<quantization> for TFLite."""
    name = f"tflite-{quantization}" if export_format == "tflite" else export_format
    return os.path.join(os.path.dirname(os.path.abspath(model_path)), run_dir.EXPORTS, name)


def is_export(folder):
    """Whether `folder` holds an export.json."""
    return os.path.isfile(os.path.join(folder, INFO))


def export_folder_of(path):
    """The export folder that `path` is or holds the exported file of, or None."""
    for candidate in (path, os.path.dirname(path)):
        if is_export(candidate):
            return candidate
    return None


def exported_file(folder, export_format):
    """Where the exported model of a format lies in its export folder."""
    return os.path.join(folder, FILE_NAMES[export_format])


def write_info(folder, metadata):
    """Writes export.json atomically."""
    run_dir.RunWriter(folder).write_json(INFO, metadata)


def write_parity(folder, parity):
    """Writes parity.json atomically."""
    run_dir.RunWriter(folder).write_json(PARITY, parity)


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """An export folder's export.json, read and checked.

    Attributes:
        folder: the export folder.
        metadata: the contents of its export.json.
        format: one of `FORMATS`.
        path: the exported file (or SavedModel folder), inside the folder.
        source: the model file it was exported from, where that is still there and the export lies
            inside its folder (see the module); else None.
    """

    folder: str
    metadata: dict
    format: str
    path: str
    source: str | None


def read_info(folder) -> ExportInfo:
    """The export.json of an export folder, its "file" confined to the folder and its "source" checked.

    Raises:
        DataError: naming export.json: missing, unreadable, of an unknown format, or naming a file
            outside the folder (links followed).
    """
    folder = os.fspath(folder)
    info_file = os.path.join(folder, INFO)
    metadata = run_dir.read_json(info_file)
    export_format = metadata.get("format")
    if export_format not in FORMATS:
        raise DataError(f"{info_file}: format {export_format!r} is none of {', '.join(FORMATS)}")
    file = metadata.get("file")
    path = os.path.join(folder, str(file))
    if not isinstance(file, str) or not is_inside(os.path.realpath(folder), os.path.realpath(path)):
        raise DataError(f"{info_file}: its \"file\" ({file!r}) leads outside the export folder {folder}; an "
                        f"export's model must be inside its folder, and this export.json is not one catsdogs "
                        f"wrote: do not load it")
    source = metadata.get("source")
    believed = isinstance(source, str) and os.path.isfile(source) and is_inside(
        os.path.realpath(os.path.dirname(source)), os.path.realpath(folder))
    return ExportInfo(folder, metadata, export_format, path, source if believed else None)


def exports_of(run_path, export_format) -> list:
    """The export folders in a run directory's exports folder whose format is `export_format`."""
    exports = os.path.join(run_path, run_dir.EXPORTS)
    names = sorted(os.listdir(exports)) if os.path.isdir(exports) else []
    return [os.path.join(exports, name) for name in names if is_export(os.path.join(exports, name))
            and run_dir.read_json(os.path.join(exports, name, INFO)).get("format") == export_format]
