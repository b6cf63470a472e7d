"""Writing files so that a crash never leaves a half-written one where a complete one is expected, and
keeping the paths that a file names inside the folder they belong to."""

import contextlib
import hashlib
import os
import uuid


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`, moved over `path` only if the block succeeds.

    The temporary name is hidden (leading dot) and ends like `path`, so writers that insist on
    an extension (Keras' ".keras", ".weights.h5") accept it and globs for finished files skip it.
    It is removed if the block fails, and `os.replace` makes the final move atomic.

    Args:
        path: the file to write.

    Yields:
        the temporary path to write to.
    """
    folder, name = os.path.split(os.fspath(path))
    partial = os.path.join(folder, f".partial-{uuid.uuid4().hex[:12]}-{name}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_text(path, text):
    """Writes a text file atomically."""
    with atomic_path(path) as partial:
        # surrogateescape: file names that are not valid UTF-8 are written back as their own bytes.
        with open(partial, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(text)


def is_inside(folder, path):
    """Whether `path` lies inside `folder` (or is it), by their names: `..` and absolute paths that
    lead out are caught. Links are not followed; to judge where a path really leads, pass both
    through `os.path.realpath`.

    Args:
        folder: the folder.
        path: a path, absolute or relative to the working directory (as `folder`).
    """
    folder, path = os.path.abspath(folder), os.path.abspath(path)
    return os.path.commonpath([folder, path]) == folder


def timestamp():
    """The date and time in folder names of runs and evaluations: 20261129-142501."""
    import datetime

    return f"{datetime.datetime.now():%Y%m%d-%H%M%S}"


def sha256(chunks) -> str:
    """The SHA-256 (hex) of bytes, or of an iterable of byte strings taken as one stream: what every cache
    key and content hash of catsdogs is."""
    digest = hashlib.sha256()
    for chunk in [chunks] if isinstance(chunks, (bytes, bytearray, memoryview)) else chunks:
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path) -> str:
    """The SHA-256 (hex) of a file, read in blocks (an ONNX backbone: tens of MB)."""
    with open(path, "rb") as f:
        return sha256(iter(lambda: f.read(1 << 20), b""))
