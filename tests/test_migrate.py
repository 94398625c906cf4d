"""``rml migrate``: an SQLite data directory copied into the Couchbase backend (through the
SDK stand-in), everything readable there as it was, and a second run doubles nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from config.settings import Settings, StorageSettings
from learning.features.collections import FeatureCollection, FeatureRow
from learning.training.triggers import DriftCheck, Trigger
from messages.facts import Outcome, Reading
from storage.backend import StoreBackend
from storage.couchbase.stores import STORES
from storage.facts import FactCursor
from storage.migrate import migrate
from storage.shadow import ShadowCounts
from storage.training_runs import TrainingRun
from tests.couchbase_standin import StandinCluster

pytestmark = pytest.mark.skipif(
    not {"features", "registry", "deadletters", "training_runs", "drift_log",
         "shadow_trials"} <= STORES, reason="not every store has its Couchbase backend yet")

READINGS = [Reading(f"s{i % 7}", i % 5, f"r{i}", 1_000 * i, 1, 4, 0.5) for i in range(2_500)]
OUTCOMES = [Outcome(i % 5, f"o{i}", 1_000 * i, i % 3 == 0) for i in range(300)]
COLLECTIONS = (FeatureCollection(0, 1, ("animals", "zebras")),
               FeatureCollection(1, 2, ("animals", "zebras", "trend")))


def fill(source: StoreBackend) -> None:
    """A data directory as a daemon leaves it: facts, features, models, system records."""
    stores = source.stores()
    stores.facts.insert_readings(READINGS[:1_200])
    stores.facts.insert_readings(READINGS[1_000:])  # 200 duplicates
    stores.facts.insert_outcomes(OUTCOMES)
    for collection in COLLECTIONS:
        stores.features.register_collection(collection)
    stores.features.record_switch(1, "started", 10)
    stores.features.mark_invalid("trend", "crashed 3 times", 20)
    stores.features.record_switch(0, "invalid features: trend", 21)
    stores.features.write_rows([FeatureRow(c, loc, t, (1.0, float("nan"), 3.0)[:2 + c], t + 1)
                                for c in (0, 1) for loc in range(5) for t in (100, 200, 300)])
    for version in (1, 2, 3):
        stores.registry.register(
            feature_collection_id=0, job={"model": "tree"},
            metrics={"roc_auc": 0.7 + version / 100},
            lineage={"facts": {"outcomes": 100 * version}}, artifact=bytes([version]) * 70_000,
            created_at_ms=1_000 * version, evaluation={"holdout": version},
            compiled=b"form" if version != 2 else None)
    stores.registry.promote(1, "first", 1_100)
    stores.registry.promote(3, "better", 3_100)
    stores.registry.set_status(2, "rejected", "worse", 2_100)
    stores.deadletters.record(at_ms=5, actor="learner", message="x" * 10, error="boom")
    stores.deadletters.record(at_ms=6, actor="publisher", message="y", error="bang")
    source.training_runs().record(TrainingRun("c1", 900, Trigger("request", "asked"), "local",
                                              "registered", "", 1.5, 1))
    source.drift_log().record_check(DriftCheck(4_000, 3, 0, 0, 3_000, 15, (("animals", 0.3),),
                                               0.25, 4_000))
    trials = source.shadow_trials()
    trials.start(3, 100, 3_050)
    trials.record(3, "predictor-1", ShadowCounts(40, 38, 1), 3_060)
    trials.record(3, "predictor-2", ShadowCounts(20, 20, 0), 3_070)


def snapshot(backend: StoreBackend) -> dict[str, object]:
    """Everything a reader sees, in comparable form."""
    s = backend.stores()
    registry = s.registry
    paged: list[Reading] = []
    cursor = FactCursor()
    while (page := s.facts.readings_since(cursor, 500)).items:
        paged += page.items
        cursor = page.cursor
    return {
        "readings": sorted(s.facts.all_readings(), key=lambda r: r.key),
        "paged": sorted(paged, key=lambda r: r.key),
        "outcomes": s.facts.all_outcomes(), "counts": s.facts.counts(),
        "collections": s.features.collections(), "active": s.features.active_collection_id(),
        "switches": s.features.switches(), "invalid": s.features.invalid_feature_log(),
        "rows": repr([s.features.row_as_of(c, loc, t) for c in (0, 1) for loc in range(5)
                      for t in (150, 250, 999)]),
        "rows_text": repr([s.features.latest_rows(c) for c in (0, 1)]),  # NaN != NaN
        "models": registry.versions(), "champion": registry.champion(),
        "champions": registry.champion_history(),
        "history": [registry.status_history(v) for v in (1, 2, 3)],
        "artifacts": [registry.artifact(v) for v in (1, 2, 3)],
        "forms": [registry.compiled_form(v) for v in (1, 2, 3)],
        "dead": s.deadletters.list(10), "runs": backend.training_runs().runs(10),
        "drift": backend.drift_log().latest_check(),
        "trial": backend.shadow_trials().get(3).counts,  # type: ignore[union-attr]
    }


def test_a_data_directory_migrates_whole_and_a_second_run_doubles_nothing(
        tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"))
    cluster = StandinCluster(tmp_path / "cb")
    couchbase = replace(settings, storage=replace(StorageSettings(), backend="couchbase"))

    def dest(read_only: bool = False) -> StoreBackend:
        return StoreBackend(couchbase, read_only=read_only, writer="migrate",
                            cluster_factory=lambda _: StandinCluster(cluster.root))

    source = StoreBackend(settings)
    fill(source)
    source.close()
    source = StoreBackend(settings, read_only=True)
    target = dest()
    try:
        target.connection().ensure_collections()
        first = migrate(source, target)
        second = migrate(source, target)
        expected = snapshot(source)
    finally:
        source.close()
        target.close()
    assert first.new["readings"] == 2_500 and first.new["outcomes"] == 300
    assert first.new["models"] == 3 and first.new["dead letters"] == 2
    assert all(n == 0 for store, n in second.new.items() if store != "status changes"), second
    assert second.new.get("status changes", 0) == 0
    reader = dest(read_only=True)
    try:
        got = snapshot(reader)
    finally:
        reader.close()
    for key, value in expected.items():
        assert got[key] == value, key
    assert json.loads(got["models"][0].lineage) == {"facts": {"outcomes": 100}}  # type: ignore[index]
