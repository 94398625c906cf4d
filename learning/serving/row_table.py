"""A predictor's in-memory table of each location's latest feature row, kept fresh by push.

Why: reading the row from the feature store costs a read transaction per prediction, the
largest cost of answering ``{"location_id"}`` (``bench/predict.py``). The feature generator
pushes every row it writes to the predictors (``FeatureRows``, flow-controlled by
``actors.row_feed``), and each push says when it was sent: every row written before then is
in it or in an earlier one. So the table is *confirmed* as of the newest push's ``sent_at``
(or as of a load from the store, the truth: at start, on a new collection, and when the
generator asks for one).

Freshness, the bound: the table answers only while it was confirmed at most ``freshness_s``
ago (the generator sends a push, empty if need be, several times per ``freshness_s``). Past
that (the generator stopped, is busy, or the pushes are late) every lookup reads the store
again, as before the table: an answer is never built from a row older than the freshest row
the generator wrote ``freshness_s`` earlier. Clocks: ``sent_at`` is the generator's wall
clock; on more than one host, their clocks must agree (NTP) to well within the bound.

Threads: the actor's thread writes (``load``, ``apply``, ``keep``); any thread reads through
a ``reader`` of its own, which takes no lock: it gets and sets single dict entries and
attributes (atomic in CPython), and a whole collection is swapped in by one assignment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from learning.features.collections import FeatureRow
from storage.errors import StoreError

__all__ = ["RowLookup", "RowTable", "TableReader"]

RowLookup = Callable[[int, int], FeatureRow | None]


class RowTable:
    """The newest row per (collection, location) for the collections a predictor serves."""

    def __init__(self, freshness_s: float, clock: Callable[[], float] = time.time) -> None:
        self.freshness_s = freshness_s
        self._clock = clock
        self._by_collection: dict[int, dict[int, FeatureRow]] = {}
        self.confirmed_at = float("-inf")  # generator's clock: rows written before are here
        self._readers: list[TableReader] = []

    # --- the actor's thread -----------------------------------------------------------

    @property
    def collections(self) -> frozenset[int]:
        """The collections held (loaded from the store at least once)."""
        return frozenset(self._by_collection)

    def load(self, collection_id: int, rows: Iterable[FeatureRow]) -> None:
        """Take ``rows`` (a collection's latest rows, read from the store) as the collection's
        whole content; a row already held that is newer stays (a push may have passed the
        read)."""
        held = self._by_collection.get(collection_id, {})
        fresh: dict[int, FeatureRow] = {}
        for row in rows:
            if row.collection_id == collection_id:
                fresh[row.location_id] = row
        for location, row in held.items():
            known = fresh.get(location)
            if known is None or known.as_of_ms < row.as_of_ms:
                fresh[location] = row
        self._by_collection[collection_id] = fresh  # one assignment: the swap

    def keep(self, collection_ids: Iterable[int]) -> None:
        """Forget every collection but these (the ones the served models take)."""
        wanted = frozenset(collection_ids)
        self._by_collection = {c: rows for c, rows in self._by_collection.items()
                               if c in wanted}

    def apply(self, rows: Iterable[FeatureRow]) -> int:
        """Take pushed rows (newer ones only, of the collections held); counts taken."""
        taken = 0
        tables = self._by_collection
        for row in rows:
            table = tables.get(row.collection_id)
            if table is None:
                continue
            known = table.get(row.location_id)
            if known is None or known.as_of_ms < row.as_of_ms:
                table[row.location_id] = row
                taken += 1
        return taken

    def confirm(self, as_of: float) -> None:
        """Every row written before ``as_of`` (the generator's clock) is held."""
        if as_of > self.confirmed_at:
            self.confirmed_at = as_of

    def fresh(self) -> bool:
        """Whether lookups may answer from memory now."""
        return self._clock() - self.confirmed_at <= self.freshness_s

    # --- any thread ---------------------------------------------------------------------

    def reader(self, read: RowLookup) -> TableReader:
        """A lookup for one thread (see ``TableReader``), over that thread's own ``read``."""
        reader = TableReader(self, read)
        self._readers.append(reader)
        return reader

    def counts(self) -> tuple[int, int]:
        """Rows looked up so far (every reader's): from memory, from the store."""
        readers = tuple(self._readers)
        return (sum(r.from_memory for r in readers), sum(r.from_store for r in readers))


class TableReader:
    """One thread's ``RowLookup``: from memory while the table is fresh, else ``read`` (the
    thread's own store). When ``read`` cannot reach the store, the row held is the answer,
    however old (a predictor goes on answering through an outage)."""

    __slots__ = ("_table", "_read", "_clock", "from_memory", "from_store")

    def __init__(self, table: RowTable, read: RowLookup) -> None:
        self._table = table
        self._read = read
        self._clock = table._clock
        # Counted by this reader's thread only: plain ints, no lock.
        self.from_memory = 0
        self.from_store = 0

    def __call__(self, collection_id: int, location_id: int) -> FeatureRow | None:
        table = self._table
        rows = table._by_collection.get(collection_id)
        row = rows.get(location_id) if rows is not None else None
        if row is not None and self._clock() - table.confirmed_at <= table.freshness_s:
            self.from_memory += 1
            return row
        self.from_store += 1
        try:
            return self._read(collection_id, location_id)
        except StoreError:
            if row is None:
                raise
            return row
