"""Errors the server answers with, each carrying its HTTP status and a message that says what to change.

The HTTP layer turns them into OpenAI-style bodies on `/v1/*` and Kaito-style `{"detail": ...}`
bodies elsewhere; nothing here knows about HTTP beyond the status number.
"""

from __future__ import annotations


class ServingError(Exception):
    """A request or configuration the server refuses; ``status`` is the HTTP status to answer."""

    status: int = 400
    kind: str = "BadRequestError"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(ServingError):
    status = 400


class NotFound(ServingError):
    status = 404
    kind = "NotFoundError"


class Overloaded(ServingError):
    """The engine's queue is full: answer 429 with a Retry-After header."""

    status = 429
    kind = "RateLimitError"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(ServingError):
    status = 503
    kind = "ServiceUnavailableError"


class ClientGone(ServingError):
    """The client closed the connection before its (non-streamed) answer was ready; nobody reads this status."""

    status = 499  # nginx's "client closed request": counted apart in the metrics, never a 5xx
    kind = "ClientClosedRequest"


class ConfigError(ServingError):
    """Bad command line, config file or adapter directory: the server refuses to start."""

    status = 400
