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
from learning.training.triggers import Trigger
from storage import MODELS_FILE, SYSTEM_FILE, SQLiteDeadLetters
from storage.sqlite.registry import SQLiteModelRegistry
from storage.sqlite.training_runs import SQLiteTrainingRuns
from storage.training_runs import TrainingRun

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


@pytest.mark.parametrize(("outcome", "version", "says"), [
    ("maybe", None, "outcome must be one of registered, skipped, timeout, failed"),
    ("registered", None, "a registered run needs a version"),
    ("failed", 3, "a failed run has no version"),
])
def test_a_run_that_cannot_be_is_refused(outcome: str, version: int | None, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        TrainingRun("c", 0, Trigger("request", "asked"), "local", outcome, "", 0.0, version)


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
