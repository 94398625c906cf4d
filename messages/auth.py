"""Bearer tokens on HTTP: the one check shared by the daemon's edges and the trainer service."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

__all__ = ["bearer_matches"]


def bearer_matches(header: str | None, tokens: Iterable[bytes], *,
                   encoding: str = "latin-1") -> bool:
    """Whether `header` (an Authorization value) is `Bearer <one of tokens>`: the scheme in
    any case, spaces around the token allowed; constant-time in content (every token is
    compared, with no early exit). `encoding` turns the token back into bytes to compare with
    `tokens`: latin-1 gives the bytes on the wire when the header was decoded as latin-1."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    candidate = token.strip().encode(encoding)
    matched = False
    for expected in tokens:  # no early exit: the time spent says nothing
        matched |= hmac.compare_digest(candidate, expected)
    return matched
