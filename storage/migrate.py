"""Copy an SQLite data directory into another backend (Couchbase): ``rml migrate``.

The path of a user who outgrew one machine. Everything goes through the stores'
own interfaces, so the destination gets what its own writers would have written:
facts as batches of one writer (``migrate``), whose resending the store answers
with duplicates; collections registered; rows inserted (known keys skipped);
models registered in version order with their artifacts and compiled forms, then
every status change replayed in time order (promotions through ``promote``, which
logs the champion history as the source's did); the system records appended.

Run twice, nothing doubles: facts, collections, rows, trials are idempotent by
key, and each log (invalid features, switches, status histories, dead letters,
training runs) is copied only past what the destination already holds. Not
copied: consumers' fact cursors (their positions name the source's log; the
destination's feature generator reads the copied facts again and finds their rows
stored), and of the drift log only the newest check (the one the learner reads).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.backend import StoreBackend
from storage.registry import CANDIDATE, CHAMPION
from storage.shadow import ShadowCounts

__all__ = ["BATCH", "MigrationCounts", "Progress", "migrate"]

BATCH = 1_000

#: ``progress(store, done, total)``, called as each store's copy moves on.
Progress = Callable[[str, int, int], None]


@dataclass
class MigrationCounts:
    """Per store: items read from the source, and how many of them the destination took
    as new (the rest it held already)."""

    read: dict[str, int] = field(default_factory=dict)
    new: dict[str, int] = field(default_factory=dict)

    def add(self, store: str, read: int, new: int) -> None:
        """Count ``read`` items of ``store``, ``new`` of them new to the destination."""
        self.read[store] = self.read.get(store, 0) + read
        self.new[store] = self.new.get(store, 0) + new


def _batches(items: Sequence[Any], size: int = BATCH) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _facts(source: StoreBackend, dest: StoreBackend, counts: MigrationCounts,
           progress: Progress) -> None:
    src, dst = source.facts(), dest.facts()
    for store, items, insert in (("readings", src.all_readings(), dst.insert_readings),
                                 ("outcomes", src.all_outcomes(), dst.insert_outcomes)):
        done = 0
        progress(store, 0, len(items))
        for batch in _batches(items):
            result = insert(batch)
            counts.add(store, len(batch), result.accepted)
            done += len(batch)
            progress(store, done, len(items))


def _features(source: StoreBackend, dest: StoreBackend, counts: MigrationCounts,
              progress: Progress) -> None:
    from storage.sqlite.features import SQLiteFeatureStore

    src, dst = source.features(), dest.features()
    collections = src.collections()
    for collection in collections:
        counts.add("feature collections", 1, int(dst.register_collection(collection)))
    log = src.invalid_feature_log()
    held = len(dst.invalid_feature_log())
    for entry in log[held:]:
        dst.mark_invalid(entry.feature, entry.reason, entry.at_ms)
    counts.add("invalid features", len(log), max(0, len(log) - held))
    switches = src.switches()
    held = len(dst.switches())
    for switch in switches[held:]:
        dst.record_switch(switch.collection_id, switch.reason, switch.at_ms)
    counts.add("collection switches", len(switches), max(0, len(switches) - held))
    assert isinstance(src, SQLiteFeatureStore)  # the source is an SQLite data directory
    for collection in collections:
        rows = src.all_rows(collection.id)
        store = f"feature rows ({collection.id})"
        done = 0
        progress(store, 0, len(rows))
        for batch in _batches(rows):
            counts.add("feature rows", len(batch), dst.write_rows(list(batch)))
            done += len(batch)
            progress(store, done, len(rows))


def _registry(source: StoreBackend, dest: StoreBackend, counts: MigrationCounts,
              progress: Progress) -> None:
    src, dst = source.registry(), dest.registry()
    records = src.versions()
    held = len(dst.versions())
    progress("models", 0, len(records))
    for i, record in enumerate(records):
        if record.version > held:
            version = dst.register(
                feature_collection_id=record.feature_collection_id,
                job=json.loads(record.job), metrics=dict(record.metrics),
                lineage=json.loads(record.lineage), artifact=src.artifact(record.version),
                created_at_ms=record.created_at_ms, status=CANDIDATE,
                evaluation=json.loads(record.evaluation),
                compiled=src.compiled_form(record.version))
            if version != record.version:
                raise ValueError(f"the destination numbered model {record.version} as "
                                 f"{version}: it held models the source does not")
        progress("models", i + 1, len(records))
    counts.add("models", len(records), max(0, len(records) - held))
    # Every status change the destination lacks, in time order across versions, so
    # promotions retire the champion of their moment as they did in the source.
    pending = []
    for record in records:
        history = src.status_history(record.version)
        pending += [(change.at_ms, seq, change)
                    for seq, change in enumerate(history)
                    if seq >= len(dst.status_history(record.version))]
    # At one instant a promotion comes first: it retires the champion it replaces itself
    # (as in the source), and the source's own "retired" entry is then a no-op.
    for _, _, change in sorted(pending, key=lambda p: (p[0], p[2].status != CHAMPION,
                                                       p[2].version, p[1])):
        if change.status == CHAMPION:
            dst.promote(change.version, change.reason, change.at_ms)
        else:
            dst.set_status(change.version, change.status, change.reason, change.at_ms)
    counts.add("status changes", len(pending), len(pending))
    trials_src, trials_dst = source.shadow_trials(), dest.shadow_trials()
    for trial in trials_src.trials():
        new = trials_dst.get(trial.version) is None
        trials_dst.start(trial.version, trial.target, trial.started_at_ms)
        trials_dst.record(trial.version, "migrated", ShadowCounts(
            trial.counts.served, trial.counts.agreed, trial.counts.errors), trial.updated_at_ms)
        counts.add("shadow trials", 1, int(new))


def _system(source: StoreBackend, dest: StoreBackend, counts: MigrationCounts) -> None:
    from storage.errors import StoreError

    src, dst = source.deadletters(), dest.deadletters()
    letters = list(reversed(src.list(src.count())))  # oldest first
    held = dst.count()
    for letter in letters[held:]:
        dst.record(at_ms=letter.at_ms, actor=letter.actor, message=letter.message,
                   error=letter.error, message_type=letter.message_type)
    counts.add("dead letters", len(letters), max(0, len(letters) - held))
    try:
        runs = list(reversed(source.training_runs().runs(1_000_000_000)))
    except StoreError:  # no learner ever ran here
        runs = []
    dst_runs = dest.training_runs()
    held = len(dst_runs.runs(1_000_000_000))
    for run in runs[held:]:
        dst_runs.record(run)
    counts.add("training runs", len(runs), max(0, len(runs) - held))
    try:
        check = source.drift_log().latest_check()
    except StoreError:  # no drift check ever ran here
        check = None
    drift = dest.drift_log()
    if check is not None and drift.latest_check() != check:
        drift.record_check(check)
        counts.add("drift checks", 1, 1)


def migrate(source: StoreBackend, dest: StoreBackend,
            progress: Progress = lambda store, done, total: None) -> MigrationCounts:
    """Copy every store of ``source`` (an SQLite data directory, read-only) into ``dest``;
    what was read and what was new, per store."""
    counts = MigrationCounts()
    _facts(source, dest, counts, progress)
    _features(source, dest, counts, progress)
    _registry(source, dest, counts, progress)
    _system(source, dest, counts)
    return counts
