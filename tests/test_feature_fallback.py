"""Feature fallback end to end: a real daemon loading a deliberately broken feature plugin.

The plugin (``tests.broken_features``) adds collection 2 with a feature whose values are
out of range and collection 3 with a feature that crashes. After ingest both features are
marked invalid with their reasons, the active collection falls back to collection 1 (the
newest valid one), the learner trains on it, predictors serve only models on valid
collections, and ``rml status --json`` shows all of it. The tests run in order.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.process import ask_root
from messages.protocol import Prediction, PredictRequest, TrainRequest, TrainResult
from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna, reading_item
from storage import open_sqlite_stores
from tests.e2e_support import RunningDaemon, running_daemon, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
SAVANNA = Savanna(seed=11, n_locations=12, hours=72, end_ms=last_midnight_ms())
BROKEN = {"broken_range", "broken_crash"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    with pytest.MonkeyPatch.context() as patch:
        # The daemon imports the plugin by module name, as it would an installed package.
        patch.setenv("PYTHONPATH", str(REPO))
        sections = {"features": {"plugins": ["tests.broken_features"], "max_crashes": 3}}
        with running_daemon(tmp_path_factory.mktemp("fallback"), sections,
                            min_outcomes=200) as d:
            yield d


def features_view(daemon: RunningDaemon) -> dict[str, Any]:
    return dict(daemon.status()["feature_collection"])


def test_plugin_collections_are_registered_and_the_newest_is_active_at_first(
    daemon: RunningDaemon,
) -> None:
    view = features_view(daemon)
    by_id = {c["id"]: c for c in view["collections"]}
    assert set(by_id) == {0, 1, 2, 3}
    assert "broken_range" in by_id[2]["features"] and "broken_crash" in by_id[3]["features"]
    assert view["active"] == 3
    assert view["switches"][0]["collection_id"] == 3


def test_broken_features_are_marked_invalid_and_the_collection_falls_back(
    daemon: RunningDaemon, ingest: HttpClient
) -> None:
    items = [reading_item(r) for r in SAVANNA.readings()]
    tally = send_items(ingest, "readings", items, batch_size=1000)
    assert tally.failed_batches == 0 and tally.accepted == len(items)

    view = wait_for("both broken features marked invalid",
                    lambda: (v := features_view(daemon))["invalid_features"] == sorted(BROKEN)
                    and v["active"] == 1 and v, 30.0, 0.2)
    reasons = {v["feature"]: v["reason"] for v in view["invalid"]}
    assert reasons["broken_crash"].startswith("crashed 3 times in a row")
    assert "RuntimeError" in reasons["broken_crash"]
    assert "outside [0, 1e+06]" in reasons["broken_range"]
    assert not BROKEN & set(view["active_features"])
    assert [c["usable"] for c in sorted(view["collections"], key=lambda c: c["id"])] == [
        True, True, False, False]
    assert view["switches"][-1]["collection_id"] == 1
    assert "broken_" in view["switches"][-1]["reason"]
    text = daemon.rml("status").stdout
    assert "active feature collection: 1" in text and "invalid feature broken_crash" in text


def test_rows_of_valid_collections_are_written_and_the_generator_keeps_running(
    daemon: RunningDaemon,
) -> None:
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        assert len(stores.features.latest_rows(1)) == 12
        assert len(stores.features.latest_rows(0)) == 12
        assert stores.features.latest_rows(3) == ()  # its feature never computed
    generator = daemon.actor("feature-generator")
    assert generator["state"] == "running" and generator["restarts"] == 0


def test_model_is_trained_on_the_active_valid_collection(
    daemon: RunningDaemon, ingest: HttpClient
) -> None:
    items = SAVANNA.outcome_items()
    assert send_items(ingest, "outcomes", items, batch_size=5000).accepted == len(items)

    record = wait_for("a champion", daemon.champion, 60.0, 0.2)
    assert record.feature_collection_id == 1
    trained_on = json.loads(record.lineage)["feature_collection"]["features"]
    assert not BROKEN & set(trained_on)


def test_predictions_by_location_come_from_a_model_on_a_valid_collection(
    daemon: RunningDaemon, predictor: HttpClient
) -> None:
    wait_for("a prediction", lambda: predictor.post("/model", {"location_id": 1})[0] == 200,
             30.0)
    for location in range(1, 13):
        status, answer = predictor.post("/model", {"location_id": location})
        assert status == 200, answer
        assert answer["feature_collection_id"] == 1 and answer["fallback"] is False
    over_thespian = ask_root(daemon.settings, PredictRequest(uuid.uuid4().hex, 2))
    assert isinstance(over_thespian, Prediction) and over_thespian.feature_collection_id == 1


def test_a_missed_deadline_without_a_fallback_model_is_a_clear_503(
    predictor: HttpClient,
) -> None:
    # One microsecond: no model path (a feature lookup and a tree) can make it.
    status, answer = predictor.post("/model", {"location_id": 1, "deadline_ms": 0.001})
    assert status == 503
    assert answer["error"].startswith("deadline_exceeded")
    assert "no fallback model" in answer["error"]


def test_a_missed_deadline_gives_the_fallback_models_answer_marked_fallback(
    daemon: RunningDaemon, predictor: HttpClient
) -> None:
    # A forced second model makes the first a retired model: the fallback.
    result = ask_root(daemon.settings, TrainRequest(uuid.uuid4().hex, force=True), 120.0)
    assert isinstance(result, TrainResult) and result.published, result
    wait_for("the new champion served",
             lambda: predictor.post("/model", {"location_id": 1})[1].get("model_version")
             == result.version, 30.0)
    status, answer = predictor.post("/model", {"location_id": 1, "deadline_ms": 0.001})
    assert status == 200, answer
    assert answer["fallback"] is True
    assert answer["model_version"] != result.version
    assert answer["feature_collection_id"] == 1
    over_thespian = ask_root(daemon.settings,
                             PredictRequest(uuid.uuid4().hex, 1, deadline_ms=0.001))
    assert isinstance(over_thespian, Prediction) and over_thespian.fallback is True
    # With the default deadline the champion answers itself.
    status, answer = predictor.post("/model", {"location_id": 1})
    assert status == 200 and answer["fallback"] is False


def test_one_sparse_batch_judges_no_nan_rate(daemon: RunningDaemon, ingest: HttpClient) -> None:
    """A reading alone in its window (a gateway's late backlog, or the first reading after a
    quiet spell longer than the window): ``trend`` and ``sensor_disagreement`` are NaN in
    every row of that batch. One such batch does not judge their NaN rates: both stay
    valid, the collection stays active, and the rows are written (NaN: missing)."""
    window = daemon.settings.learning.feature_window_ms
    alone = SAVANNA.start_ms - 2 * window  # nothing else within a window of it
    locations = range(1, 13)
    items = [{"sensor_id": "late-gateway", "location_id": loc, "reading_id": f"alone-{loc}",
              "timestamp": alone + loc, "animals_lower": 4, "animals_upper": 9,
              "percent_zebras": 0.5} for loc in locations]
    status, answer = ingest.post("/readings", {"readings": items})
    assert status == 200 and answer["accepted"] == len(items), answer

    def rows_as_of_alone(collection_id: int) -> list[Any]:
        with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
            rows = [stores.features.row_as_of(collection_id, loc, alone + loc + 1)
                    for loc in locations]
        return [r for r, loc in zip(rows, locations, strict=True)
                if r is not None and r.as_of_ms == alone + loc + 1]

    # Collection 0 (no trend, no sensor_disagreement) is written whatever the verdict.
    wait_for("the batch computed", lambda: len(rows_as_of_alone(0)) == len(items), 30.0, 0.2)
    view = features_view(daemon)
    assert view["invalid_features"] == sorted(BROKEN) and view["active"] == 1
    rows = rows_as_of_alone(1)
    assert len(rows) == len(items)
    names = next(c for c in view["collections"] if c["id"] == 1)["features"]
    assert all(math.isnan(row.values[names.index("trend")]) for row in rows)
