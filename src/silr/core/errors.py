"""Exception types, one per kind of failure.

Deep code raises these with a message that names the file or params key, what was
expected and what was found; the CLI catches them once, prints one line and exits
non-zero. Nothing below the CLI prints or exits.
"""

__all__ = [
    "MAX_QUOTED_CHARS", "CheckpointError", "ConfigError", "DataError", "IgnoredLandmarkWarning",
    "OutputError", "SilrError", "SilrWarning", "quoted",
]


class SilrError(Exception):
    """Base class of every error silr reports to the user as one line."""

    exit_code = 2


class DataError(SilrError):
    """An input data file is missing, unreadable or malformed."""


class ConfigError(SilrError):
    """A params.yaml value or command-line argument is invalid."""


class CheckpointError(SilrError):
    """A model checkpoint is missing, corrupt, foreign or does not fit."""


class OutputError(SilrError):
    """An output cannot be written (read-only directory, full disk, ...)."""


class SilrWarning(UserWarning):
    """Base class of the warnings a command prints as one `silr: warning: ...` line."""


class IgnoredLandmarkWarning(SilrWarning):
    """An input file names landmarks that silr does not use; they were skipped."""


# A value quoted in an error message is cut to this many characters: a hostile file can hold a
# value of gigabytes (a YAML alias bomb expands 344 bytes to 2 GB), and a message must stay a line.
MAX_QUOTED_CHARS = 80


def quoted(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """`repr(value)` cut to `limit` characters, without ever building the whole repr of a big
    container: containers are summarised by type and length first."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 16:
        return f"<{type(value).__name__} of {len(value)} items>"
    if isinstance(value, (str, bytes)) and len(value) > 4 * limit:
        value = value[: 4 * limit]
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
