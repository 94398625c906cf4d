"""FeatureGenerator: turns facts past its watermark into online feature rows.

Owns: its watermark (in the feature store), the active feature collection.
Receives: ``FactsRecorded`` hints (and a timer, in case a hint was lost).
Sends: nothing; what it writes is in the feature store, where predictors and
the learner read it. When a feature's values break its type's rules the
feature is marked invalid and the active collection falls back (the seed's
``validCollection``); every switch is logged and recorded.
"""

from __future__ import annotations

import time
from typing import Any

from actors.base import Worker
from learning.collections import FeatureCollection, FeatureRow, valid_collection
from learning.features import compute_row, default_collections, validate_values
from messages.protocol import FactsRecorded, Init
from storage.sqlite_facts import SQLiteFactStore
from storage.sqlite_features import SQLiteFeatureStore

__all__ = ["FeatureGenerator", "WATERMARK"]

WATERMARK = "feature-generator/readings"
_POLL_S = 1.0
_BATCH = 5000


def _now_ms() -> int:
    return int(time.time() * 1000)


class FeatureGenerator(Worker):
    """Facts in, online features out, with fallback to earlier collections."""

    role = "feature_generator"

    def __init__(self) -> None:
        super().__init__()
        self.facts: SQLiteFactStore | None = None
        self.features: SQLiteFeatureStore | None = None
        self.active: FeatureCollection | None = None
        self.watermark = 0

    def on_start(self, init: Init) -> None:
        data = init.settings.data_path
        timeout = init.settings.storage.busy_timeout_s
        self.facts = SQLiteFactStore(data / "facts.sqlite", busy_timeout_s=timeout)
        self.features = SQLiteFeatureStore(data / "features.sqlite", busy_timeout_s=timeout)
        for collection in default_collections(0):  # fixed: every process registers the same
            self.features.register_collection(collection)
        # Rebuild from the stores: where we were, and which collection is valid.
        self.watermark = self.features.watermark(WATERMARK)
        self._choose_collection("started")
        self.wakeupAfter(_POLL_S, payload="poll")

    def on_stop(self) -> None:
        for store in (self.facts, self.features):
            if store is not None:
                store.close()

    def _choose_collection(self, reason: str) -> None:
        assert self.features is not None
        chosen = valid_collection(self.features.collections(), self.features.invalid_features())
        if self.features.active_collection_id() != chosen.id:
            self.features.record_switch(chosen.id, reason, _now_ms())
            self.log.warning("feature_collection_switched", collection_id=chosen.id,
                             reason=reason)
        self.active = chosen

    def on_FactsRecorded(self, msg: FactsRecorded, sender: Any) -> None:  # noqa: N802
        self._catch_up()

    def on_timer(self, payload: Any) -> None:
        if payload == "poll":
            try:
                self._catch_up()
            finally:
                self.wakeupAfter(_POLL_S, payload="poll")

    def _catch_up(self) -> None:
        """Process facts past the watermark, batch by batch; idempotent (rows are insert-only)."""
        assert self.facts is not None and self.features is not None
        assert self.settings is not None
        window = self.settings.learning.feature_window_ms
        while True:
            batch = self.facts.readings_since(self.watermark, _BATCH)
            if not batch:
                return
            newest: dict[int, int] = {}
            for _, reading in batch:
                newest[reading.location_id] = max(newest.get(reading.location_id, 0),
                                                  reading.timestamp)
            computed_at = _now_ms()
            rows_by_collection: dict[int, list[FeatureRow]] = {}
            collections = self.features.collections()
            for location_id, latest in newest.items():
                as_of = latest + 1
                readings = self.facts.readings_for_location(location_id, as_of - window, as_of)
                for collection in collections:
                    rows_by_collection.setdefault(collection.id, []).append(
                        compute_row(collection, readings, location_id, as_of, window, computed_at))
            self._check_validity(collections, rows_by_collection)
            for rows in rows_by_collection.values():
                self.features.write_rows(rows)
            self.watermark = batch[-1][0]
            self.features.advance_watermark(WATERMARK, self.watermark, computed_at)
            self.log.debug("features_written", watermark=self.watermark,
                           locations=len(newest))

    def _check_validity(self, collections: tuple[FeatureCollection, ...],
                        rows: dict[int, list[FeatureRow]]) -> None:
        assert self.features is not None
        already = self.features.invalid_features()
        found: dict[str, str] = {}
        for collection in collections:
            for name, reason in validate_values(collection, rows.get(collection.id, [])).items():
                if name not in already:
                    found[name] = reason
        for name, reason in found.items():
            self.features.mark_invalid(name, reason, _now_ms())
            self.log.warning("feature_invalid", feature=name, reason=reason)
        if found:
            self._choose_collection("invalid features: " + ", ".join(sorted(found)))
