"""An HTTP exchange as values: `Request`, `Response`, `Route`, and a response's bytes.

The cut is here because these are plain data the connection protocol and the edge both need,
and that handlers see; keeping them below both lets `_http_connection` build requests and
frame responses without importing the edge that owns it. `actors.edge` re-exports the public
names; import them from there.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from messages._build import builder

__all__ = [
    "FastJson",
    "Handler",
    "Request",
    "Response",
    "Route",
    "encode_json",
    "encode_response",
    "make_request",
    "make_response",
    "with_close",
]

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_RESERVED = frozenset({"content-length", "content-type", "connection", "transfer-encoding"})
_UNSAFE = frozenset("\r\n\0")
_CLOSE = b"Connection: close\r\n"
_JSON = "application/json"
# Status line + Content-Type (+ Connection: close) + "Content-Length: " per
# (status, content type, keep-alive), built once.
_heads: dict[tuple[int, str, bool], bytes] = {}


def _json_encoder() -> Callable[[Any], str]:
    """Compact, strict (no NaN) JSON text, as `json.dumps(..., allow_nan=False)` gives.

    `JSONEncoder.encode` builds a new C encoder on every call; this builds it once (half the
    cost of a small answer). Without a circular-reference check: a cyclic payload raises
    RecursionError instead of ValueError, either way the handler fails.
    """
    stock = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the stock path
        return stock.encode
    try:  # the arguments JSONEncoder.iterencode passes on 3.11 and later
        encode = make(
            None,
            stock.default,
            json.encoder.encode_basestring_ascii,
            None,
            ":",
            ",",
            False,
            False,
            False,
        )
        sample = {"a": [1, "\u00e9", 0.5]}
        if "".join(encode(sample, 0)) != stock.encode(sample):
            return stock.encode
        encode({"nan": float("nan")}, 0)
    except ValueError:  # NaN refused: the encoder is as strict as the stock one
        pass
    except TypeError:  # a Python whose C encoder takes other arguments
        return stock.encode
    else:
        return stock.encode

    def dumps(payload: Any) -> str:
        return "".join(encode(payload, 0))

    return dumps


_dumps = _json_encoder()


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
        body = _dumps(payload).encode()
        if cls is not Response:
            return cls(status, body)
        return make_response(status, body, "application/json", ())

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        """The uniform error body `{"error": message}`."""
        return cls.json(status, {"error": message})


Handler = Callable[[Request], Response]
#: A route's fast lane (`Route.fast`): given a request's body and its Content-Type header
#: (None without one), the answer its handler would give, as ``(status, JSON body)``, or None
#: to leave the request to the handler. It returns None only before doing anything the
#: handler would do again (counting, say): the handler then takes the request whole.
FastJson = Callable[[bytes, str | None], tuple[int, bytes] | None]

# The edge's hot path builds these through their slots (messages._build): a frozen
# dataclass's __init__ pays object.__setattr__ per field (1.5 us for a Request here).
#: ``Response(status, body, content_type, headers)``, every field given, built faster.
make_response: Callable[[int, bytes, str, tuple[tuple[str, str], ...]], Response] = builder(
    Response)
#: ``Request(method, path, query, headers, body, peer)``, built faster.
make_request: Callable[[str, str, str, Mapping[str, str], bytes, str], Request] = builder(Request)


@dataclass(frozen=True, slots=True)
class Route:
    """`blocking` handlers run in the edge's single worker thread; the others inline in the loop.

    `fast` (inline routes only) answers the route's usual request without the `Request` and
    `Response` objects: the edge tries it first for a request to exactly `path`, without a
    query, on a connection with nothing else to answer, and takes `handler` when it returns
    None. Every answer it gives is ``application/json``."""

    method: str
    path: str
    handler: Handler
    blocking: bool = False
    public: bool = False
    fast: FastJson | None = None


def _head(status: int, content_type: str, keep_alive: bool) -> bytes:
    if not _UNSAFE.isdisjoint(content_type):
        raise ValueError(f"invalid content type {content_type!r}")
    reason = _REASONS.get(status, "Unknown")
    text = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
    head = text.encode("latin-1") + (b"" if keep_alive else _CLOSE) + b"Content-Length: "
    if len(_heads) < 1024:  # bounded, whatever handlers invent
        _heads[(status, content_type, keep_alive)] = head
    return head


def encode_response(response: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    """The response on the wire; raises ValueError for a header that could break framing.

    `head_only` (a HEAD request) keeps the Content-Length but sends no body.
    """
    status, content_type, body = response.status, response.content_type, response.body
    head = _heads.get((status, content_type, keep_alive)) or _head(status, content_type, keep_alive)
    if not response.headers and not head_only:
        return b"%s%d\r\n\r\n%s" % (head, len(body), body)
    end = b"\r\n"
    for name, value in response.headers:
        # Refuse header injection and the framing headers the edge owns.
        if name.lower() in _RESERVED or not _UNSAFE.isdisjoint(name + value) or ":" in name:
            raise ValueError(f"invalid response header {name!r}")
        end += f"{name}: {value}\r\n".encode("latin-1")
    return b"%s%d%s\r\n%s" % (head, len(body), end, b"" if head_only else body)


def encode_json(status: int, body: bytes, keep_alive: bool) -> bytes:
    """An ``application/json`` answer on the wire: `encode_response` of
    ``Response(status, body)``, without the object."""
    head = _heads.get((status, _JSON, keep_alive)) or _head(status, _JSON, keep_alive)
    return b"%s%d\r\n\r\n%s" % (head, len(body), body)


def with_close(data: bytes) -> bytes:
    """`data`, an `encode_response(..., keep_alive=True)`, re-framed as the connection's last.

    The head ends at the first blank line: headers were checked to hold no CR or LF.
    """
    end = data.index(b"\r\n\r\n")
    return data[: end + 2] + _CLOSE + data[end + 2 :]
