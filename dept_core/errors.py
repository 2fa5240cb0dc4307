"""User-facing errors.

`DeptError` is raised for bad input (configuration, data, paths). The CLI prints its message on
one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class DeptError(Exception):
    """A problem with the user's input: the message names the culprit (file, key, value)."""


class ConfigError(DeptError):
    """params.yaml (or an override) is malformed, has an unknown key or a wrong value."""


class DataError(DeptError):
    """A data source is missing, empty, not UTF-8 text, or too small for what is asked of it."""
