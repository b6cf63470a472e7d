"""The errors catsdogs raises for problems a user can fix: each says what is wrong and what to do.

Every one derives from `CatsdogsError`, so a caller (the command line among them) can catch
these and let anything else, an internal bug, show its traceback.
"""


class CatsdogsError(Exception):
    """A problem with the input, the settings or the environment, explained in the message."""


class ConfigError(CatsdogsError, ValueError):
    """A setting that cannot work, found before any image is decoded."""


class ModelNotFoundError(CatsdogsError, FileNotFoundError):
    """A path that holds no catsdogs model."""
