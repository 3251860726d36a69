"""Errors of the ingest API; each maps to one HTTP status."""

from __future__ import annotations

from ingest.reasons import readable
from schemas.errors import CosnapError


class IngestError(CosnapError):
    """A request the API refuses as a whole; `status` is the HTTP status, the message the reason."""

    status = 400

    def __init__(self, reason: str, *, headers: dict[str, str] | None = None) -> None:
        reason = readable(reason)
        super().__init__(reason)
        self.reason = reason
        self.headers = headers or {}


class BadRequest(IngestError):
    status = 400


class Unauthorized(IngestError):
    status = 401


class PayloadTooLarge(IngestError):
    status = 413


class UnsupportedMediaType(IngestError):
    status = 415


class ServiceUnavailable(IngestError):
    """Kafka did not acknowledge in time (backpressure): nothing was accepted, retry later."""

    status = 503


class Forbidden(IngestError):
    """The page's origin is not among the project's allowed origins."""

    status = 403


class RateLimited(IngestError):
    """The write key spent its events for now; `Retry-After` says when to come back."""

    status = 429
