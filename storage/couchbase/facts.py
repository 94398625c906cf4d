"""``FactStore`` on Couchbase's Data service: one document per fact, one log per writer.

Key layout, in one collection (``facts``); ``W`` is a writer's id, ``S`` its slot:

- ``w:S`` -> ``{"writer": W}``: the writer directory, slots 0, 1, 2, ... taken with
  ``insert`` (the first free one), so readers list writers by probing keys.
  ``wi:W`` -> ``{"slot": S}`` lets a writer find its own slot again.
- ``r:<sensor_id>:<reading_id>`` and ``o:<location_id>:<outcome_id>``: the facts, one
  document each, keyed by identity and written with ``insert``: a key that exists is
  a duplicate, never overwritten. Each names the log entry that stored it (``"e"``).
- ``rl:W:N`` / ``ol:W:N``: entry N (1, 2, 3, ...) of W's log of readings / outcomes:
  the whole batch, written first, as the intent. ``rs:W:N`` / ``os:W:N``: its seal,
  written last: which of the batch's items that entry stored (the rest were known).
- ``rx:<location_id>:<hour>:S:K``: the readings of one location and hour that W's
  entries stored, K = 0, 1, 2, ... (the location index: ``location_index``).

A batch is written as: entry, facts (one pipelined ``insert_multi``), location index,
seal; the collector acknowledges only after the seal (at the configured durability).
A consumer reads only sealed entries, in each writer's order, and counts a fact only
in the entry that stored it, so it sees every fact once. An entry left unsealed by a
crash is finished by anyone (the writer before its next batch, any consumer once it
is ``repair_after_ms`` old) from the batch it holds: the inserts are idempotent and
the first seal stored wins, so a repair racing the original writer changes nothing.
No document is ever updated, and no key is touched by every writer.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from messages.facts import Outcome, Reading
from storage.couchbase.keys import doc_key
from storage.couchbase.kv import KeyValue
from storage.couchbase.location_index import HOUR_MS, LocationIndex
from storage.errors import StoreError
from storage.facts import FactCounts, FactCursor, FactPage, InsertResult

__all__ = ["HOUR_MS", "CouchbaseFactStore"]

_PROBE = 8  # consecutive keys asked for in one call when walking a sequence of keys


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _reading_doc(r: Reading) -> list[Any]:
    values = [r.sensor_id, r.location_id, r.reading_id, r.timestamp, r.animals_lower,
              r.animals_upper, r.percent_zebras]
    checks: tuple[Callable[[object], bool], ...] = (
        _is_str, _is_int, _is_str, _is_int, _is_number, _is_number, _is_number)
    for value, check in zip(values, checks, strict=True):
        if not check(value):
            raise StoreError(f"reading {r.key!r}: {value!r} cannot be stored")
    return values


def _reading(v: Sequence[Any]) -> Reading:
    return Reading(v[0], v[1], v[2], v[3], v[4], v[5], float(v[6]))


def _outcome_doc(o: Outcome) -> list[Any]:
    if not (_is_int(o.location_id) and _is_str(o.outcome_id)
            and _is_int(o.timestamp) and isinstance(o.label, bool)):
        raise StoreError(f"outcome {o.key!r} cannot be stored")
    return [o.location_id, o.outcome_id, o.timestamp, o.label]


def _outcome(v: Sequence[Any]) -> Outcome:
    return Outcome(v[0], v[1], v[2], bool(v[3]))


@dataclass(frozen=True, slots=True)
class _Kind:
    """What differs between the readings' and the outcomes' logs."""

    fact: str  # key prefixes: the facts, the log entries, the seals
    log: str
    seal: str
    identity: Callable[[list[Any]], tuple[Any, ...]]  # a stored item's identity
    encode: Callable[[Any], list[Any]]
    decode: Callable[[Sequence[Any]], Any]


_READINGS = _Kind("r", "rl", "rs", lambda v: (v[0], v[2]), _reading_doc, _reading)
_OUTCOMES = _Kind("o", "ol", "os", lambda v: (v[0], v[1]), _outcome_doc, _outcome)


def _now_ms() -> int:
    return int(time.time() * 1000)


class CouchbaseFactStore:
    """Readings and outcomes as insert-only documents with per-writer logs (see module)."""

    def __init__(self, kv: KeyValue, *, writer: str | None = None,
                 repair_after_ms: int = 30_000,
                 on_close: Callable[[], None] | None = None) -> None:
        self._kv = kv
        # Stable across restarts when given (a collector's name): its successor then
        # finishes what it left unsealed at once, instead of after repair_after_ms.
        self.writer = writer or (f"{socket.gethostname()}-{os.getpid()}-"
                                 f"{secrets.token_hex(4)}")
        self.repair_after_ms = repair_after_ms
        self._on_close = on_close
        self._closed = False
        self._lock = threading.Lock()  # one batch (or repair) at a time per store
        self._directory_lock = threading.Lock()
        self._slot: int | None = None
        self._directory: list[str] = []  # writer ids by slot; only ever grows
        self._next_entry: dict[str, int] = {}  # per log: the next entry number to try
        self._unsealed: dict[str, set[int]] = {}  # per log: entries of ours to finish
        self._index = LocationIndex(kv)
        self._counted: dict[tuple[str, str], tuple[int, int]] = {}  # -> (entries, facts)

    # -- writers ---------------------------------------------------------------------

    def _refresh_directory(self) -> list[str]:
        """The writer directory, read on from the slots already known."""
        with self._directory_lock:
            while True:
                start = len(self._directory)
                keys = [doc_key("w", slot) for slot in range(start, start + _PROBE)]
                got = self._kv.get_many(keys)
                for key in keys:
                    if key not in got:
                        return self._directory
                    self._directory.append(str(got[key]["writer"]))

    def _register(self) -> int:
        """This writer's slot, taking the first free one the first time."""
        if self._slot is not None:
            return self._slot
        known = self._kv.get(doc_key("wi", self.writer))
        if known is not None:
            self._slot = int(known["slot"])
            return self._slot
        while self.writer not in self._refresh_directory():
            # Another writer may take the slot first: read on and try the next one.
            if self._kv.insert(doc_key("w", len(self._directory)), {"writer": self.writer}):
                self._directory.append(self.writer)
        slot = self._directory.index(self.writer)
        self._kv.insert(doc_key("wi", self.writer), {"slot": slot})
        self._slot = slot
        return slot

    def _first_free_entry(self, kind: _Kind) -> int:
        """The first entry number of this writer's log with no entry (entries have no
        holes: each is taken with ``insert`` only after the one before it exists)."""
        def taken(n: int) -> bool:
            return self._kv.get(doc_key(kind.log, self.writer, n)) is not None

        high = 1
        while taken(high):
            high *= 2
        low = high // 2  # taken (or 0); high is free
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if taken(mid) else (low, mid)
        # A predecessor with this id may have left entries unsealed: finish them first.
        recent = range(max(1, high - _PROBE), high)
        seals = self._kv.get_many([doc_key(kind.seal, self.writer, n) for n in recent])
        self._unsealed.setdefault(kind.log, set()).update(
            n for n in recent if doc_key(kind.seal, self.writer, n) not in seals)
        return high

    # -- writing ---------------------------------------------------------------------

    def insert_readings(self, readings: Sequence[Reading]) -> InsertResult:
        """Store a batch (entry, facts, location index, seal); known keys are duplicates."""
        return self._insert(_READINGS, readings)

    def insert_outcomes(self, outcomes: Sequence[Outcome]) -> InsertResult:
        """Store a batch (entry, facts, seal); known keys are duplicates."""
        return self._insert(_OUTCOMES, outcomes)

    def _insert(self, kind: _Kind, facts: Sequence[Any]) -> InsertResult:
        self._kv.check_writable()
        if not facts:
            return InsertResult(0, 0)
        items: dict[tuple[Any, ...], list[Any]] = {}
        for fact in facts:  # all checked before anything is written
            items.setdefault(fact.key, kind.encode(fact))
        batch = list(items.values())
        with self._lock:
            self._check_open()
            slot = self._register()
            if kind.log not in self._next_entry:
                self._next_entry[kind.log] = self._first_free_entry(kind)
            for n in sorted(self._unsealed.get(kind.log, ())):
                self._repair(kind, slot, self.writer, n)
                self._unsealed[kind.log].discard(n)
            n = self._open_entry(kind, batch)
            try:
                owned = self._complete(kind, slot, self.writer, n, batch)
            except BaseException:
                self._unsealed.setdefault(kind.log, set()).add(n)
                raise
        return InsertResult(len(owned), len(facts) - len(owned))

    def _open_entry(self, kind: _Kind, batch: list[list[Any]]) -> int:
        """Write the batch as this writer's next log entry; its number."""
        n = self._next_entry[kind.log]
        doc = {"at": _now_ms(), "v": batch}
        while not self._kv.insert(doc_key(kind.log, self.writer, n), doc):
            # Taken: by an earlier try of ours whose answer was lost, or by another
            # process with this writer id. Either may be unsealed: finish it later.
            self._unsealed.setdefault(kind.log, set()).add(n)
            n += 1
        self._next_entry[kind.log] = n + 1
        return n

    def _complete(self, kind: _Kind, slot: int, writer: str, n: int,
                  batch: list[list[Any]], finishing: frozenset[str] = frozenset()) -> list[int]:
        """Insert entry ``n``'s facts, index them, seal it; the indices it stored (as the
        seal that won says). Idempotent: run again, by anyone, it changes nothing.

        A duplicate stored by an entry not sealed yet (its writer died mid-batch, and the
        gateway sent the batch again here) is acknowledged as known: so that entry is
        finished first, and no acknowledged fact waits for a repair to be seen."""
        tag = f"{writer}/{n}"
        keys = [doc_key(kind.fact, *kind.identity(item)) for item in batch]
        existed = self._kv.insert_many({key: {"e": tag, "v": item}
                                        for key, item in zip(keys, batch, strict=True)})
        ours = set(keys) - existed
        if existed:  # known before, or stored by an earlier try of this very entry
            found = self._kv.get_many(sorted(existed))
            ours |= {key for key, doc in found.items() if doc.get("e") == tag}
            owners = {str(doc.get("e")) for doc in found.values()} - {tag} - finishing
            self._finish_owners(kind, owners, finishing | {tag})
        owned = [i for i, key in enumerate(keys) if key in ours]
        if kind is _READINGS:
            self._index.add(slot, n, [batch[i] for i in owned])
        seal_key = doc_key(kind.seal, writer, n)
        if self._kv.insert(seal_key, {"owned": owned}):
            return owned
        sealed = self._kv.get(seal_key)
        return owned if sealed is None else [int(i) for i in sealed["owned"]]

    def _finish_owners(self, kind: _Kind, owners: set[str], finishing: frozenset[str]) -> None:
        """Finish the entries (``writer/n`` tags) among ``owners`` that have no seal yet
        (``finishing``: the entries being finished up the call chain, left to it)."""
        entries = [(tag.rpartition("/")[0], int(tag.rpartition("/")[2])) for tag in owners]
        seals = self._kv.get_many([doc_key(kind.seal, w, m) for w, m in entries])
        for w, m in entries:
            if doc_key(kind.seal, w, m) in seals:
                continue
            directory = self._refresh_directory()
            if w not in directory:
                continue  # a writer registers before its first entry: not reached
            entry = self._kv.get(doc_key(kind.log, w, m))
            if entry is not None:
                self._complete(kind, directory.index(w), w, m, entry["v"], finishing)

    def _repair(self, kind: _Kind, slot: int, writer: str, n: int) -> list[int] | None:
        """Finish entry ``n`` of ``writer``'s log from the batch it holds; the indices it
        stored, or None if there is no such entry (a write that never landed)."""
        entry = self._kv.get(doc_key(kind.log, writer, n))
        if entry is None:
            return None
        sealed = self._kv.get(doc_key(kind.seal, writer, n))
        if sealed is not None:
            return [int(i) for i in sealed["owned"]]
        return self._complete(kind, slot, writer, n, entry["v"])

    # -- reading the logs -----------------------------------------------------------

    def _entries(self, kind: _Kind, slot: int, writer: str,
                 start: int) -> Iterator[tuple[int, list[list[Any]]]]:
        """``(n, stored items)`` of ``writer``'s sealed entries from ``start`` on, up to
        the first one missing, or unsealed and not due for repair here."""
        n = start
        while True:
            numbers = range(n, n + _PROBE)
            got = self._kv.get_many([doc_key(p, writer, m) for m in numbers
                                     for p in (kind.log, kind.seal)])
            for m in numbers:
                entry = got.get(doc_key(kind.log, writer, m))
                if entry is None:
                    return
                sealed = got.get(doc_key(kind.seal, writer, m))
                if sealed is not None:
                    owned = [int(i) for i in sealed["owned"]]
                elif (not self._kv.read_only
                      and _now_ms() - int(entry.get("at", 0)) >= self.repair_after_ms):
                    with self._lock:
                        owned = self._complete(kind, slot, writer, m, entry["v"])
                else:
                    return  # being written (or its writer died recently): not yet
                yield m, [entry["v"][i] for i in owned]
            n += _PROBE

    def _since(self, kind: _Kind, cursor: FactCursor, limit: int) -> FactPage[Any]:
        self._check_open()
        if limit <= 0:
            return FactPage((), cursor)
        items: list[Any] = []
        for slot, writer in enumerate(list(self._refresh_directory())):
            if len(items) >= limit:
                break
            done, offset = cursor.position(writer)
            for n, stored in self._entries(kind, slot, writer, done + 1):
                take = stored[offset:offset + limit - len(items)]
                items.extend(kind.decode(v) for v in take)
                if offset + len(take) < len(stored):
                    offset += len(take)  # the page ends inside this entry
                    break
                done, offset = n, 0
                if len(items) >= limit:
                    break
            if (done, offset) != cursor.position(writer):
                cursor = cursor.at(writer, done, offset)
        return FactPage(tuple(items), cursor)

    def readings_since(self, cursor: FactCursor, limit: int) -> FactPage[Reading]:
        """Up to ``limit`` readings past ``cursor``, writer by writer, each in log order."""
        return self._since(_READINGS, cursor, limit)

    def outcomes_since(self, cursor: FactCursor, limit: int) -> FactPage[Outcome]:
        """Up to ``limit`` outcomes past ``cursor``, writer by writer, each in log order."""
        return self._since(_OUTCOMES, cursor, limit)

    def _all(self, kind: _Kind) -> tuple[Any, ...]:
        self._check_open()
        return tuple(kind.decode(v)
                     for slot, writer in enumerate(list(self._refresh_directory()))
                     for _, stored in self._entries(kind, slot, writer, 1) for v in stored)

    def all_readings(self) -> tuple[Reading, ...]:
        """Every reading, writer by writer, each in log order."""
        return self._all(_READINGS)

    def all_outcomes(self) -> tuple[Outcome, ...]:
        """Every outcome, writer by writer, each in log order."""
        return self._all(_OUTCOMES)

    def readings_for_location(self, location_id: int, start_ms: int,
                              end_ms: int) -> tuple[Reading, ...]:
        """A location's readings in ``[start_ms, end_ms)``, by timestamp (then log order),
        from the location index (at most ``MAX_HOURS`` hours wide: ``ValueError``)."""
        self._check_open()
        slots = len(self._refresh_directory())
        return tuple(_reading(item) for item in self._index.readings(location_id, start_ms,
                                                                      end_ms, slots))

    # -- by key, and counts -----------------------------------------------------------

    def get_reading(self, sensor_id: str, reading_id: str) -> Reading | None:
        """The reading stored under ``(sensor_id, reading_id)``, or None."""
        self._check_open()
        doc = self._kv.get(doc_key("r", sensor_id, reading_id))
        if doc is None or (doc["v"][0], doc["v"][2]) != (sensor_id, reading_id):
            return None
        return _reading(doc["v"])

    def get_outcome(self, location_id: int, outcome_id: str) -> Outcome | None:
        """The outcome stored under ``(location_id, outcome_id)``, or None."""
        self._check_open()
        doc = self._kv.get(doc_key("o", location_id, outcome_id))
        if doc is None or (doc["v"][0], doc["v"][1]) != (location_id, outcome_id):
            return None
        return _outcome(doc["v"])

    def _count(self, kind: _Kind) -> int:
        """Facts in sealed entries, read from the seals alone; sealed entries never
        change, so each store counts each one once."""
        total = 0
        for writer in list(self._refresh_directory()):
            counted, facts = self._counted.get((kind.log, writer), (0, 0))
            while True:
                numbers = range(counted + 1, counted + 1 + _PROBE)
                got = self._kv.get_many([doc_key(kind.seal, writer, m) for m in numbers])
                for m in numbers:
                    if doc_key(kind.seal, writer, m) not in got:
                        break
                    counted, facts = m, facts + len(got[doc_key(kind.seal, writer, m)]["owned"])
                else:
                    continue
                break
            self._counted[(kind.log, writer)] = (counted, facts)
            total += facts
        return total

    def counts(self) -> FactCounts:
        """How many facts the sealed entries stored."""
        self._check_open()
        return FactCounts(self._count(_READINGS), self._count(_OUTCOMES))

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self._kv.where}: the store is closed")

    def close(self) -> None:
        """Release the connection (if this store owns one); idempotent."""
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()
