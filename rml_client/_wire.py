"""The daemon's two wire formats, JSON and msgpack, as a client writes and reads them."""

from __future__ import annotations

import json
from typing import Any, Literal

from rml_client._http import RETRYABLE, Answer, Transport, retry_after_s
from rml_client.errors import (
    BadRequest,
    HttpStatusError,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
)

__all__ = ["CONTENT_TYPES", "WireFormat", "check_format", "decode", "encode", "refusal"]

WireFormat = Literal["json", "msgpack"]
CONTENT_TYPES: dict[str, str] = {"json": "application/json", "msgpack": "application/msgpack"}
_MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack",
                            "application/vnd.msgpack"})


def check_format(fmt: str) -> WireFormat:
    """``fmt`` if it is "json" or "msgpack"; else ValueError."""
    if fmt == "json":
        return "json"
    if fmt == "msgpack":
        return "msgpack"
    raise ValueError(f"format must be 'json' or 'msgpack', not {fmt!r}")


def encode(payload: Any, fmt: WireFormat) -> bytes:
    """A request body. NaN and infinities are written as JSON's ``NaN``/``Infinity``, so the
    server names the item (``not_finite``) instead of refusing the whole body."""
    if fmt == "msgpack":
        import msgpack

        packed: bytes = msgpack.packb(payload, use_bin_type=True)
        return packed
    return json.dumps(payload, separators=(",", ":")).encode()


def decode(body: bytes, content_type: str | None) -> Any:
    """An answer's body, in the format its ``Content-Type`` names (JSON unless msgpack)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        if media in _MSGPACK_TYPES:
            import msgpack

            return msgpack.unpackb(body, raw=False)
        return json.loads(body)
    except ValueError as exc:  # json's and msgpack's decode errors are ValueErrors
        raise UnexpectedAnswer(f"an answer that is not {media or 'JSON'}: {exc}") from exc


def _reason(answer: Answer) -> str:
    try:
        doc = decode(answer.body, answer.headers.get("content-type"))
    except UnexpectedAnswer:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return answer.body[:200].decode("utf-8", "replace") or f"HTTP {answer.status}"


def refusal(answer: Answer) -> HttpStatusError:
    """The typed error for an answer that is not a 200."""
    reason = _reason(answer)
    after = retry_after_s(answer.headers.get("retry-after"))
    if answer.status == 400:
        return BadRequest(400, reason, after)
    if answer.status == 401:
        return Unauthorized(401, reason, after)
    if answer.status in RETRYABLE:
        return Unavailable(answer.status, reason, after)
    return HttpStatusError(answer.status, reason, after)


def health(transport: Transport) -> dict[str, Any]:
    """``GET /health`` of whichever replica answers, as a mapping."""
    answer = transport.request("GET", "/health")
    if answer.status != 200:
        raise refusal(answer)
    doc = decode(answer.body, answer.headers.get("content-type"))
    if not isinstance(doc, dict):
        raise UnexpectedAnswer(f"not a health answer: {doc!r:.200}")
    return doc
