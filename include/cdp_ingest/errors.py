"""Domain exceptions. Adapters catch these and turn them into task failures/notifications."""

from __future__ import annotations

from typing import Any


class IngestError(Exception):
    """Base class for every error the engine raises on purpose."""


class FileLevelError(IngestError):
    """The whole source unit cannot be imported; ``code`` is stable and shown to users.

    Codes: ``no_data_file``, ``unreadable``, ``bad_manifest``, ``manifest_reused``, ``too_large``,
    ``internal`` (retried).
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class ManifestError(FileLevelError):
    def __init__(self, message: str, code: str = "bad_manifest"):
        super().__init__(code, message)


class MappingError(IngestError):
    """A mapping file is invalid (raised when it is loaded, before any row is read)."""


class StoreError(IngestError):
    """The store refused a request after retries (not a per-item failure)."""


class AccountingError(IngestError):
    """``rows_in != loaded + rejected + duplicates``: the import must not be committed."""


class RowError(ValueError):
    """One row cannot be imported; the message becomes its ``Failure Description``."""


def json_kind(value: Any) -> str:
    """What a JSON value is, for messages that say what was expected instead ("not a string")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
