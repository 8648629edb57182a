"""Errors that the command line reports as one line (no traceback)."""


class FedsparseError(Exception):
    """Base class for user-facing errors: bad config, bad data, bad input."""


class ConfigError(FedsparseError, ValueError):
    """A config key is unknown, of the wrong type, or out of range."""


class DataError(FedsparseError, ValueError):
    """A dataset is missing or malformed (the message names file and line)."""


class RunStopped(FedsparseError):
    """A run stopped before its end (too many skipped rounds): exit code 1, not 2."""
