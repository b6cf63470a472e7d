"""What a saved catsdogs model says about itself, read from its files without Keras or TensorFlow.

For processes that must stay light, such as a Ray driver that only lists files and decodes them
(its decoding tasks decode near the model's input size: `inference.preprocess.decode_photo`).
"""

import json
import os
import zipfile

from catsdogs.errors import ConfigError, ModelNotFoundError
from catsdogs.store import export_dir, run_dir

RESIZE_LAYER = "resize"  # the end-to-end model's first layer (`models.model.assemble`)


def input_size(path) -> int:
    """The input side of the model at `path`: a run directory, a .keras file or an export folder.

    Raises:
        ModelNotFoundError: `path` holds no catsdogs model whose input size can be read.
    """
    path = os.fspath(path)
    folder = export_dir.export_folder_of(path)
    if folder:
        return int(export_dir.read_info(folder).metadata["model"]["image_size"])
    model_file = os.path.join(path, run_dir.MODEL) if os.path.isdir(path) else path
    try:
        with zipfile.ZipFile(model_file) as archive:  # a .keras file is a zip holding the model's config.json
            config = json.loads(archive.read("config.json"))
        (resize,) = [layer for layer in config["config"]["layers"] if layer["config"].get("name") == RESIZE_LAYER]
        return int(resize["config"]["height"])
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as error:
        raise ModelNotFoundError(f"{path}: not a catsdogs run directory, .keras model or export folder whose input "
                                 f"size can be read ({type(error).__name__}: {error})") from None


def check_format(path, format=None):
    """The format of the model at `path` (keras, or an export's), checked against `format` if given.

    Raises:
        ConfigError: `path` holds a model of another format, naming its exports in that format or how to make one.
    """
    path = os.fspath(path)
    folder = export_dir.export_folder_of(path)
    held = export_dir.read_info(folder).format if folder else "keras"
    if format and format != held:
        found = [] if folder else export_dir.exports_of(path if os.path.isdir(path) else os.path.dirname(path), format)
        raise ConfigError(f"{path} holds a {held} model, not a {format} one. "
                          + (f"Pass one of its {format} exports: {', '.join(found)}" if found
                             else f"To make one: catsdogs export {path} --format {format}"))
    return held
