"""A regime change end to end, on a real daemon: the hidden truth of the savanna shifts; drift
is detected, a retrain runs because of it, the new champion's AUC recovers on the new
regime, and the registry's lineage tells the story.

One daemon for the module; the tests run in order, as the story does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.regime_change import RegimeChange, holdout_auc
from players.simulator import outcome_item, reading_item
from storage import open_sqlite_stores
from tests.e2e_support import RunningDaemon, running_daemon, scrape, total, wait_for

pytestmark = pytest.mark.e2e

SCENARIO = RegimeChange.build(end_ms=last_midnight_ms(), hours_before=72, hours_after=72)
BEFORE_OUTCOMES = SCENARIO.outcomes(after=False)
AFTER_OUTCOMES = SCENARIO.outcomes(after=True)
THRESHOLD = 0.25


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    # Only drift may retrain here: an outcome count far out of reach, no schedule.
    with running_daemon(tmp_path_factory.mktemp("regime"), min_outcomes=500,
                        retrain_every_outcomes=1_000_000, retrain_interval_s=0.0,
                        check_interval_s=0.5, drift_check_interval_s=0.5,
                        drift_window_ms=24 * 3_600_000, drift_threshold=THRESHOLD,
                        model_type="random_forest") as d:
        yield d


def _models(daemon: RunningDaemon) -> list[dict[str, Any]]:
    done = daemon.rml("models", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["models"])


def _champion(daemon: RunningDaemon) -> dict[str, Any] | None:
    return next((m for m in _models(daemon) if m["status"] == "champion"), None)


def _last_check(daemon: RunningDaemon) -> dict[str, Any] | None:
    check: dict[str, Any] | None = daemon.status()["drift"]["last_check"]
    return check


def _aucs(daemon: RunningDaemon, version: int, after: bool) -> tuple[float, float, int]:
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        return holdout_auc(stores.registry.get(version), stores.registry.artifact(version),
                           SCENARIO, after)


def test_regime_a_gives_a_good_champion_and_no_drift(daemon: RunningDaemon,
                                                      ingest: HttpClient) -> None:
    readings = [reading_item(r) for r in SCENARIO.readings(after=False)]
    assert send_items(ingest, "readings", readings, batch_size=5000).accepted == len(readings)
    outcomes = [outcome_item(o) for o in BEFORE_OUTCOMES]
    assert send_items(ingest, "outcomes", outcomes, batch_size=5000).accepted == len(outcomes)
    champion = wait_for("a champion trained on regime A", lambda: _champion(daemon), 60.0)
    assert champion["version"] == 1 and champion["facts"]["outcomes"] == len(outcomes)
    assert champion["trigger"]["kind"] == "outcomes"
    auc, best, rows = _aucs(daemon, 1, after=False)
    assert rows > 100 and auc > best - 0.1, (auc, best)
    check = wait_for("a drift check against version 1",
                     lambda: (c := _last_check(daemon)) and c["champion_version"] == 1 and c,
                     30.0)
    assert not check["above_threshold"], check["psi"]  # the same regime: no false alarm
    assert set(check["psi"]) == set(champion["feature_collection"]["features"])


def test_regime_b_readings_are_detected_as_drift_before_any_outcome(
        daemon: RunningDaemon, ingest: HttpClient) -> None:
    readings = [reading_item(r) for r in SCENARIO.readings(after=True)]
    assert send_items(ingest, "readings", readings, batch_size=5000).accepted == len(readings)
    check = wait_for("drift above the threshold in status",
                     lambda: (c := _last_check(daemon)) and c["above_threshold"] and c, 30.0)
    assert check["champion_version"] == 1 and check["max_psi"] > THRESHOLD
    assert check["psi"]["animal_estimate"] > THRESHOLD  # herds tripled
    assert check["psi"]["hour_sin"] < THRESHOLD  # the clock did not move
    rendered = daemon.rml("status")
    assert "ABOVE threshold" in rendered.stdout and "animal_estimate" in rendered.stdout
    # The metrics show each feature's PSI (a drift check runs every 0.5 s: one as high).
    wait_for("the drift in the metrics", lambda: total(
        scrape(daemon.settings), "rml_drift_psi", feature="animal_estimate") > THRESHOLD, 30.0)
    # No outcome of the new regime yet: retraining would see the same facts, so none runs.
    assert [m["version"] for m in _models(daemon)] == [1]


def test_drift_retrains_and_the_new_champion_recovers_on_regime_b(
        daemon: RunningDaemon, ingest: HttpClient) -> None:
    outcomes = [outcome_item(o) for o in AFTER_OUTCOMES]
    # One batch, one transaction: the drift retrain sees every new outcome or none.
    status, answer = ingest.post("/outcomes", {"outcomes": outcomes})
    assert status == 200 and answer["accepted"] == len(outcomes)
    champion = wait_for("a new champion trained because of drift",
                        lambda: (c := _champion(daemon)) and c["version"] > 1 and c, 60.0)
    trigger = champion["trigger"]
    assert trigger["kind"] == "drift" and trigger["champion_version"] == 1
    assert trigger["max_psi"] > trigger["threshold"] == THRESHOLD
    assert trigger["new_outcomes"] == len(outcomes)
    assert champion["facts"]["outcomes"] == len(BEFORE_OUTCOMES) + len(outcomes)
    metrics = champion["metrics"]
    assert metrics["champion_version"] == 1 and metrics["roc_auc"] > metrics["champion_roc_auc"]

    old_auc, best, rows = _aucs(daemon, 1, after=True)
    new_auc, same_best, same_rows = _aucs(daemon, champion["version"], after=True)
    assert (best, rows) == (same_best, same_rows) and rows > 100
    assert old_auc < 0.5  # the old champion ranks the new regime backwards
    assert new_auc > best - 0.12, (new_auc, best)  # recovered, close to the ceiling
    # Lineage tells the whole story: why each version exists, and who replaced whom.
    history = json.loads(daemon.rml("models", "--json").stdout)["champion_history"]
    assert [(h["version"], h["previous_version"]) for h in history][-1] == (
        champion["version"], 1)
    assert "trained because: drift" in daemon.rml("models").stdout
    last_run = daemon.status()["drift"]["last_run"]
    assert (last_run["outcome"], last_run["version"]) == ("registered", champion["version"])
    assert last_run["trigger"]["kind"] == "drift" and last_run["trigger"]["champion_version"] == 1
