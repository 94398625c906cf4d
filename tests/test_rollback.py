"""``rml train`` (with ``--job`` and ``--force``), ``rml rollback`` and ``rml models`` against a
real daemon: every candidate registered with its verdict, a forced candidate promoted, a
rollback that predictors follow at once and that the registry records.

One daemon for the module; the tests run in order and build on each other.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.job import JobConfiguration
from daemon.registry_cli import ask_with_progress
from learning.models.rollback import rollback_reason, rollback_refusal
from messages.protocol import TrainRequest, TrainResult
from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna
from storage import MODELS_FILE, open_sqlite_stores
from tests.e2e_support import TOKEN, RunningDaemon, running_daemon, wait_for

SAVANNA = Savanna(seed=11, n_locations=12, hours=72, outcomes_per_hour=2.0,
                  end_ms=last_midnight_ms())
WAIT_S = 60.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    # No scheduled retraining: every model after the first comes from `rml train`.
    with running_daemon(tmp_path_factory.mktemp("rollback"), {"predict": {"deadline_ms": 5000}},
                        min_outcomes=400, retrain_every_outcomes=1_000_000) as d:
        yield d


def _versions_answering(daemon: RunningDaemon, tries: int = 12) -> set[int]:
    """The model versions the predictors answer with, over fresh connections (so both
    replicas sharing the port are asked)."""
    seen = set()
    for _ in range(tries):
        client = HttpClient("127.0.0.1", daemon.settings.predict.port, TOKEN)
        try:
            status, answer = client.post("/model", {"location_id": 1})
        finally:
            client.close()
        assert status == 200, answer
        seen.add(int(answer["model_version"]))
    return seen


def _models(daemon: RunningDaemon) -> dict[int, dict[str, Any]]:
    done = daemon.rml("models", "--json")
    assert done.returncode == 0, done.stderr
    return {m["version"]: m for m in json.loads(done.stdout)["models"]}


def _train(daemon: RunningDaemon, *args: str) -> str:
    done = daemon.rml("train", *args)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.e2e
def test_first_model_is_published(daemon: RunningDaemon, ingest: HttpClient) -> None:
    traffic = SAVANNA.traffic()
    assert send_items(ingest, "readings", traffic.items, batch_size=5000).failed_batches == 0
    assert send_items(ingest, "outcomes", SAVANNA.outcome_items(),
                      batch_size=10_000).failed_batches == 0

    assert wait_for("a first champion", daemon.champion, WAIT_S, 0.2).version == 1
    wait_for("predictions from version 1", lambda: _versions_answering(daemon, 2) == {1}, WAIT_S)


@pytest.mark.e2e
def test_train_waits_for_the_verdict_and_prints_metrics(daemon: RunningDaemon) -> None:
    out = _train(daemon)
    # The same job on the same facts scores the champion's ROC AUC: not worse, so published.
    assert "candidate: model version 2, decision_tree on feature collection" in out
    assert "holdout metrics: accuracy" in out and "roc_auc" in out
    assert "published: yes: version 2 is the champion" in out
    assert "gate: ROC AUC" in out and ">= champion" in out
    assert _models(daemon)[2]["status"] == "champion"


@pytest.mark.e2e
def test_a_weaker_job_is_rejected_and_forced_it_is_promoted(daemon: RunningDaemon,
                                                            tmp_path: Path) -> None:
    weak = tmp_path / "weak.toml"
    weak.write_text('[job]\nmodel_type = "decision_tree"\n'
                    "[job.hyperparameters]\nmax_depth = 1\n")
    out = _train(daemon, "--job", str(weak))
    assert "candidate: model version 3, decision_tree" in out
    assert "published: no (rejected)" in out and "< champion" in out
    forced = _train(daemon, "--job", str(weak), "--force")
    assert "published: yes: version 4 is the champion" in forced
    assert "(it was forced)" in forced and "gate: forced: ROC AUC" in forced
    models = _models(daemon)
    assert [models[v]["status"] for v in (1, 2, 3, 4)] == ["retired", "retired", "rejected",
                                                            "champion"]
    assert models[3]["job"]["hyperparameters"]["max_depth"] == 1
    assert models[4]["status_reason"].startswith("forced:")
    wait_for("predictions from the forced version 4",
             lambda: _versions_answering(daemon) == {4}, WAIT_S)


@pytest.mark.e2e
def test_rollback_switches_predictions_and_is_recorded(daemon: RunningDaemon) -> None:
    # Version 2 as if registered before compiled forms: the publisher compiles it before
    # it is served, so predictors still never load scikit-learn.
    models_file = daemon.settings.data_path / MODELS_FILE
    with contextlib.closing(sqlite3.connect(models_file)) as conn, conn:
        conn.execute("DELETE FROM compiled_forms WHERE version = 2")
    done = daemon.rml("rollback", "2", "--reason", "the forced stump is worse")
    assert done.returncode == 0, done.stderr
    assert "rolled back: version 2 is the champion (was version 4)" in done.stdout
    # The publisher told every predictor before answering: they switch within moments,
    # well before their own periodic refresh would have noticed.
    wait_for("predictions from version 2", lambda: _versions_answering(daemon) == {2}, WAIT_S)
    models = _models(daemon)
    reason = "rollback by operator: the forced stump is worse"
    assert (models[2]["status"], models[2]["status_reason"]) == ("champion", reason)
    assert [h["status"] for h in models[2]["history"]] == ["candidate", "champion", "retired",
                                                           "champion"]
    assert (models[4]["status"], models[4]["status_reason"]) == (
        "retired", f"replaced by version 2: {reason}")
    history = json.loads(daemon.rml("models", "--json").stdout)["champion_history"]
    assert (history[-1]["version"], history[-1]["previous_version"],
            history[-1]["reason"]) == (2, 4, reason)
    assert daemon.status()["model"]["version"] == 2
    human = daemon.rml("models").stdout
    assert f"version 2 (replacing version 4): {reason}" in human
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        assert stores.registry.compiled_form(2) is not None
    for actor in daemon.status()["actors"]:
        if actor["role"] == "predictor":
            assert "sklearn" not in Path(f"/proc/{actor['pid']}/maps").read_text()


@pytest.mark.e2e
def test_rollback_refuses_unknown_versions_and_accepts_the_champion_as_is(
        daemon: RunningDaemon) -> None:
    unknown = daemon.rml("rollback", "99")
    assert unknown.returncode == 1
    assert "rollback refused: unknown_version: there is no model version 99" in unknown.stderr
    same = daemon.rml("rollback", "2")
    assert same.returncode == 0 and "version 2 is already the champion" in same.stdout
    assert len(json.loads(daemon.rml("models", "--json").stdout)["champion_history"]) == 4


@pytest.mark.e2e
def test_train_reports_progress_until_the_verdict(daemon: RunningDaemon) -> None:
    forest = JobConfiguration.from_mapping({"model_type": "random_forest",
                                            "hyperparameters": {"n_estimators": 300}})
    request = TrainRequest(uuid.uuid4().hex, forest)
    ticks: list[float] = []
    answer = ask_with_progress(daemon.settings, request, 120.0, ticks.append, every_s=0.01)
    assert isinstance(answer, TrainResult) and answer.correlation_id == request.correlation_id
    assert answer.version == 5
    assert ticks and ticks == sorted(ticks)  # progress while the forest was fitted
    assert _models(daemon)[5]["job"]["model_type"] == "random_forest"


def test_rollback_refusal_names_what_is_wrong() -> None:
    assert rollback_refusal(7, None, None, frozenset({1}), None) == (
        "unknown_version: there is no model version 7")
    broken = rollback_refusal(7, "retired", 1, frozenset({1}), "StoreError: sha256")
    assert broken is not None
    assert broken.startswith("artifact_invalid: the artifact of model version 7 cannot be served")
    unusable = rollback_refusal(7, "rejected", 2, frozenset({1}), None)
    assert unusable is not None
    assert unusable.startswith("collection_unusable: model version 7 is on feature collection 2")
    assert rollback_refusal(7, "rejected", 1, frozenset({1}), None) is None
    assert rollback_reason("  bad\nmodel ") == "rollback by operator: bad model"
    assert rollback_reason("") == "rollback by operator"
