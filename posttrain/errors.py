"""Errors a user can cause.

Anything a user can get wrong (a config key, a dataset row, a model path) is raised as a
:class:`UserError` at the boundary where it is detected. The CLI prints its message as one line
(``error: <message>``) and exits with status 2, without a traceback. Internal bugs raise ordinary
exceptions and keep their tracebacks.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; ``str(err)`` is the one line shown to the user."""

    exit_code = 2


class ConfigError(UserError):
    """A config key is unknown, has the wrong type, or is out of range."""


class DataError(UserError):
    """A dataset file or row is malformed.

    The message reads ``FILE:ROW: column 'FIELD' ...`` (ROW is 1-based; omitted for whole-file
    problems such as an empty file), so the user can jump straight to the offending row.
    """

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None):
        where = ""
        if file is not None:
            where = f"{file}:{row}: " if row is not None else f"{file}: "
        elif row is not None:
            where = f"row {row}: "
        self.file, self.row, self.field = file, row, field
        super().__init__(where + message)


class ModelError(UserError):
    """A model path or hub id cannot be loaded."""


class TrainingDiverged(UserError):
    """Loss or gradients became NaN/inf; the last good checkpoint is kept."""
