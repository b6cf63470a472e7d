"""Every error catsdogs raises for a problem a user can fix: each says what is wrong and what to do.

All derive from `CatsdogsError`, so a caller (the command line among them) can catch these and
let anything else, an internal bug, show its traceback. Each also derives from the built-in
exception of its kind (ValueError, OSError, ...), so code that catches those keeps working.
"""


class CatsdogsError(Exception):
    """A problem with the input, the settings or the environment, explained in the message."""


class ConfigError(CatsdogsError, ValueError):
    """A setting that cannot work, found before any image is decoded."""


class DataError(CatsdogsError, ValueError):
    """A dataset that cannot be used as it is: no class folders, too few usable images, unknown classes."""


class ImageError(CatsdogsError, ValueError):
    """An image that cannot be used, with the file it came from and what is wrong with it."""

    def __init__(self, source, reason):
        super().__init__(f"{source}: {reason}")
        self.source = str(source)
        self.reason = reason


class ModelNotFoundError(CatsdogsError, FileNotFoundError):
    """A path that holds no catsdogs model."""


class UnsupportedError(CatsdogsError, RuntimeError):
    """What was asked needs something this model or result does not have: Grad-CAM of an exported
    model, the open-set score of a model trained without one."""


class WeightsError(CatsdogsError, RuntimeError):
    """Pretrained weights that cannot be had, with what to do instead."""


class CacheError(CatsdogsError, OSError):
    """The feature cache cannot be written or read; the message names the folder and what to do."""


class MissingDependency(CatsdogsError, RuntimeError):
    """An optional package is not installed; the message says how to install it."""
