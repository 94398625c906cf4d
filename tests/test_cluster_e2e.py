"""More than one node, end to end on one machine: a leader and members, each a real daemon
(its own admin on its own port, its own process group and HTTP ports), sharing one store.

The two-node tests run in order and build on each other, as an operator would: join,
ingest through the member, train on the leader, predict through the member, lose the
member mid-ingest, start it again.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import load_settings
from players.demo import last_midnight_ms
from players.gateway import HttpClient, send_items
from players.simulator import Savanna
from runtime.group import group_members
from tests.e2e_support import (
    BACKENDS,
    TOKEN,
    Node,
    replica_names,
    replicas_on,
    running_cluster,
    storage_section,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.e2e

SAVANNA = Savanna(seed=11, end_ms=last_midnight_ms())


@pytest.fixture(scope="module", params=BACKENDS)
def nodes(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    sections = {"predict": {"deadline_ms": 5000}, **storage_section(request.param)}
    with running_cluster(tmp_path_factory.mktemp("cluster"), ("a", "b"), sections,
                         min_outcomes=500) as started:
        yield started


def _client(node: Node, kind: str, timeout_s: float = 30.0) -> HttpClient:
    port = node.settings.ingest.port if kind == "ingest" else node.settings.predict.port
    return HttpClient("127.0.0.1", port, TOKEN, timeout_s=timeout_s)


def test_the_member_joins_and_either_host_lists_nodes_and_where_each_actor_runs(
        nodes: list[Node]) -> None:
    leader, member = nodes
    for asked in (leader, member):
        status = asked.status()
        assert status["node"] == asked.name
        listed = {n["name"]: n for n in status["nodes"]}
        assert set(listed) == {"a", "b"}
        for entry in listed.values():
            assert {"name", "address", "roles", "joined_at_ms", "last_seen_ms"} <= set(entry)
            assert entry["state"] == "up" and entry["joined_at_ms"] > 0
        assert listed["a"]["leader"] and not listed["b"]["leader"]
        assert listed["b"]["roles"] == ["collector", "predictor"]
        actors = {a["name"]: a for a in status["actors"]}
        assert actors["learner"]["node"] == "a" and actors["rml-root"]["node"] == "a"
    assert replicas_on(status, "b") == replica_names(member)
    # The member's replicas are processes of the member's own group, the rest the leader's.
    assert member.pgid is not None and leader.pgid is not None
    for actor in status["actors"]:
        if actor["state"] == "running" and actor["pid"]:
            group = member.pgid if actor["node"] == "b" else leader.pgid
            assert actor["pid"] in group_members(group), actor
    log = (member.settings.log_dir / "rml.log").read_text().splitlines()
    assert any(json.loads(line).get("node") == "b" and json.loads(line).get("actor") ==
               "collector-1@b" for line in log)


def test_readings_sent_to_the_member_reach_the_leaders_learner(nodes: list[Node]) -> None:
    leader, member = nodes
    ingest = _client(member, "ingest", 60.0)
    try:
        traffic = SAVANNA.traffic()
        tally = send_items(ingest, "readings", traffic.items, batch_size=1000, fmt="msgpack")
        assert tally.failed_batches == 0 and tally.accepted == traffic.n_unique_valid
        outcomes = send_items(ingest, "outcomes", SAVANNA.outcome_items(), batch_size=10_000)
        assert outcomes.accepted == len(SAVANNA.outcomes())
    finally:
        ingest.close()

    def champion() -> Any:
        with leader.stores() as stores:
            record = stores.registry.champion()
            if record and json.loads(record.lineage)["facts"]["outcomes"] == outcomes.accepted:
                return record
        return None

    record = wait_for("a champion trained on every outcome sent to the member", champion,
                      120.0, 0.2)
    assert dict(record.metrics)["roc_auc"] > 0.7


def test_the_members_predictors_serve_the_model_trained_on_the_leader(
        nodes: list[Node]) -> None:
    leader, member = nodes
    with leader.stores() as stores:
        champion = stores.registry.champion()
    assert champion is not None
    location = 1
    answers = {}
    for node in (member, leader):
        client = _client(node, "predict")
        try:
            answers[node.name] = wait_for(
                f"{node.name}'s predictors serving version {champion.version}",
                functools.partial(_serving, client, location, champion.version), 30.0, 0.1)
        finally:
            client.close()
    assert answers["b"]["model_version"] == answers["a"]["model_version"] == champion.version
    assert answers["b"]["probability"] == pytest.approx(answers["a"]["probability"])


def test_a_killed_member_predictor_is_replaced_by_the_members_own_standby(
        nodes: list[Node]) -> None:
    leader, member = nodes
    before = {a["name"]: a for a in leader.status()["actors"]}
    victim, spare = before["predictor-1@b"], before["predictor-standby-1@b"]
    assert spare["node"] == "b" and spare["state"] == "standby"
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced() -> dict[str, Any] | None:
        now = {a["name"]: a for a in leader.status()["actors"]}
        after = now["predictor-1@b"]
        return now if after["state"] == "running" and after["pid"] != victim["pid"] else None

    now = wait_for("predictor-1@b replaced", replaced, 30.0, 0.05)
    assert now["predictor-1@b"]["pid"] == spare["pid"] and now["predictor-1@b"]["node"] == "b"
    log = (leader.settings.log_dir / "rml.log").read_text().splitlines()
    assert any('"child_replaced"' in line and '"predictor-1@b"' in line and '"standby"' in line
               for line in log)
    wait_for("a new standby on b", lambda: any(
        a["name"] == "predictor-standby-1@b" and a["state"] == "standby" and a["node"] == "b"
        for a in leader.status()["actors"]), 30.0, 0.1)


def test_a_member_killed_mid_ingest_loses_nothing_and_its_replicas_run_on_the_leader(
        nodes: list[Node]) -> None:
    leader, member = nodes
    now = int(time.time() * 1000)
    batches = [[{"sensor_id": "failover", "location_id": 997, "reading_id": f"f{b}-{i}",
                 "timestamp": now - 10_000 + b, "animals_lower": 2, "animals_upper": 6,
                 "percent_zebras": 0.4} for i in range(500)] for b in range(40)]
    acked: list[dict[str, Any]] = []
    via: list[str] = []
    predictions = {"answered": 0, "unanswered": 0}
    stop_predicting = threading.Event()

    def gateway() -> None:
        """Sends each batch to the member until acknowledged; on a refused connection it
        fails over to the leader's port, as a gateway configured with both does."""
        order = [member, leader]
        for batch in batches:
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline:
                client = _client(order[0], "ingest")
                try:
                    status, answer = client.post("/readings", {"readings": batch})
                except OSError:
                    status, answer = 0, {}
                finally:
                    client.close()
                if status == 200:
                    assert answer["accepted"] + answer["duplicates"] == len(batch)
                    acked.extend(batch)
                    via.append(order[0].name)
                    break
                order = order[::-1] if status == 0 else order
                time.sleep(0.01)

    def predict() -> None:
        location = 1
        while not stop_predicting.is_set():
            for node in (member, leader):  # the member first, the leader when it is gone
                client = _client(node, "predict", 5.0)
                try:
                    if client.post("/model", {"location_id": location})[0] == 200:
                        predictions["answered"] += 1
                        break
                except OSError:
                    pass
                finally:
                    client.close()
            else:
                predictions["unanswered"] += 1
            time.sleep(0.005)

    sender = threading.Thread(target=gateway)
    asker = threading.Thread(target=predict)
    sender.start()
    asker.start()
    try:
        wait_for("batches acknowledged by the member", lambda: len(via) >= 3, 60.0, 0.005)
        member.kill()
        killed_at = time.monotonic()
        sender.join(180.0)
        assert not sender.is_alive()

        def replaced() -> bool:
            return replica_names(member) <= replicas_on(leader.status(), "a")

        wait_for("the member's replicas running on the leader", replaced, 60.0, 0.1)
        replaced_s = time.monotonic() - killed_at
    finally:
        stop_predicting.set()
        sender.join(180.0)
        asker.join(30.0)
    assert len(acked) == sum(map(len, batches))
    assert "b" in via and "a" in via  # some acknowledged by each side of the kill
    with leader.stores() as stores:
        stored = {r.reading_id for r in stores.facts.all_readings() if r.sensor_id == "failover"}
    assert stored == {item["reading_id"] for item in acked}  # nothing acknowledged is lost
    again = _client(leader, "ingest")
    try:
        answer = again.post("/readings", {"readings": [i for b in batches for i in b]})[1]
    finally:
        again.close()
    assert (answer["accepted"], answer["duplicates"]) == (0, len(acked))  # none stored twice
    assert predictions["answered"] > 0 and predictions["unanswered"] == 0, predictions
    status = leader.status()
    assert {n["name"]: n["state"] for n in status["nodes"]}["b"] == "down"
    assert replaced_s < 30.0


def test_the_member_started_again_rejoins_and_takes_its_replicas_back(
        nodes: list[Node]) -> None:
    leader, member = nodes
    member.start()
    wait_for("the member's replicas back home", lambda: replicas_on(
        leader.status(), "b") == replica_names(member), 60.0, 0.1)
    status = member.status()
    assert {n["name"]: n["state"] for n in status["nodes"]} == {"a": "up", "b": "up"}
    # The leader runs its own replicas again, and no more.
    assert all("@b" not in name for name in replicas_on(status, "a"))


def test_a_node_on_another_store_is_refused_and_left_not_running(
        nodes: list[Node], tmp_path: Path) -> None:
    leader = nodes[0]
    config = write_config(tmp_path, sections={"cluster": {
        "node_name": "x", "join": f"127.0.0.1:{leader.settings.actor_system.admin_port}",
        "roles": ["predictor"]}})  # its data_dir is its own: not the leader's store
    stranger = Node("x", config, load_settings(config, environ={}))
    done = stranger.rml("start")
    assert done.returncode != 0 and "refused node x" in done.stderr, done.stderr
    assert "store" in done.stderr
    assert not any(a["node"] == "x" for a in leader.status()["actors"])
    stranger.stop()  # proves nothing of it is left: no process, no port


def test_a_leader_killed_and_started_again_takes_the_member_back(nodes: list[Node]) -> None:
    leader, member = nodes
    before = {a["name"]: a["pid"] for a in leader.status()["actors"] if a["node"] == "b"}
    leader.kill()
    # The member keeps serving what it has: its replicas outlive the leader.
    client = _client(member, "predict")
    try:
        assert client.post("/model", {"location_id": 1})[0] == 200
    finally:
        client.close()
    leader.start()

    def fresh_replicas() -> bool:
        now = {a["name"]: a["pid"] for a in leader.status()["actors"]
               if a["node"] == "b" and a["state"] == "running"}
        return set(now) == replica_names(member) and not set(now.values()) & set(
            before.values())

    wait_for("fresh replicas on the member, placed by the new leader", fresh_replicas,
             60.0, 0.1)
    assert member.pgid is not None
    workers = [pid for pid in group_members(member.pgid)
               if Path(f"/proc/{pid}/comm").read_text().strip() in ("rml:collector",
                                                                     "rml:predictor")]
    spares = member.settings.supervision.policy("serving").standby  # its warm standbys
    assert len(workers) == len(replica_names(member)) + spares  # the old tree's were ended


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_nodes_spread_a_lost_members_replicas_over_the_survivors(
        tmp_path: Path, backend: str) -> None:
    with running_cluster(tmp_path, ("a", "b", "c"), storage_section(backend)) as (leader, b, c):
        status = leader.status()
        assert {n["name"] for n in status["nodes"]} == {"a", "b", "c"}
        c.kill()

        def spread() -> dict[str, set[str]] | None:
            now = leader.status()
            where = {node: replicas_on(now, node) & replica_names(c) for node in ("a", "b")}
            return where if set().union(*where.values()) == replica_names(c) else None

        where = wait_for("c's replicas on a and b", spread, 60.0, 0.1)
        for role in ("collector", "predictor"):  # one of each role's two on each survivor
            assert [sum(name.startswith(role) for name in where[n]) for n in ("a", "b")] == [1, 1]
        c.start()
        wait_for("c's replicas back home", lambda: replicas_on(
            leader.status(), "c") == replica_names(c), 60.0, 0.1)


def _serving(client: HttpClient, location: int, version: int) -> dict[str, Any] | None:
    status, answer = client.post("/model", {"location_id": location})
    return answer if status == 200 and answer.get("model_version") == version else None
