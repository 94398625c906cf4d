"""The training runs: one row per run (trigger, trainer, outcome, seconds, version), what the
learner reads back from them (a drift episode used up, a failing trainer's streak), and
their readers (``rml status``, ``rml models``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from daemon.models_view import models_view, render_models
from daemon.status import drift_view
from learning.triggers import Trigger
from storage import MODELS_FILE, SYSTEM_FILE, SQLiteDeadLetters
from storage.sqlite_registry import SQLiteModelRegistry
from storage.training_runs import SQLiteTrainingRuns, TrainingRun

URL = "http://127.0.0.1:8480"


def _drift(version: int = 3, episode: int = 7) -> Trigger:
    return Trigger("drift", "PSI above 0.25 in a",
                   {"champion_version": version, "episode_started_at_ms": episode,
                    "psi": {"a": 0.6}})


def _run(cid: str, at: int, outcome: str, *, trigger: Trigger | None = None,
         trainer: str = URL, version: int | None = None) -> TrainingRun:
    error = "" if outcome in ("registered", "skipped") else f"{outcome} on purpose"
    return TrainingRun(cid, at, trigger or Trigger("request", "asked to train"), trainer,
                       outcome, error, 0.5, version)


@pytest.fixture()
def runs(tmp_path: Path) -> Iterator[SQLiteTrainingRuns]:
    log = SQLiteTrainingRuns(tmp_path / SYSTEM_FILE)
    yield log
    log.close()


def test_runs_are_kept_durably_newest_first_with_their_trigger(tmp_path: Path,
                                                               runs: SQLiteTrainingRuns) -> None:
    first = _run("c-1", 1_000, "timeout", trigger=_drift())
    second = _run("c-2", 2_000, "registered", trainer="local", version=4)
    runs.record(first)
    runs.record(second)
    runs.close()
    reopened = SQLiteTrainingRuns(tmp_path / SYSTEM_FILE, read_only=True)
    try:
        assert reopened.runs() == (second, first)
        assert reopened.runs(1) == (second,)
        assert reopened.runs()[1].trigger.detail["psi"] == {"a": 0.6}
        assert reopened.run_of(4) == second and reopened.run_of(5) is None
    finally:
        reopened.close()


@pytest.mark.parametrize(("outcome", "version", "says"), [
    ("maybe", None, "outcome must be one of registered, skipped, timeout, failed"),
    ("registered", None, "a registered run needs a version"),
    ("failed", 3, "a failed run has no version"),
])
def test_a_run_that_cannot_be_is_refused(outcome: str, version: int | None, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        TrainingRun("c", 0, Trigger("request", "asked"), "local", outcome, "", 0.0, version)


def test_only_a_drift_run_that_registered_a_version_uses_up_the_episode(
        runs: SQLiteTrainingRuns) -> None:
    for i, outcome in enumerate(("timeout", "failed", "skipped")):
        runs.record(_run(f"c-{i}", i, outcome, trigger=_drift()))
        assert not runs.retrained_in_episode(3, 7), outcome  # the episode may retrain again
    runs.record(_run("c-3", 3, "registered", trigger=Trigger("request", "asked"), version=5))
    assert not runs.retrained_in_episode(3, 7)  # a request is not the drift retrain
    runs.record(_run("c-4", 4, "registered", trigger=_drift(), version=6))
    assert runs.retrained_in_episode(3, 7)
    assert not runs.retrained_in_episode(4, 7) and not runs.retrained_in_episode(3, 8)


def test_failures_in_a_row_count_back_to_the_last_run_that_did_not_fail(
        runs: SQLiteTrainingRuns) -> None:
    assert runs.failures_in_a_row(URL) == ()
    runs.record(_run("c-1", 1, "timeout"))
    runs.record(_run("c-2", 2, "registered", version=1))
    runs.record(_run("c-3", 3, "failed"))
    runs.record(_run("c-4", 4, "timeout"))
    assert [r.correlation_id for r in runs.failures_in_a_row(URL)] == ["c-4", "c-3"]
    runs.record(_run("c-5", 5, "failed", trainer="http://127.0.0.1:9999"))
    assert runs.failures_in_a_row(URL) == ()  # another trainer now: its own streak
    assert len(runs.failures_in_a_row("http://127.0.0.1:9999")) == 1


def test_status_has_no_last_run_before_the_learner_made_its_table(tmp_path: Path) -> None:
    SQLiteDeadLetters(tmp_path / SYSTEM_FILE).close()  # the system file, without runs
    assert drift_view(Settings(data_dir=str(tmp_path)))["last_run"] is None


def test_models_say_why_and_where_each_version_was_trained(tmp_path: Path,
                                                          runs: SQLiteTrainingRuns) -> None:
    registry = SQLiteModelRegistry(tmp_path / MODELS_FILE)
    try:
        trigger = _drift()
        version = registry.register(feature_collection_id=1, job={"model_type": "decision_tree"},
                                    metrics={"roc_auc": 0.7},
                                    lineage={"trigger": trigger.to_mapping()},
                                    artifact=b"model", created_at_ms=1)
    finally:
        registry.close()
    runs.record(_run("0123456789abcdef", 10, "registered", trigger=trigger, version=version))
    view = models_view(Settings(data_dir=str(tmp_path)))
    (model,) = view["models"]
    assert model["trigger"]["kind"] == "drift"
    assert model["run"] == {"correlation_id": "0123456789abcdef", "started_at_ms": 10,
                            "trainer": URL, "seconds": 0.5}
    assert (f"trained because: drift: PSI above 0.25 in a (run 0123456789ab: {URL}, 0.5 s)"
            in render_models(view))
