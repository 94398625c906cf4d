"""``FeatureStore`` on Couchbase's Data service: insert-only documents and numbered logs.

Key layout, in one collection (``features``); every ``...:N`` is a numbered log in the
``AppendLog`` layout (entries 1, 2, 3, ... taken with ``insert``, no holes, no counter):

- ``col:<id>`` -> the collection's definition; ``cols:N`` -> ``{"id"}``: the ids
  registered, so ``collections()`` can list them (read with duplicates removed). The
  definition is written first; a crash before its entry is mended by the next
  ``register_collection`` of it, which every feature generator makes as it starts.
- ``inv:N`` -> ``{"feature", "reason", "at"}``: features marked invalid.
- ``sw:N`` -> ``{"collection", "reason", "at"}``: switches; the active one is the newest.
- ``row:<c>:<location>:<as_of>`` -> one feature row (values as base64 of little-endian
  float64, so NaN and infinities round-trip bit-exactly, which JSON numbers cannot).
- ``rows:<c>:<location>:N`` -> ``{"a": [as_of, ...], "t": top}``: the row log of one
  location, one entry per ``write_rows`` that brought it rows; ``t`` is the greatest
  ``as_of`` of entries 1..N (a writer appends N only after reading N-1, so it knows it).
- ``locs:<c>:N`` -> ``{"l": [location, ...]}``: each location of collection ``c`` the
  first time it got a row (read with duplicates removed), for ``latest_rows``.
- ``cur:<name>:N`` -> ``{"cursor", "at"}``: consumer ``name``'s fact cursor; the newest
  entry holds every one recorded, merged.

No document is ever updated, and no key is touched by every write: a row write touches
its location's log and, the first time, its collection's location log.

Where this departs from the obvious, and why:

- Rows are logged before they are stored (location log, row log, then the rows in one
  ``insert_multi``), so a crash can never leave a stored row that readers cannot find.
  It can leave a logged ``as_of`` with no row (or a writer may be between the two):
  readers then take the newest stored row below it, until the row is written again.
  A batch sent again is not logged again when its rows are in the newest entry; an
  ``as_of`` logged twice all the same is read once.
- ``t`` makes a location's latest row the newest entry's ``t``, so a reader needs the
  log's end, not its whole history, even when rows arrive out of ``as_of`` order.
  Ends are found by probing every log concerned at once: one call when the logs grew
  by fewer than ``_NEAR`` entries since last read, a few (doubling, then narrowing
  32-fold a call) when they grew by any amount. A repeated ``latest_row`` costs one
  call, ``latest_rows`` three whatever the number of locations, and a ``write_rows``
  of any size two once its locations are known. ``row_as_of`` reads a location's whole
  row log the first time (64 entries a call; ``AppendLog`` keeps it), then one call more.
- A cursor is appended at the number right after the entry it merged with: if another
  process took that number first, the merge is redone on its entry, so no advance is
  lost to a concurrent one.
"""

from __future__ import annotations

import base64
import operator
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from storage.couchbase.keys import doc_key
from storage.couchbase.kv import KeyValue
from storage.couchbase.log import AppendLog
from storage.errors import StoreError
from storage.facts import FactCursor
from storage.features import CollectionSwitch, InvalidFeature
from storage.records import FeatureCollection, FeatureRow
from storage.sqlite.features import decode_values, encode_values

__all__ = ["CouchbaseFeatureStore"]

_NEAR = 4  # entries past a log's known end probed first: logs rarely grow more between reads
_GALLOP = 40  # then end + 2**k for k < _GALLOP, to bracket the end of a log that grew more
_SPREAD = 32  # numbers probed at once inside a bracket: each call narrows it 32-fold
_CANDIDATES = 16  # row documents asked for at once when the newest logged one is missing


@dataclass(eq=False, slots=True)
class _Tail:
    """The newest entry known of one numbered log (compared by identity)."""

    prefix: str
    parts: tuple[object, ...]
    end: int = 0  # an entry known to exist (0: none known)
    last: Any = None  # entry ``end``

    def key(self, n: int) -> str:
        return doc_key(self.prefix, *self.parts, n)


def _probes(tail: _Tail, free: int | None, first: bool) -> list[int]:
    """Entry numbers to ask for, ascending, given ``tail.end`` exists and ``free`` does not."""
    end = tail.end
    if free is None:
        return (list(range(end + 1, end + 1 + _NEAR)) if first
                else [end + 2 ** k for k in range(_GALLOP)])
    gap = free - end
    if gap <= _SPREAD + 1:
        return list(range(end + 1, free))
    return sorted({end + gap * i // (_SPREAD + 1) for i in range(1, _SPREAD + 1)})


def _int(value: object, what: str) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} must be an integer, not {value!r}") from None


def _row_key(collection_id: int, location_id: int, as_of_ms: int) -> str:
    return doc_key("row", collection_id, location_id, as_of_ms)


def _row(doc: dict[str, Any]) -> FeatureRow:
    return FeatureRow(int(doc["c"]), int(doc["l"]), int(doc["a"]),
                      decode_values(base64.b64decode(doc["v"])), int(doc["computed"]))


def _collection(doc: dict[str, Any]) -> FeatureCollection:
    return FeatureCollection(int(doc["id"]), int(doc["created_at"]),
                             tuple(str(f) for f in doc["features"]), str(doc["label"]))


class CouchbaseFeatureStore:
    """Feature collections, validity and switch logs, feature rows and consumers' cursors
    as insert-only documents (see the module); thread-safe. The connection belongs to
    whoever opened ``kv``: ``close`` only ends this store's use of it."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._closed = False
        self._lock = threading.RLock()  # guards the caches below and the calls filling them
        self._collection_log = AppendLog(kv, "cols")
        self._invalid_log = AppendLog(kv, "inv")
        self._switch_log = AppendLog(kv, "sw")
        self._collections: dict[int, FeatureCollection] = {}  # definitions never change
        self._location_logs: dict[int, AppendLog] = {}
        self._located: dict[int, set[int]] = {}  # per collection: locations known logged
        self._row_logs: dict[tuple[int, int], AppendLog] = {}
        self._row_tails: dict[tuple[int, int], _Tail] = {}
        self._newest: dict[tuple[int, int], FeatureRow] = {}  # the row of the last top read
        self._cursor_tails: dict[str, _Tail] = {}

    # -- collections -------------------------------------------------------

    def register_collection(self, collection: FeatureCollection) -> bool:
        """Add a collection; False if this identical one exists; ``ValueError`` if it differs."""
        self._check_open()
        doc = {"id": _int(collection.id, "collection id"),
               "created_at": _int(collection.created_at, "created_at"),
               "features": list(collection.features), "label": collection.label}
        with self._lock:
            inserted = self._kv.insert(doc_key("col", collection.id), doc)
            existing = collection if inserted else self._stored_collection(collection.id)
            # Also when it existed: a crash may have come between the definition and
            # the list, and every feature generator registers its collections at start.
            if collection.id not in self._listed_ids():
                self._collection_log.append({"id": collection.id})
        if existing != collection:
            raise ValueError(f"feature collection {collection.id} is already registered with "
                             f"a different definition: {existing!r}")
        return inserted

    def _stored_collection(self, collection_id: int) -> FeatureCollection:
        doc = self._kv.get(doc_key("col", collection_id))
        if doc is None:
            raise StoreError(f"{self._kv.where}: collection {collection_id} is not readable")
        self._collections[collection_id] = _collection(doc)
        return self._collections[collection_id]

    def _listed_ids(self) -> list[int]:
        return list(dict.fromkeys(int(e["id"]) for e in self._collection_log.entries()))

    def collections(self) -> tuple[FeatureCollection, ...]:
        """Every registered collection, by id."""
        self._check_open()
        with self._lock:
            ids = self._listed_ids()
            missing = [i for i in ids if i not in self._collections]
            got = self._kv.get_many([doc_key("col", i) for i in missing])
            for i in missing:
                if (doc := got.get(doc_key("col", i))) is not None:
                    self._collections[i] = _collection(doc)
            return tuple(self._collections[i] for i in sorted(ids) if i in self._collections)

    # -- feature validity --------------------------------------------------

    def mark_invalid(self, feature: str, reason: str, at_ms: int) -> None:
        """Record that ``feature`` is invalid (it stays invalid)."""
        self._check_open()
        self._kv.check_writable()
        self._invalid_log.append({"feature": feature, "reason": reason, "at": at_ms})

    def invalid_features(self) -> frozenset[str]:
        """Names of every feature ever marked invalid."""
        return frozenset(e.feature for e in self.invalid_feature_log())

    def invalid_feature_log(self) -> tuple[InvalidFeature, ...]:
        """Every invalid-feature record, oldest first."""
        self._check_open()
        return tuple(InvalidFeature(str(e["feature"]), str(e["reason"]), int(e["at"]))
                     for e in self._invalid_log.entries())

    # -- active collection -------------------------------------------------

    def record_switch(self, collection_id: int, reason: str, at_ms: int) -> None:
        """Record that ``collection_id`` is now the active collection."""
        self._check_open()
        self._kv.check_writable()
        self._switch_log.append({"collection": collection_id, "reason": reason, "at": at_ms})

    def active_collection_id(self) -> int | None:
        """The collection of the newest switch, or None before any switch."""
        switches = self.switches()
        return switches[-1].collection_id if switches else None

    def switches(self) -> tuple[CollectionSwitch, ...]:
        """Every switch, oldest first."""
        self._check_open()
        return tuple(CollectionSwitch(int(e["collection"]), str(e["reason"]), int(e["at"]))
                     for e in self._switch_log.entries())

    # -- feature rows ------------------------------------------------------

    def write_rows(self, rows: Sequence[FeatureRow]) -> int:
        """Insert rows keyed by (collection, location, as_of); skip known keys; count written."""
        self._check_open()
        self._kv.check_writable()
        docs: dict[str, dict[str, Any]] = {}
        logged: dict[tuple[int, int], list[int]] = {}
        for r in rows:  # all checked before anything is written
            c = _int(r.collection_id, "collection_id")
            location = _int(r.location_id, "location_id")
            as_of = _int(r.as_of_ms, "as_of_ms")
            key = _row_key(c, location, as_of)
            if key in docs:
                continue  # the first of a batch wins, as a known key does
            docs[key] = {"c": c, "l": location, "a": as_of,
                         "v": base64.b64encode(encode_values(r.values)).decode("ascii"),
                         "computed": _int(r.computed_at_ms, "computed_at_ms")}
            logged.setdefault((c, location), []).append(as_of)
        if not docs:
            return 0
        with self._lock:
            by_collection: dict[int, list[int]] = {}
            for c, location in logged:
                by_collection.setdefault(c, []).append(location)
            for c, locations in by_collection.items():
                self._log_locations(c, locations)
            self._log_rows(logged)
            existed = self._kv.insert_many(docs)
        return len(docs) - len(existed)

    def _location_log(self, collection_id: int) -> AppendLog:
        log = AppendLog(self._kv, "locs", collection_id)
        return self._location_logs.setdefault(collection_id, log)

    def _locations(self, collection_id: int) -> list[int]:
        """The collection's locations, in the order they first got a row."""
        entries = self._location_log(collection_id).entries()
        found = list(dict.fromkeys(int(loc) for e in entries for loc in e["l"]))
        self._located.setdefault(collection_id, set()).update(found)
        return found

    def _log_locations(self, collection_id: int, locations: Iterable[int]) -> None:
        """Append the locations not yet in the collection's location log (no call at all
        when every one is known to be there)."""
        wanted = set(locations)
        if wanted <= self._located.get(collection_id, set()):
            return
        new = sorted(wanted - set(self._locations(collection_id)))
        if new:
            self._location_log(collection_id).append({"l": new})
            self._located[collection_id].update(new)

    def _row_tail(self, collection_id: int, location_id: int) -> _Tail:
        key = (collection_id, location_id)
        return self._row_tails.setdefault(key, _Tail("rows", key))

    def _log_rows(self, logged: dict[tuple[int, int], list[int]]) -> None:
        """Append one entry per location to its row log, all in one call; a log whose
        next number another writer took is read on, and its entry tried again."""
        pending = {self._row_tail(c, loc): sorted(as_ofs) for (c, loc), as_ofs in logged.items()}
        while pending:
            for tail in [t for t in pending if t.end]:
                # A batch sent again (after a timeout, or by a restarted generator) finds
                # its rows in the newest entry: logging them twice would only cost space.
                pending[tail] = [a for a in pending[tail] if a not in tail.last["a"]]
                if not pending[tail]:
                    del pending[tail]
            entries = {tail: {"a": as_ofs, "t": max(as_ofs[-1], tail.last["t"]) if tail.end
                              else as_ofs[-1]}
                       for tail, as_ofs in pending.items()}
            keys = {tail: tail.key(tail.end + 1) for tail in entries}
            existed = self._kv.insert_many({keys[tail]: e for tail, e in entries.items()})
            for tail, entry in entries.items():
                if keys[tail] not in existed:
                    tail.end, tail.last = tail.end + 1, entry
                    del pending[tail]
            self._catch_up(list(pending))

    def _catch_up(self, tails: Sequence[_Tail]) -> None:
        """Move every tail to its log's end, all logs probed together in each call (no
        holes: entry n exists exactly when n <= the end)."""
        bounds: dict[_Tail, int | None] = {tail: None for tail in tails}  # first free known
        first = True
        while bounds:
            probes = {tail: _probes(tail, free, first) for tail, free in bounds.items()}
            got = self._kv.get_many([tail.key(n) for tail, ns in probes.items() for n in ns])
            first = False
            for tail, numbers in probes.items():
                for n in numbers:
                    doc = got.get(tail.key(n))
                    if doc is None:
                        free = bounds[tail]
                        bounds[tail] = n if free is None else min(free, n)
                        break
                    tail.end, tail.last = n, doc
                if bounds[tail] == tail.end + 1:
                    del bounds[tail]

    def _latest(self, collection_id: int, locations: Sequence[int]) -> dict[int, FeatureRow]:
        """The newest stored row of each location that has one."""
        tails = {loc: self._row_tail(collection_id, loc) for loc in locations}
        self._catch_up(list(tails.values()))
        tops = {loc: int(tail.last["t"]) for loc, tail in tails.items() if tail.end}
        found: dict[int, FeatureRow] = {}
        for loc, top in tops.items():
            known = self._newest.get((collection_id, loc))
            if known is not None and known.as_of_ms == top:
                found[loc] = known
        missing = [loc for loc in tops if loc not in found]
        got = self._kv.get_many([_row_key(collection_id, loc, tops[loc]) for loc in missing])
        for loc in missing:
            doc = got.get(_row_key(collection_id, loc, tops[loc]))
            if doc is not None:
                found[loc] = self._newest[(collection_id, loc)] = _row(doc)
            elif (row := self._stored_at_or_before(collection_id, loc, tops[loc])) is not None:
                found[loc] = row  # the top is logged but not stored (yet, or ever)
        return found

    def _stored_at_or_before(self, collection_id: int, location_id: int,
                             at_ms: int) -> FeatureRow | None:
        """The stored row with the greatest ``as_of`` <= ``at_ms``, from the whole row log
        (read once: entries never change) and the row documents, newest first."""
        log = self._row_logs.setdefault((collection_id, location_id),
                                        AppendLog(self._kv, "rows", collection_id, location_id))
        logged = {int(a) for e in log.entries() for a in e["a"]}
        candidates = sorted((a for a in logged if a <= at_ms), reverse=True)
        for i in range(0, len(candidates), _CANDIDATES):
            chunk = [_row_key(collection_id, location_id, a)
                     for a in candidates[i:i + _CANDIDATES]]
            got = self._kv.get_many(chunk)
            for row_key in chunk:
                if row_key in got:
                    return _row(got[row_key])
        return None

    def latest_row(self, collection_id: int, location_id: int) -> FeatureRow | None:
        """The location's row with the newest ``as_of_ms``, or None."""
        self._check_open()
        with self._lock:
            return self._latest(collection_id, [location_id]).get(location_id)

    def latest_rows(self, collection_id: int) -> tuple[FeatureRow, ...]:
        """The newest row of every location in the collection, by location."""
        self._check_open()
        with self._lock:
            found = self._latest(collection_id, self._locations(collection_id))
        return tuple(found[loc] for loc in sorted(found))

    def row_as_of(self, collection_id: int, location_id: int, at_ms: int) -> FeatureRow | None:
        """The newest row with ``as_of_ms <= at_ms`` (point-in-time lookup), or None."""
        self._check_open()
        with self._lock:
            return self._stored_at_or_before(collection_id, location_id, at_ms)

    # -- consumers' fact cursors -------------------------------------------

    def _cursor_tail(self, name: str) -> _Tail:
        tail = self._cursor_tails.setdefault(name, _Tail("cur", (name,)))
        self._catch_up([tail])
        return tail

    def cursor(self, name: str) -> FactCursor:
        """Consumer ``name``'s fact cursor: every one it recorded, merged; empty if none."""
        self._check_open()
        with self._lock:
            tail = self._cursor_tail(name)
            return FactCursor.from_text(tail.last["cursor"]) if tail.end else FactCursor()

    def advance_cursor(self, name: str, cursor: FactCursor, at_ms: int) -> None:
        """Merge ``cursor`` into ``name``'s; one the current one covers changes nothing."""
        self._check_open()
        self._kv.check_writable()
        with self._lock:
            tail = self._cursor_tail(name)
            while True:
                current = (FactCursor.from_text(tail.last["cursor"]) if tail.end
                           else FactCursor())
                if current.covers(cursor):
                    return
                entry = {"cursor": current.merge(cursor).to_text(), "at": at_ms}
                if self._kv.insert(tail.key(tail.end + 1), entry):
                    tail.end, tail.last = tail.end + 1, entry
                    return
                self._catch_up([tail])  # another process advanced it first: merge with that

    # -- lifecycle ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self._kv.where}: the feature store is closed")

    def close(self) -> None:
        """Stop using the connection (its owner closes it); idempotent."""
        self._closed = True
