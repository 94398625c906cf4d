"""Bytes to plain values: media types, strict JSON and msgpack parsing, and ``BodyError``.

The cut is here because this layer knows bytes and nothing about readings or outcomes: it
turns a body into dicts, lists and scalars, or fails the whole body. Everything that can make
a body unusable as a whole (bad UTF-8, nesting past the limit, oversized msgpack strings,
extension types, trailing bytes) is decided here, once, so the field checks above it only
ever see plain values. Duplicate keys are *not* a body error: they are marked on the object
(``DuplicateKeys``) so the error lands on the one item that has them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

import msgpack
import orjson

__all__ = [
    "MSGPACK_MEDIA_TYPES",
    "BodyError",
    "DuplicateKeys",
    "UnsupportedMediaType",
    "WireFormat",
    "has_long_digits",
    "kind_of",
    "parse",
    "show",
    "wire_format",
]

WireFormat = Literal["json", "msgpack"]

#: msgpack's media types: the preferred name first; the other two are accepted (DESIGN.md).
MSGPACK_MEDIA_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
_MSGPACK_MEDIA_TYPES = frozenset(MSGPACK_MEDIA_TYPES)
_MAX_DEPTH = 32  # real bodies nest 3 deep; anything far deeper is an attack, not data
_MAX_MSGPACK_STR = 1 << 20


class BodyError(ValueError):
    """The whole body is unusable (HTTP 400): ``code`` names why, ``detail`` says where."""

    code: str
    detail: str
    status: int = 400

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


class UnsupportedMediaType(BodyError):
    """The body's content type is neither JSON nor msgpack (HTTP 415)."""

    status: int = 415


def wire_format(content_type: str | None) -> WireFormat:
    """The wire format a Content-Type names; no content type means JSON."""
    if content_type is None or not content_type.strip():
        return "json"
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        return "json"
    if media in _MSGPACK_MEDIA_TYPES:
        return "msgpack"
    raise UnsupportedMediaType(
        "unsupported_media_type",
        f"{show(content_type)}: send application/json or application/msgpack",
    )


def parse(body: bytes, content_type: str | None) -> Any:
    """The body as plain values (dicts, lists, scalars); anything else is a ``BodyError``."""
    data = body if type(body) is bytes else bytes(body)  # bytearray, memoryview
    if wire_format(content_type) == "msgpack":
        return _parse_msgpack(data)
    return _parse_json(data)


# --- describing values in error details --------------------------------------------------------


def kind_of(value: object) -> str:
    """What sort of wire value ``value`` is, in the words an error detail uses."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes):
        return "binary"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def show(value: object) -> str:
    """``value`` quoted for an error detail, cut short so a hostile body cannot bloat it."""
    if isinstance(value, str | bytes):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a very large integer"
    if value is None or isinstance(value, int | float):
        return repr(value)
    return kind_of(value)


# --- parsing: bytes -> plain values, or BodyError --------------------------------------------


class DuplicateKeys(dict[str, Any]):
    """An object that named a key twice; kept so the error lands on the item, not the body."""

    __slots__ = ("duplicate",)
    duplicate: str


class _Refused(Exception):
    """Raised inside msgpack's hooks; becomes malformed_msgpack."""


def _object_from_pairs(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[Any] = set()
    marked = DuplicateKeys(pairs)
    for key, _ in pairs:
        if key in seen:
            marked.duplicate = key
            break
        seen.add(key)
    return marked


def _msgpack_object_from_pairs(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    for key, _ in pairs:
        if type(key) is not str:  # strict_map_key still lets bin (bytes) keys through
            raise _Refused(f"map key {show(key)} is not a string")
    return _object_from_pairs(pairs)


def _reject_ext(code: int, data: bytes) -> Any:
    raise _Refused(f"extension type {code} is not accepted")


_JSON = json.JSONDecoder(
    object_pairs_hook=_object_from_pairs,
    # NaN/Infinity parse as floats so they become a per-item not_finite, not a body error.
    parse_constant={"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.__getitem__,
)
_ONLY_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_ONLY_BRACKETS_AND_QUOTES = bytes(range(256)).translate(None, b'[]{}"')
_DEEP_RUN = re.compile(rb"[\[{]{%d}" % (_MAX_DEPTH + 1))
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19  # in a body whose digits are all made 0: a run of 19 digits


def _json_too_deep(data: bytes) -> bool:
    """Cheap pre-limit: a run of nested openers (keys and commas ignored) past the limit.

    The first look ignores strings (one translate, ~1 ms per MB); only when it fires are
    strings stripped to make sure the brackets are structure. Deeper shapes it misses still
    end in RecursionError inside the parser, which is caught too.
    """
    if not _DEEP_RUN.search(data.translate(None, _ONLY_BRACKETS)):
        return False
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = b"".join(unescaped.translate(None, _ONLY_BRACKETS_AND_QUOTES).split(b'"')[::2])
    return _DEEP_RUN.search(structure) is not None


def _count_keys(value: Any) -> int:
    """How many keys ``value``'s objects hold, nested ones included."""
    kind = type(value)
    if kind is dict:
        count = len(value)
        for item in value.values():
            if type(item) is dict or type(item) is list:
                count += _count_keys(item)
        return count
    if kind is list:
        return sum(_count_keys(item) for item in value if type(item) is dict or
                   type(item) is list)
    return 0


def has_long_digits(data: bytes) -> bool:
    """Whether ``data`` holds a run of 19 digits: an integer orjson would read as a float."""
    return _LONG_DIGITS in data.translate(_DIGITS_AS_ZERO)


def _parse_json(data: bytes) -> Any:
    """Strict JSON (see the module docstring). Parsed by orjson first, whose answer is taken
    when it is exactly what the standard parser gives: when the body's ':' count equals the
    keys its objects hold, no key was given twice (and no string holds a ':'), so there
    was nothing for the duplicate-key hook to mark. Anything orjson refuses (NaN, bad
    UTF-8, deep nesting), a long run of digits, or a body that fails that check takes the
    standard parser, which names the problem: the same result, 5-10x faster for most
    bodies."""
    # orjson reads an integer past 64 bits as a float (the standard parser: an int, which
    # the field checks refuse by name): a run of 19 digits anywhere takes the strict path.
    if not has_long_digits(data) and not _json_too_deep(data):
        try:
            doc = orjson.loads(data)
            if _count_keys(doc) == data.count(b":"):
                return doc
        except (orjson.JSONDecodeError, RecursionError):
            pass
    return _parse_json_strict(data)


def _parse_json_strict(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError("invalid_utf8", f"byte {exc.start} is not valid UTF-8") from None
    if _json_too_deep(data):
        raise BodyError("too_deep", f"nesting deeper than {_MAX_DEPTH}")
    try:
        return _JSON.decode(text)
    except RecursionError:
        raise BodyError("too_deep", f"nesting deeper than {_MAX_DEPTH}") from None
    except json.JSONDecodeError as exc:
        raise BodyError("malformed_json", f"{exc.msg} at character {exc.pos}") from None
    except Exception as exc:  # e.g. an integer past Python's digit limit: never escape
        raise BodyError("malformed_json", str(exc)[:200]) from None


def _parse_msgpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=_msgpack_object_from_pairs,
            ext_hook=_reject_ext,
            max_ext_len=0,  # also refuses the built-in timestamp ext, which skips ext_hook
            max_str_len=min(len(data), _MAX_MSGPACK_STR),
            max_bin_len=min(len(data), _MAX_MSGPACK_STR),
            max_array_len=len(data),
            max_map_len=len(data),
        )
    except (msgpack.StackError, RecursionError):
        raise BodyError("too_deep", "nesting deeper than msgpack's limit") from None
    except UnicodeDecodeError:
        raise BodyError("invalid_utf8", "a string is not valid UTF-8") from None
    except msgpack.ExtraData:
        raise BodyError("malformed_msgpack", "trailing bytes after the body") from None
    except Exception as exc:  # truncated, bad type byte, limits, ext, non-str keys: never escape
        raise BodyError("malformed_msgpack", str(exc)[:200] or type(exc).__name__) from None
