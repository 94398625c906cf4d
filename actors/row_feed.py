"""The feature generator's side of pushing rows to predictors: who has had what.

Each receiver (a predictor, standbys included) gets pushes one at a time (as with hints,
``actors.hints``: a transmit in flight to a busy receiver holds back the sender's others),
each carrying every row written since the last push it acknowledged, the newest per
(collection, location), and the time it was sent: a promise that every row written before
then is in it or in an earlier one. A receiver new to this incarnation, or one that fell so
far behind that its rows were dropped, is told to reload from the store (the truth) first.
A push unacknowledged for ``resend_after_s`` is taken as lost and sent again, with what came
since; duplicates are harmless (a row is taken only if newer). With nothing new, an empty
push goes every ``heartbeat_s``, so a receiver knows its table is still complete.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from learning.features.collections import FeatureRow
from messages.protocol import FeatureRows

__all__ = ["RowFeed"]

#: A push unacknowledged this long is taken as lost (its receiver may have been replaced).
RESEND_AFTER_S = 5.0
#: Past this many rows held for a receiver that does not acknowledge, it reloads instead.
MAX_BACKLOG_ROWS = 200_000


@dataclass(slots=True)
class _Receiver:
    address: Any
    acked: int  # every batch up to this version has reached it
    reload: bool  # its next push asks it to reload from the store first
    inflight: int | None = None  # the version of the push it has not acknowledged
    inflight_reload: bool = False
    sent: float = float("-inf")  # when its last push went (monotonic)


def wire_row(row: FeatureRow) -> tuple[int, int, int, tuple[float, ...], int]:
    """A row as a push carries it (plain values: messages sit below ``learning``)."""
    return (row.collection_id, row.location_id, row.as_of_ms, row.values, row.computed_at_ms)


class RowFeed:
    """The batches of rows written, and each receiver's place in them."""

    def __init__(self, heartbeat_s: float, resend_after_s: float = RESEND_AFTER_S,
                 max_backlog_rows: int = MAX_BACKLOG_ROWS) -> None:
        self.feed = uuid.uuid4().hex  # this incarnation
        self.heartbeat_s = heartbeat_s
        self._resend_after_s = resend_after_s
        self._max_backlog = max_backlog_rows
        self._version = 0
        self._batches: deque[tuple[int, Sequence[FeatureRow]]] = deque()
        self._held = 0  # rows in _batches
        self._receivers: list[_Receiver] = []  # addresses are not hashable: a short list

    @property
    def version(self) -> int:
        return self._version

    def written(self, rows: Sequence[FeatureRow]) -> None:
        """Rows the generator has just written to the store."""
        if not rows:
            return
        self._version += 1
        self._batches.append((self._version, rows))
        self._held += len(rows)
        if self._held > self._max_backlog:
            # The receivers furthest behind reload instead; their batches can go.
            while self._held > self._max_backlog and len(self._batches) > 1:
                version, batch = self._batches.popleft()
                self._held -= len(batch)
                for receiver in self._receivers:
                    if receiver.acked < version:
                        receiver.acked, receiver.reload = self._version, True
        self._trim()

    def _trim(self) -> None:
        """Drop the batches every receiver has."""
        floor = min((r.acked for r in self._receivers), default=self._version)
        while self._batches and self._batches[0][0] <= floor:
            self._held -= len(self._batches.popleft()[1])

    def _find(self, address: Any) -> _Receiver | None:
        return next((r for r in self._receivers if r.address == address), None)

    def pushes(self, receivers: Iterable[Any], now: float,
               wall: float) -> list[tuple[Any, FeatureRows]]:
        """The pushes due now (``now``: monotonic; ``wall``: the clock receivers compare)."""
        live = list(receivers)
        self._receivers = [r for r in self._receivers if r.address in live]
        out = []
        for address in live:
            receiver = self._find(address)
            if receiver is None:  # new to us: whatever it holds, it reloads first
                receiver = _Receiver(address, acked=self._version, reload=True)
                self._receivers.append(receiver)
            if receiver.inflight is not None and now - receiver.sent < self._resend_after_s:
                continue  # one at a time
            due = (receiver.reload or receiver.inflight is not None
                   or receiver.acked < self._version
                   or now - receiver.sent >= self.heartbeat_s)
            if not due:
                continue
            newest: dict[tuple[int, int], FeatureRow] = {}
            for version, batch in self._batches:
                if version <= receiver.acked:
                    continue
                for row in batch:
                    key = (row.collection_id, row.location_id)
                    known = newest.get(key)
                    if known is None or known.as_of_ms < row.as_of_ms:
                        newest[key] = row
            receiver.inflight, receiver.inflight_reload = self._version, receiver.reload
            receiver.sent = now
            out.append((address, FeatureRows(self.feed, self._version,
                                             tuple(wire_row(r) for r in newest.values()),
                                             wall, receiver.reload)))
        self._trim()
        return out

    def noted(self, address: Any, version: int) -> None:
        """``address`` took the push of ``version`` (and reloaded, if it was asked to)."""
        receiver = self._find(address)
        if receiver is None or receiver.inflight is None:
            return
        receiver.acked = max(receiver.acked, version)  # an older push (resent since) arrived
        if version == receiver.inflight:
            if receiver.inflight_reload:
                receiver.reload = False
            receiver.inflight = None
        self._trim()

    def waiting(self) -> int:
        """How many receivers have a push unacknowledged."""
        return sum(1 for r in self._receivers if r.inflight is not None)
