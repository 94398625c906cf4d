"""Document keys: readable where they fit, never ambiguous, never past Couchbase's limit.

A key is a prefix and parts joined by ``:``; ``%`` and ``:`` inside a part are
percent-escaped, so no two identities share a key. Couchbase keys hold at most
250 bytes: a longer one (two 128-character ids can make one) becomes the prefix
and the sha256 of its readable form, and the document carries the identity.
"""

from __future__ import annotations

import hashlib

__all__ = ["MAX_KEY_BYTES", "doc_key"]

MAX_KEY_BYTES = 250


def _escape(part: object) -> str:
    return str(part).replace("%", "%25").replace(":", "%3A")


def doc_key(prefix: str, *parts: object) -> str:
    """``prefix:part1:part2...`` with each part escaped, hashed if too long."""
    key = ":".join([prefix, *map(_escape, parts)])
    if len(key.encode("utf-8")) <= MAX_KEY_BYTES:
        return key
    return f"{prefix}#{hashlib.sha256(key.encode('utf-8')).hexdigest()}"
