"""Domain errors. Each message tells the user what was wrong and what to do.

Input errors are FastAPI ``HTTPException``s, so MONAI Label's REST layer answers
them with their 4xx status and message instead of a 500; nothing is written
before the input it complains about has been validated.
"""
from starlette.exceptions import HTTPException


class MedSegError(Exception):
    """Base class of MedSeg's own non-HTTP errors."""


class ConfigError(MedSegError):
    """The app's --conf values are invalid."""


class MedSegInputError(HTTPException):
    """The client sent something we cannot use (HTTP 422 unless a subclass says otherwise)."""

    http_status = 422

    def __init__(self, message: str):
        super().__init__(status_code=self.http_status, detail=message)

    def __str__(self) -> str:
        return str(self.detail)


class EditNotRememberedError(MedSegInputError):
    """A guided-editing request asked to continue an edit the server no longer remembers (409: the
    client sends the segment as the prior again)."""

    http_status = 409


class UnknownImageError(MedSegInputError):
    http_status = 404


class UnsupportedMediaError(MedSegInputError):
    http_status = 415


class UnknownModelError(MedSegInputError):
    http_status = 404
