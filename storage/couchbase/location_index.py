"""The readings of each location and hour, for reading a location's window by key.

With no range scans, "a location's readings between two times" needs keys a reader
can name: ``rx:<location_id>:<hour>:S:K``, the readings that writer slot ``S``'s log
entries stored for that location and hour, ``K`` = 0, 1, 2, ... (taken with
``insert``, the first free one, so there are no holes). A reader probes each slot and
hour of the window, all together, eight keys a call. A repair of an entry may index
a reading twice: reading keeps one per identity. Each document is written once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from storage.couchbase.keys import doc_key
from storage.couchbase.kv import KeyValue

__all__ = ["HOUR_MS", "MAX_HOURS", "LocationIndex"]

HOUR_MS = 3_600_000
MAX_HOURS = 24 * 400  # the widest window read at once, in hours
_PROBE = 8  # index keys asked for per (slot, location, hour) and call

#: (writer slot, location, hour)
Group = tuple[int, int, int]


class LocationIndex:
    """The index of one fact store (items are stored readings as lists, as in ``facts``:
    location at 1, timestamp at 3, identity at 0 and 2)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._next: dict[Group, int] = {}  # the next free K, per group this store wrote
        self._lock = threading.Lock()

    def add(self, slot: int, entry: int, stored: list[list[Any]]) -> None:
        """Index the readings log entry ``entry`` of writer ``slot`` stored."""
        groups: dict[Group, list[list[Any]]] = {}
        for item in stored:
            groups.setdefault((slot, item[1], item[3] // HOUR_MS), []).append(item)
        with self._lock:
            unknown = [g for g in groups if g not in self._next]
            for group, written in self._walk(unknown):
                self._next[group] = len(written)
            while groups:
                docs = {doc_key("rx", g[1], g[2], g[0], self._next[g]): g for g in groups}
                existed = self._kv.insert_many({key: {"e": entry, "v": groups[group]}
                                                for key, group in docs.items()})
                for key, group in docs.items():
                    self._next[group] += 1  # taken now, by us or (existed) by a repair
                    if key not in existed:
                        del groups[group]

    def readings(self, location_id: int, start_ms: int, end_ms: int,
                 slots: int) -> list[list[Any]]:
        """The location's readings in ``[start_ms, end_ms)`` from writer slots ``0..slots``,
        by timestamp (then slot and log order); ``ValueError`` past ``MAX_HOURS``."""
        if end_ms <= start_ms:
            return []
        first, last = start_ms // HOUR_MS, (end_ms - 1) // HOUR_MS
        if last - first >= MAX_HOURS:
            raise ValueError(f"a location's readings are read at most {MAX_HOURS} hours "
                             "at a time")
        groups = [(slot, location_id, hour) for hour in range(first, last + 1)
                  for slot in range(slots)]
        found: dict[tuple[str, str], tuple[tuple[int, int, int, int], list[Any]]] = {}
        for (slot, _, _), docs in self._walk(groups):
            for doc in docs:
                for i, item in enumerate(doc["v"]):
                    if start_ms <= item[3] < end_ms:
                        found.setdefault((item[0], item[2]),
                                         ((item[3], slot, doc["e"], i), item))
        return [item for _, item in sorted(found.values(), key=lambda pair: pair[0])]

    def _walk(self, groups: Sequence[Group]) -> Iterator[tuple[Group, list[dict[str, Any]]]]:
        """Each group's index documents, K = 0, 1, ... up to the first missing; all groups
        probed together, ``_PROBE`` keys each per call."""
        found: dict[Group, list[dict[str, Any]]] = {g: [] for g in groups}
        open_groups = list(groups)
        while open_groups:
            keys = {(g, k): doc_key("rx", g[1], g[2], g[0], k)
                    for g in open_groups
                    for k in range(len(found[g]), len(found[g]) + _PROBE)}
            got = self._kv.get_many(list(keys.values()))
            still = []
            for g in open_groups:
                start = len(found[g])
                for k in range(start, start + _PROBE):
                    doc = got.get(keys[(g, k)])
                    if doc is None:
                        break
                    found[g].append(doc)
                else:
                    still.append(g)
                    continue
                yield g, found[g]
            open_groups = still
