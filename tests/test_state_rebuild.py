"""A restarted actor rebuilds its state from the stores, never from memory: one proof per actor.

One real daemon for the module (``running_daemon``), fed by the savanna simulator.
The tests run in order and build on each other: readings (collectors), features
(feature generator), outcomes and models (learner), the publish gate (publisher),
then predictions (predictors). Each SIGKILLs the actor it is about (its supervisor
replaces it at once) and shows that the replacement carried on from what the stores
hold.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from actors.feature_generator import CURSOR
from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna, outcome_item, reading_item
from storage import open_sqlite_stores
from storage.facts import FactCursor
from storage.sqlite.facts import SQLITE_LOG
from tests.e2e_support import TOKEN, RunningDaemon, running_daemon, wait_for

pytestmark = pytest.mark.e2e

MIN_OUTCOMES = 400
RETRAIN_EVERY = 400
WAIT_S = 30.0
SAVANNA = Savanna(seed=11, n_locations=12, hours=72, outcomes_per_hour=2.0,
                  end_ms=last_midnight_ms())
OUTCOMES = sorted(SAVANNA.outcomes(), key=lambda o: o.timestamp)
# Readings of the first locations go in before the feature generator is killed, those
# of the last ones after: only the replacement can have turned the latter into features.
LOCATIONS = frozenset(range(1, 13))
OLD_LOCATIONS = frozenset(range(1, 10))
ERASED = 1


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    with running_daemon(tmp_path_factory.mktemp("rebuild"), min_outcomes=MIN_OUTCOMES,
                        retrain_every_outcomes=RETRAIN_EVERY) as d:
        yield d


def replace_by_kill(daemon: RunningDaemon, *names: str) -> dict[str, dict[str, Any]]:
    """SIGKILL the named actors; their replacements, once each runs under a new pid."""
    before = {name: daemon.actor(name) for name in names}
    for info in before.values():
        os.kill(info["pid"], signal.SIGKILL)

    def replaced() -> dict[str, dict[str, Any]] | None:
        now = {a["name"]: a for a in daemon.status()["actors"]}
        if all(now[n]["pid"] != before[n]["pid"] and now[n]["state"] == "running"
               for n in names):
            return {n: now[n] for n in names}
        return None

    after: dict[str, dict[str, Any]] = wait_for(f"{', '.join(names)} replaced", replaced, WAIT_S)
    for name in names:
        assert after[name]["restarts"] == before[name]["restarts"] + 1
    return after


def max_reading_seq(daemon: RunningDaemon) -> int:
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        page = stores.facts.readings_since(FactCursor(), 1_000_000)
    return page.cursor.position(SQLITE_LOG)[0]


@contextmanager
def features_db(daemon: RunningDaemon) -> Iterator[sqlite3.Connection]:
    """A connection to the feature store's file, committed and closed afterwards."""
    conn = sqlite3.connect(daemon.settings.data_path / "features.sqlite", timeout=10.0)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def cursor_log(daemon: RunningDaemon) -> list[int]:
    """Every position the feature generator recorded in its cursor, in order."""
    with features_db(daemon) as conn:
        rows = conn.execute("SELECT cursor FROM cursors WHERE name = ? ORDER BY seq",
                            (CURSOR,)).fetchall()
    return [FactCursor.from_text(r[0]).position(SQLITE_LOG)[0] for r in rows]


def feature_locations(daemon: RunningDaemon) -> set[int]:
    with features_db(daemon) as conn:
        return {int(r[0]) for r in conn.execute("SELECT DISTINCT location_id FROM feature_rows")}


def trained_on(daemon: RunningDaemon) -> list[int]:
    """For each registered version, in order, how many outcomes it was trained on."""
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        return [int(json.loads(r.lineage)["facts"]["outcomes"])
                for r in stores.registry.versions()]


def outcomes_stored(daemon: RunningDaemon) -> int:
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        return int(stores.facts.counts().outcomes)


def send_outcomes(ingest: HttpClient, daemon: RunningDaemon, start: int, end: int) -> None:
    """Send outcomes ``[start, end)`` as one batch and wait until they are stored."""
    tally = send_items(ingest, "outcomes", [outcome_item(o) for o in OUTCOMES[start:end]],
                       batch_size=end - start)
    assert tally.accepted == end - start
    assert outcomes_stored(daemon) == end


# --- the tests, in order ----------------------------------------------------------------


def test_restarted_collectors_answer_and_a_resent_batch_is_all_duplicates(
    daemon: RunningDaemon, ingest: HttpClient
) -> None:
    old = [reading_item(r) for r in SAVANNA.readings() if r.location_id in OLD_LOCATIONS]
    assert send_items(ingest, "readings", old).accepted == len(old)

    replace_by_kill(daemon, "collector-1", "collector-2")

    again = send_items(ingest, "readings", old)
    assert (again.accepted, again.duplicates, again.failed_batches) == (0, len(old), 0)


def test_restarted_feature_generator_resumes_from_its_cursor(
    daemon: RunningDaemon, ingest: HttpClient
) -> None:
    caught_up = max_reading_seq(daemon)
    wait_for("features of the first readings",
             lambda: cursor_log(daemon)[-1:] == [caught_up], WAIT_S)
    assert feature_locations(daemon) == OLD_LOCATIONS
    generator = daemon.actor("feature-generator")
    # Stop it, then erase one location's rows (a test-only edit of an insert-only
    # table): a replacement that started again from 0 would write them again.
    os.kill(generator["pid"], signal.SIGSTOP)
    try:
        with features_db(daemon) as conn:
            conn.execute("DELETE FROM feature_rows WHERE location_id = ?", (ERASED,))
    finally:
        replace_by_kill(daemon, "feature-generator")  # SIGKILL ends a stopped process too
    log_before = cursor_log(daemon)

    new = [reading_item(r) for r in SAVANNA.readings() if r.location_id not in OLD_LOCATIONS]
    assert send_items(ingest, "readings", new).accepted == len(new)

    newest = max_reading_seq(daemon)
    wait_for("features of the new readings", lambda: cursor_log(daemon)[-1] == newest,
             WAIT_S)
    log = cursor_log(daemon)
    assert log[: len(log_before)] == log_before
    assert all(value > caught_up for value in log[len(log_before):])
    assert feature_locations(daemon) == LOCATIONS - {ERASED}, (
        "erased rows came back: the replacement reprocessed readings from 0")


def test_restarted_learner_does_not_retrain_on_the_same_outcomes(
    daemon: RunningDaemon, ingest: HttpClient
) -> None:
    first = MIN_OUTCOMES + 100
    send_outcomes(ingest, daemon, 0, first)
    wait_for("the first model", lambda: trained_on(daemon), WAIT_S)
    assert trained_on(daemon) == [first]

    replaced = replace_by_kill(daemon, "learner")
    # Fewer new outcomes than retrain_every_outcomes: a learner that forgot (rather than
    # read back from the registry) what it trained on would train again now.
    below = first + RETRAIN_EVERY // 2
    send_outcomes(ingest, daemon, first, below)
    # Let the replacement check a few times (every check_interval_s, and on each hint):
    # a negative can only be shown over a span of time.
    checked_at = time.monotonic() + 3 * daemon.settings.learning.check_interval_s
    wait_for("the replacement's checks", lambda: time.monotonic() > checked_at, WAIT_S)
    assert daemon.actor("learner")["pid"] == replaced["learner"]["pid"]
    assert trained_on(daemon) == [first]

    send_outcomes(ingest, daemon, below, first + RETRAIN_EVERY)

    wait_for("the second model", lambda: len(trained_on(daemon)) == 2, WAIT_S)
    assert trained_on(daemon) == [first, first + RETRAIN_EVERY]



def test_candidate_registered_while_the_publisher_was_down_is_judged_after_restart(
    daemon: RunningDaemon,
) -> None:
    wait_for("the learner's candidates judged", lambda: not candidates(daemon), WAIT_S)
    publisher = daemon.actor("publisher")
    os.kill(publisher["pid"], signal.SIGSTOP)  # down: whatever it would do, it cannot
    try:
        with open_sqlite_stores(daemon.settings.data_path) as stores:
            newest = stores.registry.versions()[-1]
            # A candidate that beats anything (ROC AUC 0.99, no champion score to meet),
            # registered behind the publisher's back: nobody tells it.
            version = stores.registry.register(
                feature_collection_id=newest.feature_collection_id,
                job=json.loads(newest.job), metrics={"roc_auc": 0.99},
                lineage=json.loads(newest.lineage),
                artifact=stores.registry.artifact(newest.version),
                created_at_ms=int(time.time() * 1000),
            )
        assert candidates(daemon) == [version]
    finally:
        replace_by_kill(daemon, "publisher")

    wait_for("the candidate judged", lambda: not candidates(daemon), WAIT_S)
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        champion = stores.registry.champion()
    assert champion is not None and champion.version == version


def test_restarted_predictors_serve_the_champion_at_once(daemon: RunningDaemon) -> None:
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        champion = stores.registry.champion()
    assert champion is not None

    replace_by_kill(daemon, "predictor-1", "predictor-2")

    # Both replaced: whichever listener the kernel picks, a replacement answers.
    for location in sorted(LOCATIONS - {ERASED}) * 3:
        status, answer = predict(daemon.settings.predict.port, location)
        assert status == 200, answer
        assert answer["model_version"] == champion.version
        assert not answer["fallback"]


def candidates(daemon: RunningDaemon) -> list[int]:
    with open_sqlite_stores(daemon.settings.data_path, read_only=True) as stores:
        return [r.version for r in stores.registry.versions() if r.status == "candidate"]


def predict(port: int, location_id: int) -> tuple[int, Any]:
    """``POST /model`` on a fresh connection (so the kernel picks a listener each time)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    try:
        conn.request("POST", "/model", json.dumps({"location_id": location_id}),
                     {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()
