"""An append-only log of documents on the Data service: ``<name>:1``, ``<name>:2``, ...

Every store's history (status changes, champions, switches, dead letters, runs) is
such a log, and its "current" value is its newest entry. Appending takes the first
free number with ``insert``: a number already taken means another writer appended
first, so the next one is tried. No counter document exists, nothing is updated,
and the numbers have no holes, so a reader finds the end by probing keys
(doubling, then bisecting) and reads entries by number. Entries never change: a
log remembers those it has read and asks only for the rest.
"""

from __future__ import annotations

import threading
from typing import Any

from storage.couchbase.keys import doc_key
from storage.couchbase.kv import KeyValue

__all__ = ["AppendLog"]

_CHUNK = 64  # entries read per call when reading a log through


class AppendLog:
    """Entries 1..n of one log (see the module docstring); thread-safe per instance."""

    def __init__(self, kv: KeyValue, prefix: str, *parts: object) -> None:
        self._kv = kv
        self._prefix = prefix
        self._parts = parts
        self._read: list[Any] = []  # entries 1..len, as read (they never change)
        self._length = 0  # entries known to exist (at least len(self._read))
        self._lock = threading.Lock()

    def key(self, n: int) -> str:
        """The key of entry ``n``."""
        return doc_key(self._prefix, *self._parts, n)

    def _taken(self, n: int) -> bool:
        return self._kv.get(self.key(n)) is not None

    def length(self) -> int:
        """How many entries the log has now (a few gets past what was known)."""
        with self._lock:
            low = self._length  # known taken (or 0)
            if not self._taken(low + 1):
                return low
            high = low + 1
            step = 1
            while self._taken(high):
                low, step = high, step * 2
                high = low + step
            while high - low > 1:  # low taken, high free
                mid = (low + high) // 2
                low, high = (mid, high) if self._taken(mid) else (low, mid)
            self._length = low
            return low

    def append(self, doc: Any) -> int:
        """Add ``doc`` as the next entry; its number."""
        n = self.length() + 1
        while not self._kv.insert(self.key(n), doc):
            n += 1  # another writer took it first
        with self._lock:
            self._length = max(self._length, n)
        return n

    def get(self, n: int) -> Any | None:
        """Entry ``n``, or None if there is none yet."""
        with self._lock:
            if 0 < n <= len(self._read):
                return self._read[n - 1]
        return self._kv.get(self.key(n))

    def entries(self) -> list[Any]:
        """Every entry, oldest first (reading only those not read before)."""
        with self._lock:
            while True:
                start = len(self._read) + 1
                keys = [self.key(n) for n in range(start, start + _CHUNK)]
                got = self._kv.get_many(keys)
                for key in keys:
                    if key not in got:
                        self._length = max(self._length, len(self._read))
                        return list(self._read)
                    self._read.append(got[key])

    def newest(self, count: int = 1) -> list[Any]:
        """The newest ``count`` entries, newest first."""
        end = self.length()
        numbers = range(end, max(0, end - count), -1)
        got = self._kv.get_many([self.key(n) for n in numbers])
        return [got[self.key(n)] for n in numbers if self.key(n) in got]
