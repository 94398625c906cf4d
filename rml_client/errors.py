"""What can go wrong when talking to the daemon: one small exception hierarchy.

Every error the clients raise is an ``RmlError``. The server's refusals carry its HTTP
status and its reason (the ``"error"`` of the answer); a connection that could not be made
or kept is ``ConnectionFailed`` (also a ``ConnectionError``); a client deadline that passed
is ``DeadlineExceeded`` (also a ``TimeoutError``). Nothing the standard library or Thespian
raises escapes a client as itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rml_client.results import BatchResult

__all__ = [
    "BadRequest",
    "ConnectionFailed",
    "DeadlineExceeded",
    "HttpStatusError",
    "RmlError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedAnswer",
]


class RmlError(Exception):
    """Base of every error a client of the daemon raises.

    A ``GatewayClient.send`` that fails part-way sets ``acknowledged`` (what the batches
    before the failed one were answered) and ``unacknowledged`` (the items not
    acknowledged: the failed batch and those after it, to keep and send again).
    """

    acknowledged: BatchResult | None = None
    unacknowledged: tuple[Mapping[str, Any], ...] = ()


class ConnectionFailed(RmlError, ConnectionError):
    """No connection could be made, or it broke before an answer, on every attempt."""


class DeadlineExceeded(RmlError, TimeoutError):
    """The client's deadline passed before an answer (the last failure is the ``__cause__``)."""


class UnexpectedAnswer(RmlError):
    """The server answered something that is not this API's answer (a garbled response,
    or a body of the wrong shape): a proxy in the way, or a different service."""


class HttpStatusError(RmlError):
    """The server refused the request: its HTTP ``status`` and its ``reason``."""

    def __init__(self, status: int, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s


class BadRequest(HttpStatusError):
    """400: the request itself is wrong (``reason`` names the problem, e.g.
    ``unknown_location: ...`` or ``missing_feature: ...``); sending it again will not help."""


class Unauthorized(HttpStatusError):
    """401: no token, or one the daemon does not accept."""


class Unavailable(HttpStatusError):
    """503 (or 502/504 from a proxy), still so after the retries: overloaded, restarting, no
    model yet, a deadline the server could not meet. ``retry_after_s`` is the server's
    ``Retry-After``, when it sent one."""
