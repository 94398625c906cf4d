"""Shadow serving without an actor system: the plan for a candidate, the runner that asks the
shadow model off the hot path, the choice of models to load, and the durable trial counts."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors.edge import Request, Response
from actors.predictor import Predictor
from actors.publisher import Publisher
from config.settings import Settings
from learning.features.collections import FeatureCollection, FeatureRow
from learning.serving.answer import (
    LoadedModel,
    RowLookup,
    ServingChoice,
    ServingSnapshot,
    choose_models,
)
from learning.serving.shadow import (
    CandidatePlan,
    RowMemo,
    ShadowPrediction,
    ShadowRunner,
    judge_trial,
    plan_candidate,
)
from messages.codec import PredictQuery
from messages.protocol import Prediction, ShadowServed
from storage import FEATURES_FILE, MODELS_FILE, StoreError
from storage.backend import StoreBackend
from storage.shadow import ShadowCounts, ShadowTrial
from storage.sqlite.features import SQLiteFeatureStore
from storage.sqlite.registry import SQLiteModelRegistry
from storage.sqlite.shadow import SQLiteShadowTrials

FEATURES = ("animal_estimate", "zebra_share")


def _model(version: int, probability: float, collection: int = 1) -> LoadedModel:
    return LoadedModel(version, collection, FEATURES, lambda values: probability)


def _answer(probability: float, version: int = 1) -> Prediction:
    return Prediction("cid", probability >= 0.5, probability, version, 1)


def _rows(lookups: list[tuple[int, int]]) -> RowLookup:
    def lookup(collection_id: int, location_id: int) -> FeatureRow | None:
        lookups.append((collection_id, location_id))
        return FeatureRow(collection_id, location_id, 0, (3.0, 0.5), 0)
    return lookup


# --- the plan for a judged candidate --------------------------------------------------


@pytest.mark.parametrize(("passed", "has_champion", "forced", "requests", "plan"), [
    (False, True, False, 100, CandidatePlan.REJECT),
    (False, True, True, 0, CandidatePlan.REJECT),
    (True, True, False, 0, CandidatePlan.PROMOTE),
    (True, True, False, 100, CandidatePlan.SHADOW),
    (True, False, False, 100, CandidatePlan.PROMOTE),  # nothing to shadow beside
    (True, True, True, 100, CandidatePlan.PROMOTE),  # forced by the operator: at once
])
def test_a_candidate_that_passes_the_gate_goes_to_shadow_only_beside_a_champion_unforced(
        passed: bool, has_champion: bool, forced: bool, requests: int,
        plan: CandidatePlan) -> None:
    assert plan_candidate(passed, has_champion, forced, requests) is plan


# --- the end of a shadow trial ----------------------------------------------------------


def _trial(served: int, agreed: int, errors: int, target: int = 100) -> ShadowTrial:
    return ShadowTrial(2, target, 0, ShadowCounts(served, agreed, errors), 0)


def test_a_shadow_that_served_its_target_within_the_error_rate_is_promoted() -> None:
    assert judge_trial(_trial(99, 99, 9), 0.1) is None  # asked 108 times, 8.3% failed
    verdict = judge_trial(_trial(100, 95, 10), 0.1)
    assert verdict is not None and verdict.plan is CandidatePlan.PROMOTE
    assert verdict.reason == ("shadow finished: 100/100 requests, 95.0% agreed with the "
                              "champion's label; 10 shadow predictions failed")
    clean = judge_trial(_trial(100, 100, 0), 0.1)
    assert clean is not None and clean.reason == (
        "shadow finished: 100/100 requests, 100.0% agreed with the champion's label")


def test_a_shadow_that_keeps_failing_is_rejected_once_asked_its_target() -> None:
    assert judge_trial(_trial(0, 0, 99), 0.1) is None  # not asked 100 times yet
    verdict = judge_trial(_trial(0, 0, 100), 0.1)  # it could never have served its target
    assert verdict is not None and verdict.plan is CandidatePlan.REJECT
    assert verdict.reason == ("shadow rejected: 100 of 100 shadow predictions failed (100.0%, "
                              "above the shadow_max_error_rate of 10.0%); 0/100 requests")
    partly = judge_trial(_trial(80, 80, 20), 0.1)
    assert partly is not None and partly.plan is CandidatePlan.REJECT
    assert partly.reason.endswith("; 80/100 requests, 100.0% agreed")
    assert judge_trial(_trial(80, 80, 20), 0.25) is None  # within a looser rate: goes on


def test_with_an_error_rate_of_one_errors_never_reject_a_shadow() -> None:
    assert judge_trial(_trial(0, 0, 10_000), 1.0) is None
    verdict = judge_trial(_trial(100, 50, 10_000), 1.0)
    assert verdict is not None and verdict.plan is CandidatePlan.PROMOTE


def test_every_shadow_trial_ends_within_its_target_over_one_minus_the_rate() -> None:
    for rate in (0.0, 0.1, 0.5):
        for failing_every in (1, 2, 3, 10, 1_000):  # one request in n fails
            served = errors = 0
            while judge_trial(_trial(served, served, errors), rate) is None:
                if (served + errors) % failing_every == 0:
                    errors += 1
                else:
                    served += 1
            assert served + errors <= 100 / (1 - rate) + 1, (rate, failing_every)


# --- the runner ------------------------------------------------------------------------


def test_runner_asks_the_shadow_later_and_tallies_agreement_per_version() -> None:
    runner = ShadowRunner()
    lookups: list[tuple[int, int]] = []
    query = PredictQuery(location_id=7, features=None)
    runner.offer(_model(2, 0.8), query, RowMemo(_rows([])), _answer(0.9))  # agrees (True)
    runner.offer(_model(2, 0.3), query, RowMemo(_rows([])), _answer(0.9))  # disagrees
    assert runner.counts(2) == ShadowCounts()  # offering computes nothing
    seen: list[ShadowPrediction] = []
    assert runner.run_pending(_rows(lookups), seen.append) == 2
    assert lookups == [(1, 7), (1, 7)]  # the champion's memos were never filled
    assert runner.counts(2) == ShadowCounts(served=2, agreed=1, errors=0)
    assert [(s.version, s.probability, s.agreed) for s in seen] == [(2, 0.8, True),
                                                                     (2, 0.3, False)]
    assert runner.mean_difference(2) == pytest.approx((0.1 + 0.6) / 2)
    assert runner.run_pending(_rows(lookups)) == 0 and runner.waiting == 0


def test_a_shadow_that_cannot_answer_is_counted_as_an_error_never_raised() -> None:
    runner = ShadowRunner()
    narrow = LoadedModel(3, 1, ("animal_estimate", "reading_count"), lambda v: 0.5)
    broken = LoadedModel(3, 1, FEATURES, lambda v: 1 / 0)
    given = PredictQuery(None, (("animal_estimate", 1.0), ("zebra_share", 0.2)))
    runner.offer(narrow, given, RowMemo(_rows([])), _answer(0.7))
    runner.offer(broken, given, RowMemo(_rows([])), _answer(0.7))
    seen: list[ShadowPrediction] = []
    runner.run_pending(_rows([]), seen.append)
    assert runner.counts(3) == ShadowCounts(served=0, agreed=0, errors=2)
    assert seen[0].error.startswith("missing_feature: reading_count")
    assert seen[1].error.startswith("ZeroDivisionError")


def test_runner_keeps_at_most_its_capacity_and_counts_what_it_dropped() -> None:
    runner = ShadowRunner(capacity=3)
    for _ in range(5):
        runner.offer(_model(4, 0.9), PredictQuery(1, None), RowMemo(_rows([])), _answer(0.9))
    assert (runner.waiting, runner.dropped) == (3, 2)
    assert runner.run_pending(_rows([])) == 3
    assert runner.counts(4).served == 3


def test_row_memo_reads_each_row_once_so_the_shadow_sees_the_champions_row() -> None:
    lookups: list[tuple[int, int]] = []
    memo = RowMemo(_rows(lookups))
    first = memo(1, 7)
    assert memo(1, 7) is first
    memo(2, 7)
    assert lookups == [(1, 7), (2, 7)]


def test_a_shadow_on_another_collection_reads_its_row_through_the_runners_lookup() -> None:
    edge: list[tuple[int, int]] = []  # the store of the thread that answered the champion
    actor: list[tuple[int, int]] = []  # the store of the thread that runs the shadow
    memo = RowMemo(_rows(edge))
    champion_row = memo(1, 7)  # what the champion was asked with
    runner = ShadowRunner()
    for collection in (1, 2):
        runner.offer(_model(3, 0.9, collection), PredictQuery(7, None), memo, _answer(0.9))
    assert runner.run_pending(_rows(actor)) == 2
    assert edge == [(1, 7)]  # the memo's own lookup never ran on the shadow's thread
    assert actor == [(2, 7)]  # only the row the champion was not asked with
    assert memo.replay(_rows(actor))(1, 7) is champion_row
    assert runner.counts(3) == ShadowCounts(served=2, agreed=2, errors=0)


# --- which models a predictor loads ----------------------------------------------------


@dataclass(frozen=True)
class Record:
    version: int
    status: str
    feature_collection_id: int


def test_the_newest_shadow_on_a_usable_collection_is_loaded_beside_the_champion() -> None:
    records = [Record(1, "retired", 1), Record(2, "champion", 1), Record(3, "rejected", 1),
               Record(4, "shadow", 1)]
    assert choose_models(records, frozenset({1}), 1) == ServingChoice(2, 1, False, "", 4)
    unusable = [*records[:3], Record(4, "shadow", 5)]
    assert choose_models(unusable, frozenset({1}), 1).shadow is None
    assert choose_models([Record(4, "shadow", 1)], frozenset({1}), 1).shadow is None


# --- durable trial counts -------------------------------------------------------------


def test_a_registry_written_before_shadow_trials_reads_as_having_none(tmp_path: Path) -> None:
    SQLiteModelRegistry(tmp_path / "models.sqlite").close()
    trials = SQLiteShadowTrials(tmp_path / "models.sqlite", read_only=True)
    assert trials.trials() == () and trials.get(1) is None
    trials.close()


def test_shadow_is_a_status_the_registry_file_accepts(tmp_path: Path) -> None:
    registry = SQLiteModelRegistry(tmp_path / "models.sqlite")
    version = registry.register(feature_collection_id=1, job={}, metrics={"roc_auc": 0.7},
                                lineage={}, artifact=b"x", created_at_ms=1)
    registry.set_status(version, "shadow", "passed the gate", 2)
    assert registry.get(version).status == "shadow"
    with pytest.raises(ValueError):
        registry.set_status(version, "sideways", "no such status", 3)
    registry.close()


# The registry's schema as of 4376b91, before the shadow status (and the evaluation column).
_SCHEMA_BEFORE_SHADOW = """
CREATE TABLE IF NOT EXISTS models (
    version INTEGER PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    feature_collection_id INTEGER NOT NULL,
    job TEXT NOT NULL,
    metrics TEXT NOT NULL,
    lineage TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS artifacts (
    version INTEGER PRIMARY KEY,
    data BLOB NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS status_log (
    seq INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('candidate', 'champion', 'rejected', 'retired')),
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS status_by_version ON status_log (version, seq);
CREATE TABLE IF NOT EXISTS champion_log (
    seq INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    previous_version INTEGER,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT;
INSERT INTO models VALUES (1, 5, 1, '{}', '[["roc_auc", 0.7]]', '{}', 'sha1');
INSERT INTO models VALUES (2, 6, 1, '{}', '[["roc_auc", 0.8]]', '{}', 'sha2');
INSERT INTO status_log VALUES (1, 1, 'candidate', 'registered', 5);
INSERT INTO status_log VALUES (2, 1, 'champion', 'first model', 5);
INSERT INTO status_log VALUES (3, 2, 'candidate', 'registered', 6);
INSERT INTO champion_log VALUES (1, 1, NULL, 'first model', 5);
"""


def test_a_registry_file_from_before_the_shadow_status_accepts_it_after_a_writable_open(
        tmp_path: Path) -> None:
    path = tmp_path / "models.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA_BEFORE_SHADOW)
    conn.close()
    reader = SQLiteModelRegistry(path, read_only=True)  # e.g. `rml status` on the old file
    assert [(r.version, r.status) for r in reader.versions()] == [(1, "champion"),
                                                                  (2, "candidate")]
    reader.close()
    registry = SQLiteModelRegistry(path)
    try:
        registry.set_status(2, "shadow", "passed the gate", 7)
        assert registry.get(2).status == "shadow"
        assert [(s.status, s.reason, s.at_ms) for s in registry.status_history(2)] == [
            ("candidate", "registered", 6), ("shadow", "passed the gate", 7)]
        assert [s.status for s in registry.status_history(1)] == ["candidate", "champion"]
        champion = registry.champion()
        assert champion is not None and champion.version == 1
        registry.promote(2, "shadow finished", 8)  # the sequence carries on after the rebuild
        assert [s.status for s in registry.status_history(1)] == ["candidate", "champion",
                                                                  "retired"]
    finally:
        registry.close()
    SQLiteModelRegistry(path).close()  # opening the rebuilt file again changes nothing
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index' "
                            "AND name = 'status_by_version'").fetchone() == (1,)
        assert [row[0] for row in conn.execute("SELECT seq FROM status_log ORDER BY seq")] == [
            1, 2, 3, 4, 5, 6]
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # the CHECK still guards
            conn.execute("INSERT INTO status_log (version, status, reason, at_ms) "
                         "VALUES (2, 'sideways', 'no such status', 9)")
    conn.close()


def test_runner_stops_at_its_time_budget_and_leaves_the_rest_waiting() -> None:
    runner = ShadowRunner()
    for _ in range(10):
        runner.offer(_model(5, 0.9), PredictQuery(1, None), RowMemo(_rows([])), _answer(0.9))
    ticks = iter(range(100))  # a clock that advances one second per reading
    assert runner.run_pending(_rows([]), budget_s=3.5,
                              clock=lambda: float(next(ticks))) == 3
    assert runner.waiting == 7 and runner.counts(5).served == 3


# --- the predictor's stores -------------------------------------------------------------


def test_a_predictor_reads_shadow_rows_on_its_own_store_and_closes_every_store_it_opened(
        tmp_path: Path) -> None:
    store = SQLiteFeatureStore(tmp_path / FEATURES_FILE)
    for collection in (1, 2):
        store.register_collection(FeatureCollection(collection, 0, FEATURES))
        store.write_rows([FeatureRow(collection, 7, 100, (3.0, 0.5), 100)])
    store.close()
    predictor = Predictor()
    predictor.settings = Settings(data_dir=str(tmp_path))
    predictor.backend = StoreBackend(predictor.settings)  # as on_start opens them
    actor_store = predictor.features = predictor.backend.features()  # the actor thread's
    predictor.snapshot = ServingSnapshot(_model(1, 0.9, collection=1), reason="",
                                         shadow=_model(2, 0.8, collection=2))
    answers: list[Response] = []
    request = Request("POST", "/model", "", {"content-type": "application/json"},
                      b'{"location_id": 7}', "test")
    edge_thread = threading.Thread(target=lambda: answers.append(predictor._post_model(request)))
    edge_thread.start()
    edge_thread.join()
    assert [a.status for a in answers] == [200]
    predictor._run_shadow()  # on this thread, as the actor's shadow timer would
    assert predictor.shadow.counts(2) == ShadowCounts(served=1, agreed=1, errors=0)
    assert _open_files(tmp_path / FEATURES_FILE) == 2  # the actor's store and the edge's
    predictor.on_stop()
    assert _open_files(tmp_path / FEATURES_FILE) == 0
    with pytest.raises(StoreError, match="closed"):
        actor_store.latest_row(1, 7)


def _open_files(path: Path) -> int:
    """How many file descriptors of this process are open on ``path``."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd to count open files")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):  # closed since the listing (the listing's own)
            count += fd.readlink() == path
    return count


# --- the publisher ends trials ----------------------------------------------------------


def test_the_publisher_rejects_a_failing_shadow_and_promotes_a_good_one(tmp_path: Path) -> None:
    registry = SQLiteModelRegistry(tmp_path / MODELS_FILE)
    versions = [registry.register(feature_collection_id=1, job={}, metrics={"roc_auc": 0.7},
                                  lineage={}, artifact=b"x", created_at_ms=1) for _ in range(4)]
    registry.promote(versions[0], "first model", 2)
    trials = SQLiteShadowTrials(tmp_path / MODELS_FILE)
    for version in versions[1:3]:
        trials.start(version, target=10, at_ms=3)
        registry.set_status(version, "shadow", "passed the gate", 3)
    registry.set_status(versions[3], "shadow", "put there by hand: no trial", 3)
    publisher = Publisher()
    publisher.settings = Settings(data_dir=str(tmp_path))  # shadow_max_error_rate 0.1
    publisher.registry, publisher.trials = registry, trials
    failing, good, untracked = versions[1:]
    publisher.on_ShadowServed(ShadowServed("predictor-a", failing, 5, 5, 4), None)
    assert registry.get(failing).status == "shadow"  # asked 9 times: not yet judged
    for _ in range(2):  # a redelivered report changes nothing
        publisher.on_ShadowServed(ShadowServed("predictor-a", failing, 6, 6, 4), None)
    record = registry.get(failing)
    assert (record.status, record.status_reason) == ("rejected", (
        "shadow rejected: 4 of 10 shadow predictions failed (40.0%, above the "
        "shadow_max_error_rate of 10.0%); 6/10 requests, 100.0% agreed"))
    publisher.on_ShadowServed(ShadowServed("predictor-a", good, 10, 9, 1), None)
    champion = registry.champion()
    assert champion is not None and champion.version == good
    assert champion.status_reason == ("shadow finished: 10/10 requests, 90.0% agreed with the "
                                      "champion's label; 1 shadow prediction failed")
    publisher.on_ShadowServed(ShadowServed("predictor-a", untracked, 10, 10, 0), None)
    assert registry.get(untracked).status == "shadow" and trials.get(untracked) is None
    publisher.on_stop()
