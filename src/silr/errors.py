"""Exception types, one per kind of failure.

Deep code raises these with a message that names the file or params key, what was
expected and what was found; the CLI catches them once, prints one line and exits
non-zero. Nothing below the CLI prints or exits.
"""


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
