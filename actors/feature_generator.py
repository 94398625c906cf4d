"""FeatureGenerator: turns facts past its cursor into online feature rows.

Owns: its fact cursor (in the feature store), the active feature collection, and
how many times in a row each feature has crashed and its latest rows' NaN counts (in
memory: the verdict is in the store, a restart only costs a few more crashes or rows
before it).
Receives: ``FactsRecorded`` hints (and a timer, in case a hint was lost);
``FeatureRowsNoted`` (a predictor took a push).
Sends: ``CollectionSwitched`` to the learner and the predictors; ``FeatureRows``
to the predictors: the rows it wrote, pushed one at a time to each and at least
every ``[predict] row_freshness_s`` / 4 (``actors.row_feed``), so predictors answer
from memory. The rows are in the feature store first, where the learner reads
them and predictors reload them. When a feature's values break its type's rules,
or its computation crashes ``[features] max_crashes`` times in a row, the feature
is marked invalid and the active collection falls back (the seed's
``validCollection``); every switch is logged and recorded.
"""

from __future__ import annotations

import time
from typing import Any

from actors import metrics
from actors.base import Worker
from actors.row_feed import RowFeed
from learning.features.batch import compute_batch
from learning.features.collections import (
    CrashStreaks,
    FeatureCollection,
    NanRates,
    valid_collection,
)
from learning.features.compute import (
    register_collections,
)
from messages.protocol import (
    CollectionSwitched,
    FactsNoted,
    FactsRecorded,
    FeatureRowsNoted,
    Init,
)
from storage.backend import ACTOR_CONNECT_WAIT_S, StoreBackend
from storage.facts import FactCursor, FactStore
from storage.features import FeatureStore

__all__ = ["CURSOR", "FeatureGenerator"]

CURSOR = "feature-generator/readings"
_POLL_S = 1.0
_BATCH = 5000


def _heartbeat_s(freshness_s: float) -> float:
    """How often a predictor hears from us, at the least: several times per freshness bound
    (a push may wait for the previous one's acknowledgement)."""
    return min(0.25, freshness_s / 4)


def _now_ms() -> int:
    return int(time.time() * 1000)


class FeatureGenerator(Worker):
    """Facts in, online features out, with fallback to earlier collections."""

    role = "feature_generator"

    def __init__(self) -> None:
        super().__init__()
        self.backend: StoreBackend | None = None
        self.facts: FactStore | None = None
        self.features: FeatureStore | None = None
        self.active: FeatureCollection | None = None
        self.crashes = CrashStreaks(limit=3)
        self.nan_rates = NanRates(min_rows=100)
        self.cursor = FactCursor()
        self._more_scheduled = False
        self.feed: RowFeed | None = None  # this incarnation's pushes to the predictors

    def on_start(self, init: Init) -> None:
        # Kept across the retries of a start that waits for the store (``actors.base``).
        self.backend = self.backend or StoreBackend(init.settings,
                                                    connect_wait_s=ACTOR_CONNECT_WAIT_S)
        self.facts = self.backend.facts()
        self.features = self.backend.features()
        self.crashes = CrashStreaks(limit=init.settings.features.max_crashes)
        self.nan_rates = NanRates(min_rows=init.settings.features.nan_rate_rows)
        _, problems = register_collections(init.settings.features, self.features, _now_ms())
        for what, error in problems.items():
            self.log.error("feature_collection_refused", what=what, error=error)
        # Rebuild from the stores: where we were, and which collection is valid.
        self.cursor = self.features.cursor(CURSOR)
        self._choose_collection("started")
        self.wakeupAfter(_POLL_S, payload="poll")
        self.feed = self.feed or RowFeed(heartbeat_s=_heartbeat_s(init.settings.predict
                                                                   .row_freshness_s))
        self._push()
        self.wakeupAfter(self.feed.heartbeat_s, payload="push")

    def on_stop(self) -> None:
        if self.backend is not None:
            self.backend.close()

    def _choose_collection(self, reason: str) -> None:
        assert self.features is not None
        chosen = valid_collection(self.features.collections(), self.features.invalid_features())
        previous = self.features.active_collection_id()
        if previous != chosen.id:
            self.features.record_switch(chosen.id, reason, _now_ms())
            self.log.warning("feature_collection_switched", previous_collection_id=previous,
                             collection_id=chosen.id, reason=reason)
            notice = CollectionSwitched(previous, chosen.id, reason)
            for role in ("learner", "predictor"):
                for address in self.peers.of(role):
                    self.send(address, notice)
        self.active = chosen

    def on_FactsRecorded(self, msg: FactsRecorded, sender: Any) -> None:  # noqa: N802
        self.send(sender, FactsNoted(msg.sequence))  # the collector may hint again
        self._catch_up()

    def on_FeatureRowsNoted(self, msg: FeatureRowsNoted, sender: Any) -> None:  # noqa: N802
        if self.feed is not None:
            self.feed.noted(sender, msg.version)
            self._push()  # what came while it was busy

    def on_peers(self) -> None:
        self._push()  # a new predictor reloads and joins at once

    def _push(self) -> None:
        """Send the pushes due now (``actors.row_feed``)."""
        if self.feed is None:
            return
        for address, push in self.feed.pushes(self.peers.of("predictor"), time.monotonic(),
                                              time.time()):
            self.send(address, push)

    def on_timer(self, payload: Any) -> None:
        if payload == "push":
            try:
                self._push()
            finally:
                assert self.feed is not None
                self.wakeupAfter(self.feed.heartbeat_s, payload="push")
        elif payload == "poll":
            try:
                self._catch_up()
            finally:
                self.wakeupAfter(_POLL_S, payload="poll")
        elif payload == "more":
            self._more_scheduled = False
            self._catch_up()

    def _catch_up(self) -> None:
        """Process the next batch of facts past the cursor; idempotent (insert-only rows).

        Only collections still usable are computed: an invalid feature is never computed
        again, and a feature that crashes costs only the rows of the collections naming it.
        """
        assert self.facts is not None and self.features is not None
        assert self.settings is not None
        window = self.settings.learning.feature_window_ms
        # One batch per message: under steady ingest a loop until caught up would keep this
        # actor from its mailbox for seconds (heartbeats unanswered, and senders' Thespian
        # transmits piling up behind it). The rest follows on a zero-delay timer.
        page = self.facts.readings_since(self.cursor, _BATCH)
        if not page.items:
            return
        if len(page.items) >= _BATCH and not self._more_scheduled:
            self._more_scheduled = True
            self.wakeupAfter(0.0, payload="more")
        result = compute_batch(page.items,
                               self.facts.readings_for_location, self.features.collections(),
                               self.features.invalid_features(), window, _now_ms(), self.crashes,
                               self.nan_rates)
        for crash in result.crashes:
            self.log.warning("feature_crashed", feature=crash.feature,
                             location_id=crash.location_id, error=crash.error,
                             in_a_row=crash.in_a_row)
        self._record_invalid(result.invalid)
        rows = list(result.rows)
        began = time.perf_counter()
        self.features.write_rows(rows)
        metrics.COMMIT_SECONDS.labels("features", "write_rows").observe(time.perf_counter() - began)
        if self.feed is not None:
            self.feed.written(rows)
            self._push()
        self.cursor = page.cursor
        self.features.advance_cursor(CURSOR, self.cursor, _now_ms())
        self.log.debug("features_written", readings=len(page.items), locations=result.locations)

    def _record_invalid(self, found: dict[str, str]) -> None:
        """Record the features judged invalid, and switch the collection if that changes it."""
        assert self.features is not None
        for name, reason in sorted(found.items()):
            self.features.mark_invalid(name, reason, _now_ms())
            self.log.warning("feature_invalid", feature=name, reason=reason)
        if found:
            self._choose_collection("invalid features: " + "; ".join(
                f"{name} ({reason})" for name, reason in sorted(found.items())))
