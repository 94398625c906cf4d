"""The system stores (training runs, drift checks, shadow trials, dead letters) on every
backend: the store-level tests of ``test_training_runs``, ``test_drift`` and
``test_shadow``, run on SQLite and on the Couchbase backend (through the SDK stand-in,
and on a real cluster when ``RML_COUCHBASE_*`` is set, as in the store contract)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from learning.training.triggers import Trigger
from storage import MODELS_FILE, SYSTEM_FILE, SQLiteDeadLetters, StoreError
from storage.couchbase.cluster import CouchbaseConnection
from storage.couchbase.stores import OPENERS
from storage.drift_log import DRIFT_FILE
from storage.shadow import ShadowCounts
from storage.sqlite.drift_log import SQLiteDriftLog
from storage.sqlite.shadow import SQLiteShadowTrials
from storage.sqlite.training_runs import SQLiteTrainingRuns
from tests.couchbase_standin import StandinCluster
from tests.test_drift import _check
from tests.test_store_contract import (
    COUCHBASE_CONFIGURED,
    DEADLINE_S,
    REPO,
    child_env,
    open_couchbase,
)
from tests.test_training_runs import URL, _drift, _run

#: Each system store on SQLite: its class and its file in the data directory.
SQLITE: dict[str, tuple[Any, str]] = {
    "training_runs": (SQLiteTrainingRuns, SYSTEM_FILE),
    "drift_log": (SQLiteDriftLog, DRIFT_FILE),
    "shadow_trials": (SQLiteShadowTrials, MODELS_FILE),
    "deadletters": (SQLiteDeadLetters, SYSTEM_FILE),
}


@dataclass
class System:
    """Where one backend's system stores live; plain strings so a child process can open
    them too. Keeps the Couchbase connections it opened, to close them last."""

    name: str
    location: str
    connections: list[CouchbaseConnection] = field(default_factory=list)

    def open(self, store: str, *, read_only: bool = False) -> Any:
        """Store ``store`` (a key of ``SQLITE``) of this backend."""
        if self.name == "sqlite":
            cls, file = SQLITE[store]
            Path(self.location).mkdir(parents=True, exist_ok=True)
            return cls(Path(self.location) / file, read_only=read_only)
        connection = open_couchbase(self.name, self.location, read_only=read_only)
        self.connections.append(connection)
        return OPENERS[store](connection, None)  # as the daemon will open it

    def close(self) -> None:
        """Close the connections this opened (each store closes its own handle)."""
        for connection in self.connections:
            connection.close()


@pytest.fixture(params=[
    "sqlite",
    "couchbase-standin",
    pytest.param("couchbase", marks=pytest.mark.skipif(
        not COUCHBASE_CONFIGURED, reason="RML_COUCHBASE_URL and credentials not set")),
])
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[System]:
    opened = System(request.param, str(tmp_path / "data"))
    yield opened
    opened.close()


@pytest.fixture
def runs(system: System) -> Iterator[Any]:
    log = system.open("training_runs")
    yield log
    log.close()


# -- training runs (tests/test_training_runs.py) -------------------------------------------


def test_runs_are_kept_durably_newest_first_with_their_trigger(system: System,
                                                               runs: Any) -> None:
    first = _run("c-1", 1_000, "timeout", trigger=_drift())
    second = _run("c-2", 2_000, "registered", trainer="local", version=4)
    runs.record(first)
    runs.record(second)
    runs.close()
    reopened = system.open("training_runs", read_only=True)
    try:
        assert reopened.runs() == (second, first)
        assert reopened.runs(1) == (second,)
        assert reopened.runs(0) == ()
        assert reopened.runs()[1].trigger.detail["psi"] == {"a": 0.6}
        assert reopened.run_of(4) == second and reopened.run_of(5) is None
    finally:
        reopened.close()


def test_only_a_drift_run_that_registered_a_version_uses_up_the_episode(runs: Any) -> None:
    for i, outcome in enumerate(("timeout", "failed", "skipped")):
        runs.record(_run(f"c-{i}", i, outcome, trigger=_drift()))
        assert not runs.retrained_in_episode(3, 7), outcome  # the episode may retrain again
    runs.record(_run("c-3", 3, "registered", trigger=Trigger("request", "asked"), version=5))
    assert not runs.retrained_in_episode(3, 7)  # a request is not the drift retrain
    runs.record(_run("c-4", 4, "registered", trigger=_drift(), version=6))
    assert runs.retrained_in_episode(3, 7)
    assert not runs.retrained_in_episode(4, 7) and not runs.retrained_in_episode(3, 8)


def test_failures_in_a_row_count_back_to_the_last_run_that_did_not_fail(runs: Any) -> None:
    assert runs.failures_in_a_row(URL) == ()
    runs.record(_run("c-1", 1, "timeout"))
    runs.record(_run("c-2", 2, "registered", version=1))
    runs.record(_run("c-3", 3, "failed"))
    runs.record(_run("c-4", 4, "timeout"))
    assert [r.correlation_id for r in runs.failures_in_a_row(URL)] == ["c-4", "c-3"]
    runs.record(_run("c-5", 5, "failed", trainer="http://127.0.0.1:9999"))
    assert runs.failures_in_a_row(URL) == ()  # another trainer now: its own streak
    assert len(runs.failures_in_a_row("http://127.0.0.1:9999")) == 1


def test_a_reader_sees_the_runs_recorded_after_it_first_read(system: System,
                                                             runs: Any) -> None:
    reader = system.open("training_runs", read_only=True)
    try:
        runs.record(_run("c-1", 1, "registered", trigger=_drift(), version=1))
        assert reader.run_of(1) is not None and reader.retrained_in_episode(3, 7)
        runs.record(_run("c-2", 2, "registered", trigger=_drift(4, 9), version=2))
        assert reader.run_of(2) == reader.runs(1)[0]  # read on past what it had read
        assert reader.retrained_in_episode(4, 9)
    finally:
        reader.close()


# -- the drift log (tests/test_drift.py) -------------------------------------------------


def test_drift_log_keeps_checks(system: System) -> None:
    log = system.open("drift_log")
    try:
        assert log.latest_check() is None
        check = _check(7, 0.6, version=3)
        log.record_check(_check(6, 0.1, version=3))
        log.record_check(check)
        assert log.latest_check() == check
    finally:
        log.close()
    reader = system.open("drift_log", read_only=True)
    try:
        assert reader.latest_check() == check  # what rml status reads
    finally:
        reader.close()


# -- shadow trials (tests/test_shadow.py) ------------------------------------------------


def test_trial_counts_keep_the_largest_report_per_reporter_and_sum_reporters(
        system: System) -> None:
    trials = system.open("shadow_trials")
    started = trials.start(5, target=100, at_ms=1_000)
    assert (started.version, started.target, started.counts) == (5, 100, ShadowCounts())
    assert trials.start(5, target=7, at_ms=2_000) == started  # idempotent: first one kept
    trials.record(5, "predictor-a", ShadowCounts(10, 9, 1), 1_100)
    trials.record(5, "predictor-a", ShadowCounts(10, 9, 1), 1_100)  # redelivered
    trials.record(5, "predictor-a", ShadowCounts(4, 4, 0), 1_050)  # late, older
    trial = trials.record(5, "predictor-b", ShadowCounts(30, 30, 0), 1_200)
    assert trial.counts == ShadowCounts(40, 39, 1)
    assert not trial.done
    assert trials.record(5, "predictor-b", ShadowCounts(90, 88, 0), 1_300).done
    with pytest.raises(KeyError):
        trials.record(6, "predictor-a", ShadowCounts(1, 1, 0), 1_300)
    trials.close()
    reopened = system.open("shadow_trials", read_only=True)
    [again] = reopened.trials()
    assert (again.version, again.counts, again.updated_at_ms) == (5, ShadowCounts(100, 97, 1),
                                                                  1_300)
    reopened.close()


def test_a_store_without_trials_reads_as_having_none(system: System) -> None:
    system.open("shadow_trials").close()  # SQLite: the file; Couchbase: the collections
    trials = system.open("shadow_trials", read_only=True)
    assert trials.trials() == () and trials.get(1) is None
    trials.close()


def test_trials_are_listed_by_version_each_with_its_own_counts(system: System) -> None:
    trials = system.open("shadow_trials")
    try:
        for version in (9, 2, 5):
            trials.start(version, target=10, at_ms=version)
        trials.record(5, "p", ShadowCounts(3, 2, 1), 50)
        trials.record(9, "p", ShadowCounts(1, 1, 0), 90)
        listed = trials.trials()
        assert [t.version for t in listed] == [2, 5, 9]
        assert [(t.counts.served, t.updated_at_ms) for t in listed] == [(0, 2), (3, 50),
                                                                        (1, 90)]
        assert trials.get(5) == listed[1] and trials.get(3) is None
        with pytest.raises(ValueError, match="target of at least 1"):
            trials.start(4, target=0, at_ms=1)
    finally:
        trials.close()


def test_a_reporter_too_long_for_a_key_is_still_counted(system: System) -> None:
    trials = system.open("shadow_trials")
    try:
        trials.start(1, target=10, at_ms=0)
        long = "predictor:%" * 40
        trials.record(1, long, ShadowCounts(4, 4, 0), 1)
        trials.record(1, long + "x", ShadowCounts(2, 1, 1), 2)
        assert trials.record(1, long, ShadowCounts(3, 3, 0), 3).counts == ShadowCounts(6, 5, 1)
    finally:
        trials.close()


_REPORTER = """
import json, sys
from storage.shadow import ShadowCounts
from tests.test_couchbase_system import REPORTS, System
name, location, reporter, target, other = sys.argv[1:]
system = System(name, location)
trials = system.open("shadow_trials")
started = trials.start(5, target=int(target), at_ms=int(target))
for served, agreed, errors, at in REPORTS[reporter]:
    trials.record(5, reporter, ShadowCounts(served, agreed, errors), at)
served, agreed, errors, at = REPORTS[reporter][-1]
trials.record(5, reporter, ShadowCounts(served, agreed, errors), at)  # redelivered
served, agreed, errors, at = REPORTS[reporter][0]
trials.record(5, reporter, ShadowCounts(served, agreed, errors), at)  # late
served, agreed, errors, at = REPORTS[other][0]  # the other's report, through this process
trials.record(5, other, ShadowCounts(served, agreed, errors), at)
print(json.dumps(started.to_mapping()))
trials.close()
system.close()
"""

#: Each reporter's cumulative reports: served, agreed, errors, at_ms.
REPORTS = {"predictor-a": [(10 * i, 9 * i, i, 1_000 + 10 * i) for i in range(1, 9)],
           "predictor-b": [(7 * i, 7 * i, 0, 1_005 + 10 * i) for i in range(1, 9)]}


def test_two_processes_count_their_reporters_once_whatever_is_repeated_or_late(
        system: System) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _REPORTER, system.name, system.location,
                               reporter, str(target), other], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=child_env(), cwd=REPO)
             for reporter, other, target in (("predictor-a", "predictor-b", 100),
                                             ("predictor-b", "predictor-a", 70))]
    outputs = [p.communicate(timeout=DEADLINE_S) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    starts = [json.loads(out) for out, _ in outputs]
    trials = system.open("shadow_trials")
    try:
        trial = trials.get(5)
        assert trial is not None and trials.trials() == (trial,)
        # Both starts returned the one trial that was stored first, whichever it was.
        assert {(s["target"], s["started_at_ms"]) for s in starts} == {
            (trial.target, trial.started_at_ms)} and trial.target in (100, 70)
        assert trial.counts == ShadowCounts(80 + 56, 72 + 56, 8)
        assert trial.updated_at_ms == 1_085
        # Once more from this process: a repeat and a late report change nothing.
        assert trials.record(5, "predictor-b", ShadowCounts(56, 56, 0), 1_085) == trial
        assert trials.record(5, "predictor-a", ShadowCounts(30, 27, 3), 1_030) == trial
    finally:
        trials.close()


def test_a_repeated_or_late_report_writes_nothing_on_couchbase(system: System) -> None:
    if system.name != "couchbase-standin":
        pytest.skip("counts the stand-in's writes")
    cluster = StandinCluster(Path(system.location) / "cb")
    trials = system.open("shadow_trials")
    try:
        trials.start(1, target=10, at_ms=0)
        trials.record(1, "p", ShadowCounts(5, 4, 1), 10)
        before = cluster.mutations()
        trials.record(1, "p", ShadowCounts(5, 4, 1), 10)
        trials.record(1, "p", ShadowCounts(2, 2, 0), 5)
        trials.start(1, target=10, at_ms=20)
        assert cluster.mutations() == before
        trials.record(1, "p", ShadowCounts(5, 4, 1), 11)  # a resend: updated, so stored
        assert cluster.mutations() == before + 1
        assert trials.get(1).updated_at_ms == 11
    finally:
        trials.close()


# -- every system store: closed, read-only -------------------------------------------------


def _write(store: str, opened: Any) -> None:
    """One write of ``store``."""
    if store == "training_runs":
        opened.record(_run("c", 1, "timeout"))
    elif store == "drift_log":
        opened.record_check(_check(1, 0.1))
    elif store == "shadow_trials":
        opened.start(1, target=5, at_ms=1)
    else:
        opened.record(at_ms=1, actor="a", message="m", error="e")


def _read(store: str, opened: Any) -> object:
    """One read of ``store``."""
    if store == "training_runs":
        return opened.runs()
    if store == "drift_log":
        return opened.latest_check()
    if store == "shadow_trials":
        return opened.trials()
    return opened.list()


@pytest.mark.parametrize("store", sorted(SQLITE))
def test_a_read_only_store_refuses_writes_and_still_reads(system: System, store: str) -> None:
    writer = system.open(store)
    _write(store, writer)
    expected = _read(store, writer)
    writer.close()
    reader = system.open(store, read_only=True)
    try:
        with pytest.raises(StoreError):
            _write(store, reader)
        assert _read(store, reader) == expected
    finally:
        reader.close()


@pytest.mark.parametrize("store", sorted(SQLITE))
def test_a_closed_store_refuses_every_call_and_closes_once(system: System, store: str) -> None:
    opened = system.open(store)
    opened.close()
    opened.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        _read(store, opened)
    with pytest.raises(StoreError, match="closed"):
        _write(store, opened)
