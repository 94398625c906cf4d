"""End to end, on a real daemon (multiprocTCPBase) started by the CLI on free ports.

One daemon for the module: the tests run in order and build on each other, as a
user would (ingest, then a model, then predictions, then crashes, then stop).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from daemon.process import ask_root
from learning.models.lineage import facts_fingerprint
from learning.serving.answer import load_serving_model
from messages.protocol import Prediction, PredictRequest
from players.ceiling import holdout_best_auc
from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna, reading_item
from runtime.group import group_members, port_accepts
from storage.facts import FactCursor
from tests.e2e_support import (
    BACKENDS,
    TOKEN,
    RunningDaemon,
    running_daemon,
    scrape,
    storage_section,
    total,
    wait_for,
)

pytestmark = pytest.mark.e2e

SAVANNA = Savanna(seed=7, end_ms=last_midnight_ms())


@pytest.fixture(scope="module", params=BACKENDS)
def daemon(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    # A generous deadline: HTTP and Thespian answers are compared exactly, and a loaded
    # machine must not turn one of them into a (correctly marked) fallback answer.
    # A long freshness bound: a row served from memory can only have come by push (see
    # test_rows_of_a_new_location_are_pushed_and_served_from_memory), however slow the
    # machine; the bound itself is tested with a clock in tests/test_row_table.py.
    sections = {"predict": {"deadline_ms": 5000, "row_freshness_s": 30.0},
                **storage_section(request.param)}
    with running_daemon(tmp_path_factory.mktemp("e2e"), sections, min_outcomes=500) as d:
        yield d


def _reading(**overrides: Any) -> dict[str, Any]:
    item = {"sensor_id": "e2e-sensor", "location_id": 999, "reading_id": uuid.uuid4().hex,
            "timestamp": int(time.time() * 1000) - 1000, "animals_lower": 3,
            "animals_upper": 9, "percent_zebras": 0.5}
    item.update(overrides)
    return item


def test_every_actor_runs_under_the_supervision_tree(daemon: RunningDaemon) -> None:
    status = daemon.status()
    actors = {a["name"]: a for a in status["actors"]}
    for name in ("rml-root", "ingest", "learning", "serving", "collector-1", "collector-2",
                 "feature-generator", "learner", "publisher", "predictor-1", "predictor-2"):
        assert actors[name]["state"] == "running", actors[name]
        assert actors[name]["pid"] in group_members(daemon.pgid)
    assert actors["predictor-1"]["supervisor"] == "serving"
    store = status["store"]
    assert (store["backend"], store["healthy"], store["error"]) == (
        daemon.settings.storage.backend, True, None)


def test_routes_require_a_bearer_token_except_health(daemon: RunningDaemon) -> None:
    anonymous = HttpClient("127.0.0.1", daemon.settings.ingest.port, "")
    status, _, _ = anonymous.request("POST", "/readings", b'{"readings": []}', auth=False)
    assert status == 401
    wrong = HttpClient("127.0.0.1", daemon.settings.ingest.port, "not-the-token")
    assert wrong.request("POST", "/readings", b'{"readings": []}')[0] == 401
    assert anonymous.request("GET", "/health", auth=False)[0] == 200
    predict_anon = HttpClient("127.0.0.1", daemon.settings.predict.port, "")
    assert predict_anon.request("POST", "/model", b'{"location_id": 1}', auth=False)[0] == 401
    for client in (anonymous, wrong, predict_anon):
        client.close()


def test_batch_keeps_good_items_reports_duplicates_and_names_each_error(
    daemon: RunningDaemon, ingest: HttpClient
) -> None:
    good = [_reading() for _ in range(3)]
    bad = [
        _reading(animals_lower=10, animals_upper=2),
        _reading(percent_zebras=1.5),
        _reading(timestamp=int(time.time() * 1000) + 86_400_000),
        _reading(colour="striped"),
        {k: v for k, v in _reading().items() if k != "timestamp"},
        _reading(animals_lower="three"),
    ]
    batch = [good[0], bad[0], good[1], bad[1], dict(good[0]), bad[2], good[2], bad[3], bad[4],
             bad[5]]
    for fmt in ("json", "msgpack"):
        status, answer = ingest.post("/readings", {"readings": batch}, fmt)
        assert status == 200
        rejected = {item["index"]: item["error"] for item in answer["rejected"]}
        assert rejected == {1: "bounds_inverted", 3: "out_of_range", 5: "future_timestamp",
                            7: "unknown_field", 8: "missing_field", 9: "wrong_type"}
        if fmt == "json":
            assert (answer["accepted"], answer["duplicates"]) == (3, 1)
        else:  # the same batch again: every good item is now a duplicate
            assert (answer["accepted"], answer["duplicates"]) == (0, 4)
    with daemon.stores() as stores:
        for item in good:
            stored = stores.facts.get_reading(item["sensor_id"], item["reading_id"])
            assert stored is not None and stored.percent_zebras == item["percent_zebras"]


def test_malformed_body_is_400_and_the_collector_keeps_serving(ingest: HttpClient) -> None:
    status, _, body = ingest.request("POST", "/readings", b'{"readings": [', "application/json")
    assert status == 400 and b"malformed_json" in body
    status, _, _ = ingest.request("POST", "/readings", b"\x00", "text/csv")
    assert status == 415
    assert ingest.post("/readings", {"readings": [_reading()]})[0] == 200


def test_reading_sent_twice_is_stored_once(daemon: RunningDaemon, ingest: HttpClient) -> None:
    item = _reading()
    first = ingest.post("/readings", {"readings": [item]})[1]
    second = ingest.post("/readings", {"readings": [dict(item, animals_upper=50)]})[1]
    assert (first["accepted"], first["duplicates"]) == (1, 0)
    assert (second["accepted"], second["duplicates"]) == (0, 1)
    with daemon.stores() as stores:
        stored = stores.facts.get_reading(item["sensor_id"], item["reading_id"])
        assert stored is not None and stored.animals_upper == 9  # never overwritten


def test_model_is_published_with_full_lineage_near_the_best_achievable_auc(
    daemon: RunningDaemon, ingest: HttpClient
) -> None:
    traffic = SAVANNA.traffic()
    tally = send_items(ingest, "readings", traffic.items, batch_size=1000, fmt="msgpack")
    assert tally.failed_batches == 0
    assert tally.accepted == traffic.n_unique_valid
    assert tally.duplicates == traffic.n_duplicates
    assert sum(tally.rejected.values()) == len(traffic.malformed)
    outcomes = send_items(ingest, "outcomes", SAVANNA.outcome_items(), batch_size=10_000)
    assert outcomes.accepted == len(SAVANNA.outcomes())

    def champion() -> Any:
        with daemon.stores() as stores:
            record = stores.registry.champion()
            if record and json.loads(record.lineage)["facts"]["outcomes"] == outcomes.accepted:
                return record, stores.facts.all_readings(), stores.facts.all_outcomes()
        return None

    record, readings, stored_outcomes = wait_for("a champion trained on every outcome",
                                                 champion, 120.0, 0.2)
    lineage = json.loads(record.lineage)
    fingerprint = facts_fingerprint(readings, stored_outcomes)
    assert lineage["facts"] == {
        "readings": fingerprint.readings, "outcomes": fingerprint.outcomes,
        "first_timestamp": fingerprint.first_timestamp,
        "last_timestamp": fingerprint.last_timestamp,
        "content_hash": fingerprint.content_hash,
    }
    assert lineage["feature_collection"]["id"] == record.feature_collection_id
    assert lineage["feature_collection"]["features"]
    assert lineage["job"]["model_type"] == "decision_tree"
    assert lineage["code_version"].startswith("0.1.0+")
    auc = dict(record.metrics)["roc_auc"]
    assert lineage["metrics"]["roc_auc"] == auc
    best = holdout_best_auc(SAVANNA, lineage["job"])
    assert best - auc < 0.1, f"holdout ROC AUC {auc:.3f} vs best achievable {best:.3f}"


def test_http_and_thespian_predictions_agree(daemon: RunningDaemon,
                                             predictor: HttpClient) -> None:
    wait_for("features for location 1",
             lambda: predictor.post("/model", {"location_id": 1})[0] == 200, 30.0)
    for location in range(1, 6):
        status, over_http = predictor.post("/model", {"location_id": location})
        assert status == 200
        over_thespian = ask_root(daemon.settings, PredictRequest(uuid.uuid4().hex, location))
        assert isinstance(over_thespian, Prediction)
        assert over_thespian.probability == pytest.approx(over_http["probability"], abs=1e-12)
        assert over_thespian.model_version == over_http["model_version"]
        assert over_thespian.label == over_http["label"]
        assert over_http["fallback"] is False


def _samples(body: bytes, name: str) -> list[Sample]:
    """The samples called ``name`` in a Prometheus text exposition."""
    return [sample for family in text_string_to_metric_families(body.decode())
            for sample in family.samples if sample.name == name]


def _row_counts(daemon: RunningDaemon) -> dict[str, tuple[int, int]]:
    """Each running predictor's rows looked up so far, (from memory, from the store), read
    from its ``/metrics`` (fresh connections until every replica has answered)."""
    names = {a["name"] for a in daemon.status()["actors"]
             if a["role"] == "predictor" and a["state"] == "running"}
    counts: dict[str, tuple[int, int]] = {}

    def scrape() -> bool:
        client = HttpClient("127.0.0.1", daemon.settings.predict.port, TOKEN)
        try:
            status, _, body = client.request("GET", "/metrics")
        finally:
            client.close()
        assert status == 200
        found: dict[str, dict[str, int]] = {}
        for sample in _samples(body, "rml_prediction_rows_total"):
            found.setdefault(sample.labels["predictor"], {})[sample.labels["source"]] = int(
                sample.value)
        for name, by_source in found.items():
            counts[name] = (by_source.get("memory", 0), by_source.get("store", 0))
        return names <= counts.keys()

    wait_for("every predictor's /metrics", scrape, 30.0, 0.0)
    return counts


def test_rows_of_a_new_location_are_pushed_and_served_from_memory(
        daemon: RunningDaemon, ingest: HttpClient, predictor: HttpClient) -> None:
    champion = daemon.champion()
    assert champion is not None
    location = 4242  # never seen: no predictor's table held it when it was loaded
    status, unknown = predictor.post("/model", {"location_id": location})
    assert status == 400 and unknown["error"].startswith("unknown_location")
    now = int(time.time() * 1000)
    readings = [_reading(location_id=location, timestamp=now - 500 * n,
                         animals_lower=2 + n, animals_upper=12 + n) for n in range(6)]
    assert ingest.post("/readings", {"readings": readings})[1]["accepted"] == 6

    def stored_row() -> Any:
        with daemon.stores() as stores:
            return stores.features.latest_row(champion.feature_collection_id, location)

    row = wait_for("the feature generator's row for the new location", stored_row, 30.0)
    with daemon.stores() as stores:
        model = load_serving_model(champion, stores.registry.compiled_form(champion.version),
                                   lambda: stores.registry.artifact(champion.version))

    def answered_from_memory() -> bool:
        before = _row_counts(daemon)
        for _ in range(10):
            status, answer = predictor.post("/model", {"location_id": location})
            assert status == 200, answer
            assert answer["probability"] == pytest.approx(model.predict_one(row.values),
                                                          abs=1e-12)

        def counted() -> dict[str, tuple[int, int]] | None:  # predictors flush every second
            after = _row_counts(daemon)
            seen = sum(sum(after[n]) - sum(before.get(n, (0, 0))) for n in after)
            return after if seen >= 10 else None

        after = wait_for("the lookups counted in /metrics", counted, 10.0, 0.05)
        store_reads = sum(after[n][1] - before.get(n, (0, 0))[1] for n in after)
        memory_reads = sum(after[n][0] - before.get(n, (0, 0))[0] for n in after)
        return store_reads == 0 and memory_reads >= 10

    # The push may still be on its way (meanwhile the store answers, as the truth): then every
    # predictor holds the row, and the store is read no more for it.
    wait_for("the new location's row served from the predictors' memory",
             answered_from_memory, 30.0, 0.1)


def test_predictors_serve_compiled_forms_without_loading_scikit_learn(
        daemon: RunningDaemon, predictor: HttpClient) -> None:
    wait_for("a prediction", lambda: predictor.post("/model", {"location_id": 1})[0] == 200,
             30.0)
    predictors = [a for a in daemon.status()["actors"] if a["role"] == "predictor"]
    assert len(predictors) >= 2
    for actor in predictors:  # a lean process: a kill tears it down fast
        maps = Path(f"/proc/{actor['pid']}/maps").read_text()
        assert "numpy" in maps and "sklearn" not in maps, actor["name"]


def test_prediction_from_explicit_features_and_bad_input(predictor: HttpClient) -> None:
    status, answer = predictor.post("/model", {"location_id": 1})
    assert status == 200
    status, bad = predictor.post("/model", {"features": {"animal_estimate": 10.0}})
    assert status == 400 and bad["error"].startswith("missing_feature")
    status, bad = predictor.post("/model", {"location_id": "one"})
    assert status == 400
    status, unknown = predictor.post("/model", {"location_id": 123456})
    assert status == 400 and unknown["error"].startswith("unknown_location")


def test_a_msgpack_request_is_answered_in_msgpack(daemon: RunningDaemon,
                                                  predictor: HttpClient) -> None:
    as_json = predictor.post("/model", {"location_id": 1})[1]
    for body, status in (({"location_id": 1}, 200), ({"location_id": 123456}, 400)):
        request = urllib.request.Request(
            f"http://127.0.0.1:{daemon.settings.predict.port}/model",
            data=msgpack.packb(body), headers={"Authorization": f"Bearer {TOKEN}",
                                               "Content-Type": "application/msgpack"})
        try:
            answer = urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as refused:
            answer = refused
        assert answer.status == status
        if status == 200:
            assert answer.headers["Content-Type"] == "application/msgpack"
            assert msgpack.unpackb(answer.read()) == as_json
        else:  # errors are JSON, whatever the request's format (as ingest's)
            assert "unknown_location" in json.loads(answer.read())["error"]


# The node's metrics scraped before the kills below, to compare with after them.
_EARLY: dict[str, list[Sample]] = {}

#: Every family the metrics port shows on a daemon that has ingested, trained and answered.
FAMILIES = (
    "rml_ingest_requests", "rml_ingest_request_seconds", "rml_ingest_unavailable",
    "rml_ingest_items", "rml_ingest_rejected_items", "rml_ingest_batch_items",
    "rml_predict_requests", "rml_predict_request_seconds", "rml_predictions",
    "rml_prediction_fallbacks",
    "rml_prediction_deadline_misses", "rml_champion_version",
    "rml_champion_feature_collection", "rml_prediction_rows",
    "rml_feature_rows_confirmed_age_seconds", "rml_actor_restarts", "rml_actor_hangs",
    "rml_supervisor_escalations", "rml_dead_letters", "rml_standby_promotions",
    "rml_training_runs", "rml_training_fit_seconds", "rml_champion_roc_auc",
    "rml_store_commit_seconds",
)


def _monotonic(samples: dict[str, list[Sample]]) -> dict[tuple[str, tuple[Any, ...]], float]:
    """Every sample that may only grow (counters, histogram buckets, counts and sums)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in samples.values() for s in family
            if s.name.endswith(("_total", "_bucket", "_count", "_sum"))}


def test_metrics_port_shows_the_whole_node_behind_a_token(daemon: RunningDaemon) -> None:
    families = scrape(daemon.settings)
    missing = [name for name in FAMILIES if name not in families]
    assert not missing, f"families missing from the scrape: {missing}"
    champion = daemon.champion()
    assert champion is not None
    assert total(families, "rml_champion_version") == champion.version
    assert total(families, "rml_ingest_items_total", outcome="accepted") > 0
    assert total(families, "rml_training_runs_total") >= 1
    # The predictors' GET /metrics is the same view (the families of the whole node).
    assert set(scrape(daemon.settings, port=daemon.settings.predict.port)) >= set(FAMILIES)
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        request = urllib.request.Request(
            f"http://127.0.0.1:{daemon.settings.metrics.port}/metrics", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
    _EARLY.update(families)


def test_killed_predictor_answers_again_with_the_same_model(
    daemon: RunningDaemon, predictor: HttpClient
) -> None:
    version = predictor.post("/model", {"location_id": 2})[1]["model_version"]
    before = daemon.actor("predictor-1")
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_for("predictor-1 replaced",
                     lambda: (a := daemon.actor("predictor-1"))["state"] == "running"
                     and a["pid"] != before["pid"] and a, 30.0, 0.05)
    assert after["restarts"] == before["restarts"] + 1
    # Only the replacement (and predictor-2) serve the port now; every answer has the model.
    for _ in range(20):
        status, answer = predictor.post("/model", {"location_id": 2})
        assert status == 200 and answer["model_version"] == version
    assert isinstance(ask_root(daemon.settings, PredictRequest(uuid.uuid4().hex, 2)), Prediction)


def test_killed_collector_answers_again_and_loses_nothing(
    daemon: RunningDaemon, ingest: HttpClient
) -> None:
    before = daemon.actor("collector-1")
    os.kill(before["pid"], signal.SIGKILL)
    wait_for("collector-1 replaced",
             lambda: (a := daemon.actor("collector-1"))["state"] == "running"
             and a["pid"] != before["pid"], 30.0, 0.05)
    items = [reading_item(r) for r in SAVANNA.readings()[:500]]
    answer = ingest.post("/readings", {"readings": items})[1]
    assert (answer["accepted"], answer["duplicates"]) == (0, 500)


def test_collectors_killed_mid_batch_lose_and_double_nothing(
    daemon: RunningDaemon, ingest: HttpClient
) -> None:
    now = int(time.time() * 1000)
    items = [_reading(sensor_id="mid-batch", location_id=998, reading_id=f"m{i}",
                      timestamp=now - 1000 - i) for i in range(5_000)]
    collectors = {name: daemon.actor(name)["pid"] for name in ("collector-1", "collector-2")}
    answers: list[dict[str, Any]] = []

    def gateway() -> None:  # sends until acknowledged, as a field gateway does
        client = HttpClient("127.0.0.1", daemon.settings.ingest.port, TOKEN, timeout_s=60.0)
        deadline = time.monotonic() + 90.0
        try:
            while time.monotonic() < deadline and not answers:
                try:
                    status, answer = client.post("/readings", {"readings": items})
                except OSError:
                    client.close()
                    continue
                if status == 200:
                    answers.append(answer)
        finally:
            client.close()

    sender = threading.Thread(target=gateway)
    sender.start()

    def writing() -> bool:
        with daemon.stores() as stores:
            return bool(answers) or stores.facts.get_reading("mid-batch", "m0") is not None

    try:
        wait_for("the batch being written", writing, 30.0, 0.002)
        for pid in collectors.values():
            os.kill(pid, signal.SIGKILL)
    finally:
        sender.join(120.0)
    assert answers, "the batch was never acknowledged"
    assert answers[0]["accepted"] + answers[0]["duplicates"] == len(items)
    def replaced() -> bool:
        now = {name: daemon.actor(name) for name in collectors}
        return all(a["pid"] != collectors[n] and a["state"] == "running" for n, a in now.items())

    wait_for("both collectors replaced", replaced, 30.0, 0.05)
    again = ingest.post("/readings", {"readings": items})[1]
    assert (again["accepted"], again["duplicates"]) == (0, len(items))
    with daemon.stores() as stores:
        stored = [r for r in stores.facts.all_readings() if r.sensor_id == "mid-batch"]
        paged: list[str] = []
        cursor = FactCursor()
        while (page := stores.facts.readings_since(cursor, 2_000)).items:
            paged += [r.reading_id for r in page.items if r.sensor_id == "mid-batch"]
            cursor = page.cursor
    assert sorted(r.reading_id for r in stored) == sorted(item["reading_id"] for item in items)
    assert sorted(paged) == sorted(item["reading_id"] for item in items)  # each seen once


def test_metrics_sum_the_replicas_and_never_go_back_after_their_restarts(
        daemon: RunningDaemon) -> None:
    assert _EARLY, "runs after test_metrics_port_shows_the_whole_node_behind_a_token"
    before = scrape(daemon.settings)
    for name in ("predictor-1", "collector-1"):  # both killed above
        assert total(before, "rml_actor_restarts_total", actor=name, cause="exited") >= 1
    early, now = _monotonic(_EARLY), _monotonic(before)
    fell = {key: (value, now.get(key)) for key, value in early.items()
            if now.get(key, -1.0) < value}
    assert not fell, f"samples that went back after the restarts: {fell}"
    # Scraped twice more under load (predictions and readings): still never back.
    stop = threading.Event()
    answered: list[int] = []  # predictions answered by the champion (outcome "ok")

    def load() -> None:
        predict = HttpClient("127.0.0.1", daemon.settings.predict.port, TOKEN)
        ingest = HttpClient("127.0.0.1", daemon.settings.ingest.port, TOKEN)
        try:
            while not stop.is_set():
                status, answer = predict.post("/model", {"location_id": 3})
                if status == 200 and not answer["fallback"]:
                    answered.append(1)
                ingest.post("/readings", {"readings": [_reading(location_id=998)]})
        finally:
            predict.close()
            ingest.close()

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        first = _monotonic(scrape(daemon.settings))
        wait_for("the load counted", lambda: total(scrape(daemon.settings),
                 "rml_ingest_items_total", outcome="accepted") > total(
                 before, "rml_ingest_items_total", outcome="accepted"), 15.0, 0.1)
        second = _monotonic(scrape(daemon.settings))
    finally:
        stop.set()
        loader.join(10.0)
    fell = {key: (value, second.get(key)) for key, value in first.items()
            if second.get(key, -1.0) < value}
    assert not fell, f"samples that went back under load: {fell}"
    ok = total(before, "rml_predictions_total", outcome="ok") + len(answered)
    wait_for("the load's predictions counted", lambda: total(
        scrape(daemon.settings), "rml_predictions_total", outcome="ok") >= ok, 15.0, 0.1)
    # 40 predictions on fresh connections (spread over both replicas): counted once each.
    for i in range(10):
        client = HttpClient("127.0.0.1", daemon.settings.predict.port, TOKEN)
        try:
            for _ in range(4):
                status, answer = client.post("/model", {"location_id": 1 + i % 5})
                assert status == 200, answer
        finally:
            client.close()
    counted = wait_for("the 40 predictions counted", lambda: (
        n if (n := total(scrape(daemon.settings), "rml_predictions_total", outcome="ok"))
        >= ok + 40 else None), 15.0, 0.1)
    assert counted == ok + 40
    by_predictor = {s.labels["predictor"] for s in scrape(daemon.settings)[
        "rml_prediction_rows"] if s.name == "rml_prediction_rows_total" and s.value > 0}
    assert {"predictor-1", "predictor-2"} <= by_predictor


def test_stop_leaves_no_process_and_no_bound_port(daemon: RunningDaemon) -> None:
    done = daemon.rml("stop")
    assert done.returncode == 0, done.stderr
    assert "no process and no port left" in done.stdout
    assert group_members(daemon.pgid) == []
    assert not any(port_accepts("127.0.0.1", p, 0.2)
                   for p in (*daemon.ports(), daemon.settings.metrics.port))
    assert daemon.rml("status").returncode == 3


def test_stored_readings_match_the_simulator(daemon: RunningDaemon) -> None:
    with daemon.stores() as stores:
        stored = {r.key for r in stores.facts.all_readings()
                  if r.sensor_id not in ("e2e-sensor", "mid-batch")}
    expected = {r.key for r in SAVANNA.readings()}
    assert stored == expected


