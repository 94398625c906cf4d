"""Champion and challenger on a real daemon: a candidate serves in shadow (its predictions made
and counted, never returned) for ``shadow_requests`` requests, survives the death of the
publisher and the predictors mid-trial (the count is in the store), and is then promoted;
a rollback or a newer candidate ends an unfinished shadow.

One daemon for the module; the tests run in order and build on each other.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna
from storage import MODELS_FILE, open_sqlite_stores
from storage.sqlite.shadow import SQLiteShadowTrials
from tests.e2e_support import TOKEN, RunningDaemon, running_daemon, scrape, total, wait_for

pytestmark = pytest.mark.e2e

SAVANNA = Savanna(seed=11, n_locations=12, hours=72, outcomes_per_hour=2.0,
                  end_ms=last_midnight_ms())
SHADOW_REQUESTS = 40
BEFORE_KILL = 25
WAIT_S = 60.0
PREDICTORS = ("predictor-1", "predictor-2")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    with running_daemon(tmp_path_factory.mktemp("shadow"), {"predict": {"deadline_ms": 5000}},
                        min_outcomes=400, retrain_every_outcomes=1_000_000,
                        shadow_requests=SHADOW_REQUESTS) as d:
        yield d


def _fresh(daemon: RunningDaemon, method: str, path: str, body: Any = None) -> Any:
    """One request over a new connection: the kernel spreads those over both predictors."""
    client = HttpClient("127.0.0.1", daemon.settings.predict.port, TOKEN)
    try:
        if body is None:
            status, _, raw = client.request(method, path)
            return status, json.loads(raw)
        return client.post(path, body)
    finally:
        client.close()


def _shadow_loaded_everywhere(daemon: RunningDaemon, version: int | None) -> bool:
    """Whether every predictor has been seen holding ``version`` in shadow."""
    seen: dict[str, Any] = {}
    for _ in range(16):
        status, health = _fresh(daemon, "GET", "/health")
        assert status == 200
        seen[health["actor"]] = health["shadow_version"]
    return set(seen) == set(PREDICTORS) and set(seen.values()) == {version}


def _predict(daemon: RunningDaemon, n: int) -> set[int]:
    versions = set()
    for i in range(n):
        status, answer = _fresh(daemon, "POST", "/model", {"location_id": 1 + i % 12})
        assert status == 200, answer
        versions.add(int(answer["model_version"]))
    return versions


def _trial_served(daemon: RunningDaemon, version: int) -> int:
    trials = SQLiteShadowTrials(daemon.settings.data_path / MODELS_FILE, read_only=True)
    try:
        trial = trials.get(version)
        return trial.counts.served if trial else -1
    finally:
        trials.close()


def _status_of(daemon: RunningDaemon, version: int) -> tuple[str, str]:
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        record = stores.registry.get(version)
    return record.status, record.status_reason


def _train(daemon: RunningDaemon) -> str:
    done = daemon.rml("train")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_first_model_is_champion_at_once(daemon: RunningDaemon, ingest: HttpClient) -> None:
    traffic = SAVANNA.traffic()
    assert send_items(ingest, "readings", traffic.items, batch_size=5000).failed_batches == 0
    assert send_items(ingest, "outcomes", SAVANNA.outcome_items(),
                      batch_size=10_000).failed_batches == 0
    wait_for("version 1 answering", lambda: _predict(daemon, 2) == {1}, WAIT_S, 0.2)
    assert _status_of(daemon, 1)[0] == "champion"


def test_a_candidate_that_passes_the_gate_serves_in_shadow_first(daemon: RunningDaemon) -> None:
    out = _train(daemon)
    assert "candidate: model version 2" in out
    assert "published: not yet: it passed the gate and serves in shadow" in out
    status, reason = _status_of(daemon, 2)
    assert status == "shadow"
    assert reason.endswith(f"serving in shadow for {SHADOW_REQUESTS} requests before promotion")
    [shadow] = daemon.status()["shadow"]
    assert (shadow["version"], shadow["served"], shadow["target"]) == (2, 0, SHADOW_REQUESTS)
    wait_for("both predictors holding version 2 in shadow",
             lambda: _shadow_loaded_everywhere(daemon, 2), WAIT_S)
    # The clients get the champion's answers; the shadow's are only counted.
    assert _predict(daemon, BEFORE_KILL) == {1}
    wait_for(f"{BEFORE_KILL} shadow predictions recorded",
             lambda: _trial_served(daemon, 2) == BEFORE_KILL, WAIT_S)
    # The node's metrics sum both predictors' shadow predictions, and show the progress.
    wait_for(f"{BEFORE_KILL} shadow predictions in the metrics", lambda: total(
        scrape(daemon.settings), "rml_shadow_predictions_total", version="2",
        outcome="served") == BEFORE_KILL, WAIT_S, 0.1)
    wait_for("the trial's progress in the metrics", lambda: total(
        scrape(daemon.settings), "rml_shadow_trial_progress", version="2") == (
        BEFORE_KILL / SHADOW_REQUESTS), WAIT_S, 0.1)
    assert "shadow model: version 2 on feature collection" in daemon.rml("status").stdout


def test_shadow_progress_survives_the_publisher_and_predictors_dying(
        daemon: RunningDaemon) -> None:
    names = ("publisher", *PREDICTORS)
    before = {name: daemon.actor(name)["pid"] for name in names}
    for pid in before.values():
        os.kill(pid, signal.SIGKILL)
    wait_for("publisher and predictors replaced",
             lambda: all((a := daemon.actor(n))["state"] == "running" and a["pid"] != before[n]
                         for n in names), WAIT_S)
    assert _trial_served(daemon, 2) == BEFORE_KILL
    assert _status_of(daemon, 2)[0] == "shadow"
    wait_for("the replacements holding version 2 in shadow",
             lambda: _shadow_loaded_everywhere(daemon, 2), WAIT_S)
    # Only the requests still missing: the promotion needs what the dead ones served.
    assert _predict(daemon, SHADOW_REQUESTS - BEFORE_KILL) == {1}
    wait_for("version 2 promoted after its shadow requests",
             lambda: _status_of(daemon, 2)[0] == "champion", WAIT_S)
    # The killed predictors' counts stay in the node's metrics; the new ones add theirs.
    wait_for(f"{SHADOW_REQUESTS} shadow predictions in the metrics", lambda: total(
        scrape(daemon.settings), "rml_shadow_predictions_total", version="2",
        outcome="served") == SHADOW_REQUESTS, WAIT_S, 0.1)
    status, reason = _status_of(daemon, 2)
    assert reason == (f"shadow finished: {SHADOW_REQUESTS}/{SHADOW_REQUESTS} requests, "
                      "100.0% agreed with the champion's label")
    wait_for("version 2 answering", lambda: _predict(daemon, 4) == {2}, WAIT_S)
    assert daemon.status()["shadow"] == []


def test_a_rollback_or_a_newer_candidate_ends_an_unfinished_shadow(
        daemon: RunningDaemon) -> None:
    assert "serves in shadow" in _train(daemon)  # version 3
    rolled = daemon.rml("rollback", "1", "--reason", "back to the first")
    assert rolled.returncode == 0, rolled.stderr
    status, reason = _status_of(daemon, 3)
    assert status == "rejected"
    assert reason.startswith("shadow ended unfinished after") and reason.endswith(
        "rollback to version 1")
    assert _status_of(daemon, 1) == ("champion", "rollback by operator: back to the first")
    assert "serves in shadow" in _train(daemon)  # version 4
    assert "serves in shadow" in _train(daemon)  # version 5 supersedes 4
    assert _status_of(daemon, 4)[0] == "rejected"
    assert _status_of(daemon, 4)[1].endswith("version 5 entered shadow")
    assert _status_of(daemon, 5)[0] == "shadow"
    models = {m["version"]: m for m in json.loads(daemon.rml("models", "--json").stdout)["models"]}
    assert [h["status"] for h in models[2]["history"]] == ["candidate", "shadow", "champion",
                                                           "retired"]
    assert models[2]["shadow"]["served"] == SHADOW_REQUESTS
