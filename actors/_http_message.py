"""An HTTP exchange as values: `Request`, `Response`, `Route`, and a response's bytes.

The cut is here because these are plain data the connection protocol and the edge both need,
and that handlers see; keeping them below both lets `_http_connection` build requests and
frame responses without importing the edge that owns it. `actors.edge` re-exports the public
names; import them from there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

__all__ = ["Handler", "Request", "Response", "Route", "encode_response"]

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_RESERVED = frozenset({"content-length", "content-type", "connection", "transfer-encoding"})
_UNSAFE = frozenset("\r\n\0")
# One encoder for every response: json.dumps with options builds a new encoder per call.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
# Status line + Content-Type + "Content-Length: " per (status, content type), built once.
_heads: dict[tuple[int, str], bytes] = {}


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed HTTP request; `path` is as sent (not percent-decoded), without the query."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    peer: str


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler answers; the edge adds Content-Length (and Connection when it closes)."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, payload: Mapping[str, Any]) -> Response:
        """A strict JSON response (NaN and infinities are refused, as on the rest of the wire)."""
        return cls(status, _dumps(payload).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        """The uniform error body `{"error": message}`."""
        return cls.json(status, {"error": message})


Handler = Callable[[Request], Response]


@dataclass(frozen=True, slots=True)
class Route:
    """`blocking` handlers run in the edge's single worker thread; the others inline in the loop."""

    method: str
    path: str
    handler: Handler
    blocking: bool = False
    public: bool = False


def _head(status: int, content_type: str) -> bytes:
    key = (status, content_type)
    head = _heads.get(key)
    if head is None:
        if not _UNSAFE.isdisjoint(content_type):
            raise ValueError(f"invalid content type {content_type!r}")
        reason = _REASONS.get(status, "Unknown")
        text = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: "
        head = text.encode("latin-1")
        if len(_heads) < 1024:  # bounded, whatever handlers invent
            _heads[key] = head
    return head


def encode_response(response: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    """The response on the wire; raises ValueError for a header that could break framing.

    `head_only` (a HEAD request) keeps the Content-Length but sends no body.
    """
    head, body = _head(response.status, response.content_type), response.body
    end = b"\r\n" if keep_alive else b"\r\nConnection: close\r\n"
    for name, value in response.headers:
        # Refuse header injection and the framing headers the edge owns.
        if name.lower() in _RESERVED or not _UNSAFE.isdisjoint(name + value) or ":" in name:
            raise ValueError(f"invalid response header {name!r}")
        end += f"{name}: {value}\r\n".encode("latin-1")
    return b"%s%d%s\r\n%s" % (head, len(body), end, b"" if head_only else body)
