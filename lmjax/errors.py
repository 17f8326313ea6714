"""Errors that stand for bad input (config values, files, workdirs): `lmjax.main` prints the first line of
their message as `error: ...` and exits with status 1. Any other exception keeps its traceback."""

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: stopped by SIGTERM after a checkpoint; the same command resumes


class InputError(ValueError):
    """A value, file or workdir the user gave cannot be used; the message says what to change."""


class MissingInput(InputError, FileNotFoundError):
    """A file or directory the user named does not exist or holds the wrong thing."""


class Unavailable(InputError, RuntimeError):
    """Something the run needs (a download, a dataset, a bucket) cannot be reached; the message says what."""
