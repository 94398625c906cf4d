"""Chaos against a real daemon: steady ingest and predictions while actors are killed.

Used by ``bench/chaos.py`` (60 s) and the test suite (a shorter run). While
gateway threads send batches of unique readings and clients ask for
predictions, a killer SIGKILLs a random worker every ``kill_every_s``; once a
predictor and a collector are SIGSTOPped and left stopped (liveness must
replace them); once the whole daemon is SIGKILLed mid-ingest and started
again with ``rml start``. Afterwards every acknowledged reading is sent again
and must come back as a duplicate: proof that each was stored, exactly once.
The gateways and the prediction clients are ``rml_client``'s, as other services' are.

With ``members`` (the configs of nodes that join the leader, ``[cluster]``) the run
spans several nodes: the load is spread over the nodes' ports (each client fails over
to the next node's port when its own refuses), the killer picks its victims among the
workers of every node, and instead of the whole leader, one member's whole process group
is SIGKILLed mid-ingest; its replicas must be re-placed on the other nodes, and once the
member is started again, come home.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import random
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.settings import Settings
from daemon.process import RootClient, read_record, start, stop
from messages.protocol import ActorInfo, StatusReport, StatusRequest
from players.simulator import Savanna
from rml_client import (
    BadRequest,
    BatchResult,
    ConnectionFailed,
    GatewayClient,
    HttpStatusError,
    Prediction,
    PredictionClient,
    RmlError,
    Unavailable,
)
from runtime.group import end_group

__all__ = ["ChaosReport", "answered_by", "home_replicas", "replacements", "run_chaos"]


@dataclass
class ChaosReport:
    """What a chaos run saw; ``lost`` and ``stored_twice`` must be 0."""

    duration_s: float = 0.0
    batches_acknowledged: int = 0
    readings_acknowledged: int = 0
    lost: int = 0
    stored_twice: int = 0
    predictions_sent: int = 0
    predictions_answered: int = 0
    fallback_answers: int = 0
    kills: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    daemon_kills: int = 0
    nodes: int = 1
    # A member's whole process group SIGKILLed (several nodes only).
    node_kills: int = 0
    # From that kill until each of the member's replicas runs on another node (leader's
    # status); from the member started again until they all run on it again.
    node_kill_to_replaced_s: list[float] = field(default_factory=list)
    rejoin_to_home_s: list[float] = field(default_factory=list)
    restarts: int = 0
    kill_to_answer_s: dict[str, list[float]] = field(default_factory=dict)
    # A SIGKILLed predictor: until its replacement answers GET /health on the predict port.
    kill_to_http_s: list[float] = field(default_factory=list)
    # As the supervisors logged it: from a child's exit to its replacement running, by
    # "<role> via standby|start" (the clients' view above adds the status round trips).
    replaced_s: dict[str, list[float]] = field(default_factory=dict)

    @property
    def answered_share(self) -> float:
        return self.predictions_answered / self.predictions_sent if self.predictions_sent else 0.0

    def lines(self) -> list[str]:
        """The figures, one per line, as the bench prints them."""
        def stats(values: list[float]) -> str:
            if not values:
                return "n/a"
            return (f"median {statistics.median(values) * 1000:.0f} ms, "
                    f"max {max(values) * 1000:.0f} ms over {len(values)}")

        out = [f"nodes:                   {self.nodes}"] if self.nodes > 1 else []
        out += [
            f"duration:                {self.duration_s:.0f} s",
            f"readings acknowledged:   {self.readings_acknowledged} "
            f"({self.batches_acknowledged} batches)",
            f"lost:                    {self.lost}",
            f"stored twice:            {self.stored_twice}",
            f"predictions answered:    {self.predictions_answered}/{self.predictions_sent} "
            f"({self.answered_share:.4%}); by a fallback: {self.fallback_answers}; "
            f"{self.predictions_sent / self.duration_s if self.duration_s else 0:,.0f} asked "
            "a second",
            f"kills:                   {len(self.kills)} SIGKILL, {len(self.stopped)} SIGSTOP, "
            f"{self.daemon_kills} whole daemon"
            + (f", {self.node_kills} whole node" if self.nodes > 1 else ""),
            f"restarts (status):       {self.restarts}",
        ]
        for role, values in sorted(self.kill_to_answer_s.items()):
            out.append(f"kill-to-running {role + ':':<10} {stats(values)} (root's status)")
        out.append(f"kill-to-answer predictor:  {stats(self.kill_to_http_s)} "
                   "(its replacement answers HTTP)")
        for what, values in sorted(self.replaced_s.items()):
            out.append(f"exit-to-running {what + ':':<28} {stats(values)} (supervisors' log)")
        if self.nodes > 1:
            out.append(f"node kill to replicas re-placed: {stats(self.node_kill_to_replaced_s)} "
                       "(each running on another node, leader's status)")
            out.append(f"rejoin to replicas home:         {stats(self.rejoin_to_home_s)} "
                       "(from the member started again)")
        return out


def replacements(log_file: Path) -> dict[str, list[float]]:
    """``child_replaced`` events of a daemon log: seconds by "<role> via <how>"."""
    out: dict[str, list[float]] = {}
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        if '"child_replaced"' not in line:
            continue
        try:
            event = json.loads(line)
            key = f"{event['role']} via {event['via']}"
            out.setdefault(key, []).append(float(event["down_ms"]) / 1000)
        except (ValueError, KeyError, TypeError):
            continue
    return out


_clients = threading.local()


def _status(settings: Settings) -> StatusReport | None:
    """The root's status, through this thread's own long-lived client (a fresh Thespian
    client per ask would dominate the kill-to-answer times being measured)."""
    try:
        client = getattr(_clients, "root", None)
        if client is None:
            client = _clients.root = RootClient(settings)
        answer = client.ask(StatusRequest(uuid.uuid4().hex), 2.0)
    except Exception:
        answer = None
    if not isinstance(answer, StatusReport):
        _clients.root = None  # e.g. the daemon was killed and started again: reconnect
        return None
    return answer


def _reading(gateway: int, n: int, location: int, now_ms: int) -> dict[str, Any]:
    return {"sensor_id": f"chaos-{gateway}", "location_id": location,
            "reading_id": f"{n:09d}", "timestamp": now_ms - 1000,
            "animals_lower": 3 + n % 5, "animals_upper": 9 + n % 7,
            "percent_zebras": (n % 10) / 10}


_FORK = multiprocessing.get_context("fork")


@dataclass(frozen=True)
class _Node:
    """One node of the run: the leader first, then the members."""

    name: str
    settings: Settings
    config_path: str | None


def home_replicas(settings: Settings) -> set[str]:
    """The replica names a member hosts at home (``collector-1@b``, ``predictor-1@b``, ...)."""
    node = settings.node_name
    return ({f"collector-{i}@{node}" for i in range(1, settings.ingest.collectors + 1)}
            | {f"predictor-{i}@{node}" for i in range(1, settings.predict.replicas + 1)})


def _running_nodes(report: StatusReport, names: set[str]) -> dict[str, str]:
    """Of ``names``, those running per ``report``, each with the node it runs on."""
    return {a.name: a.node for a in report.actors if a.name in names and a.state == "running"}


def _wait_placed(leader: Settings, names: set[str], where: Callable[[str], bool],
                 timeout_s: float, give_up: Callable[[], bool] = lambda: False) -> bool:
    """Until every one of ``names`` runs on a node ``where`` accepts (leader's status)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not give_up():
        report = _status(leader)
        if report is not None:
            running = _running_nodes(report, names)
            if len(running) == len(names) and all(where(n) for n in running.values()):
                return True
        time.sleep(0.01)
    return False


def answered_by(settings: Settings, name: str, give_up: Callable[[], bool] = lambda: False,
                timeout_s: float = 30.0) -> float | None:
    """When (``time.monotonic()``) a new connection to the predict port is first answered
    by the predictor called ``name``; None at the deadline. After a SIGKILL that is its
    replacement (the killed process cannot answer, and its copy of the listener went with it).
    Fresh connections, since any of the replicas may accept one (they share the node's
    listening socket: ``actors.listeners``)."""
    predict = settings.predict
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not give_up():
        with PredictionClient(host=predict.host, port=predict.port, timeout_s=0.5, retries=0,
                              deadline_s=None) as client:
            try:
                if client.health().get("actor") == name:
                    return time.monotonic()
            except RmlError:
                pass
        time.sleep(0.001)
    return None


class _Chaos:
    def __init__(self, nodes: Sequence[_Node], report: ChaosReport,
                 say: Callable[[str], None], seed: int) -> None:
        self.nodes = list(nodes)  # the leader first
        self.settings, self.config_path = nodes[0].settings, nodes[0].config_path
        self.by_name = {node.name: node for node in self.nodes}
        self.report, self.say = report, say
        self.rng = random.Random(seed)
        # Predictions no node answered, by the last status (0: no connection), and when
        # each was sent (wall clock, to compare with the logs).
        self.unanswered: Counter[int] = Counter()
        self.unanswered_at: list[float] = []
        # Shared with the killer's own process (see run_chaos).
        self.stop_flag = _FORK.Event()
        self.lock = threading.Lock()
        self.acknowledged: list[dict[str, Any]] = []
        self.daemon_down = _FORK.Event()

    # --- load ------------------------------------------------------------------------

    def _order(self, home: int) -> list[_Node]:
        """Node ``home % N`` first, then the next ones (where a client fails over to)."""
        return self.nodes[home % len(self.nodes):] + self.nodes[:home % len(self.nodes)]

    def gateway(self, index: int, batch_size: int, pause_s: float) -> None:
        clients = [GatewayClient(host=node.settings.ingest.host, port=node.settings.ingest.port,
                                 token=node.settings.ingest.tokens[0], batch_size=1000,
                                 timeout_s=10.0, retries=3, deadline_s=None)
                   for node in self._order(index)]
        n = 0
        while not self.stop_flag.is_set():
            now_ms = int(time.time() * 1000)
            batch = [_reading(index, n + i, 1 + (n + i) % 10, now_ms) for i in range(batch_size)]
            n += batch_size
            answer = self._send_until_answered(clients, batch)
            if answer is not None:
                with self.lock:
                    self.acknowledged.extend(batch)
                    self.report.batches_acknowledged += 1
            time.sleep(pause_s)
        for client in clients:
            client.close()

    def _send_until_answered(self, clients: list[GatewayClient],
                             batch: list[dict[str, Any]]) -> BatchResult | None:
        """A gateway keeps a batch until it is acknowledged (or the run ends long after); a
        node that cannot be reached passes it to the next one (``clients``' order)."""
        deadline = time.monotonic() + 90.0
        at = 0
        while time.monotonic() < deadline:
            try:
                return clients[at].send(batch)
            except ConnectionFailed:
                at = (at + 1) % len(clients)
                if at == 0:  # no node could be reached: wait before the round again
                    time.sleep(0.1)
                continue
            except RmlError:  # refused after the client's retries (a 503): again, here
                time.sleep(0.1)
        return None

    def prediction_load(self, index: int, rate: float, results: Any) -> None:
        """A process of its own (a Python client costs CPU the daemon shares): keep-alive
        ``POST /model`` for locations 1..10 in turn, paced to ``rate`` a second, each asked
        until answered as a client would (``_ask``); its tally goes to ``results``."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        clients = [PredictionClient(host=node.settings.predict.host,
                                    port=node.settings.predict.port,
                                    token=node.settings.predict.tokens[0], timeout_s=2.0,
                                    retries=3, deadline_s=None)
                   for node in self._order(index)]
        sent = answered = fallback = 0
        unanswered: Counter[int] = Counter()
        unanswered_at: list[float] = []
        interval, due = 1.0 / rate, time.monotonic()
        try:
            while not self.stop_flag.is_set():
                if self.daemon_down.is_set():
                    time.sleep(0.05)  # the whole daemon is down on purpose: not a fault
                    due = time.monotonic()
                    continue
                ahead = due - time.monotonic()
                if ahead > 0.001:
                    time.sleep(ahead)
                due = max(due + interval, time.monotonic() - 0.1)  # no burst to catch up
                sent_at = time.time()
                status, answer = _ask(clients, sent % 10 + 1, self.daemon_down.is_set)
                sent += 1
                if answer is not None:
                    answered += 1
                    fallback += answer.fallback
                else:
                    unanswered[status] += 1
                    unanswered_at.append(sent_at)
        finally:
            for client in clients:
                client.close()
            results.put((sent, answered, fallback, dict(unanswered), unanswered_at))

    # --- faults ----------------------------------------------------------------------

    def _wait_replaced(self, name: str, old_pid: int, since: float) -> None:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not self.stop_flag.is_set():
            report = _status(self.settings)
            if report is not None:
                for actor in report.actors:
                    if actor.name == name and actor.state == "running" and actor.pid != old_pid:
                        slot = name.split("@", 1)[0]  # "predictor-1@b": a predictor too
                        role = slot.rsplit("-", 1)[0] if slot[-1].isdigit() else slot
                        self.report.kill_to_answer_s.setdefault(role, []).append(
                            time.monotonic() - since)
                        return
            time.sleep(0.002)

    def _wait_answering(self, name: str, node: str, since: float) -> None:
        """Probed on the port of the node the victim ran on (its replacement's, unless that
        node is lost meanwhile)."""
        settings = self.by_name[node].settings if node in self.by_name else self.settings
        answered = answered_by(settings, name, self.stop_flag.is_set)
        if answered is not None:
            self.report.kill_to_http_s.append(answered - since)

    def _wait_back(self, victim: ActorInfo, killed_at: float) -> None:
        """A predictor's HTTP answer first, then its status: polled at once, the status
        asks (every 2 ms) held this process's GIL while the HTTP probe waited for it."""
        if victim.role == "predictor":
            self._wait_answering(victim.name, victim.node, killed_at)
        self._wait_replaced(victim.name, victim.pid, killed_at)

    def killer(self, kill_every_s: float, duration_s: float, sigstop: bool,
               kill_daemon: bool) -> None:
        started = time.monotonic()
        stopped_once = not sigstop
        daemon_killed = not kill_daemon
        while not self.stop_flag.wait(kill_every_s):
            elapsed = time.monotonic() - started
            if elapsed > duration_s:
                return
            if not daemon_killed and elapsed > duration_s / 2:
                daemon_killed = True
                if len(self.nodes) > 1:
                    self._kill_node()
                else:
                    self._kill_daemon()
                continue
            report = _status(self.settings)
            if report is None:
                continue
            workers = [a for a in report.actors if a.role != "supervisor" and a.state == "running"]
            if not stopped_once and elapsed > duration_s / 4:
                stopped_once = True
                for name in ("predictor-1", "collector-1"):  # the leader's own
                    target = next((a for a in workers if a.name == name), None)
                    if target is not None:
                        os.kill(target.pid, signal.SIGSTOP)  # left stopped: liveness must act
                        self.report.stopped.append(name)
                        threading.Thread(target=self._wait_replaced,
                                         args=(name, target.pid, time.monotonic()),
                                         daemon=True).start()
                continue
            if not workers:
                continue
            victim = self.rng.choice(workers)
            try:
                os.kill(victim.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed_at = time.monotonic()
            self.report.kills.append(victim.name)
            threading.Thread(target=self._wait_back, args=(victim, killed_at),
                             daemon=True).start()

    def killer_process(self, results: Any, kill_every_s: float, duration_s: float,
                       sigstop: bool, kill_daemon: bool) -> None:
        """The killer in a process of its own: the load's threads share the bench's GIL,
        and would otherwise delay the status polls that time each replacement."""
        _clients.root = None  # never a client inherited from the parent
        waiters_before = set(threading.enumerate())
        try:
            self.killer(kill_every_s, duration_s, sigstop, kill_daemon)
            deadline = time.monotonic() + 30.0
            for thread in set(threading.enumerate()) - waiters_before:
                thread.join(max(0.0, deadline - time.monotonic()))
        finally:
            r = self.report
            results.put((r.kills, r.stopped, r.kill_to_answer_s, r.kill_to_http_s,
                         r.daemon_kills, r.restarts, r.node_kills, r.node_kill_to_replaced_s,
                         r.rejoin_to_home_s))

    def _kill_daemon(self) -> None:
        record = read_record(self.settings)
        if record is None:
            return
        before = _status(self.settings)
        if before is not None:
            self.report.restarts += sum(a.restarts for a in before.actors)
        self.say("  SIGKILL of the whole daemon mid-ingest; then `rml start` ...")
        self.daemon_down.set()
        os.killpg(record.pgid, signal.SIGKILL)
        end_group(record.pgid)
        began = time.monotonic()
        start(self.settings, self.config_path)
        self.report.daemon_kills += 1
        self.daemon_down.clear()
        self.say(f"  started again in {time.monotonic() - began:.1f} s")

    def _kill_node(self) -> None:
        """SIGKILL one member's whole process group mid-ingest (the load keeps going, failing
        over to the other nodes); time until its replicas run elsewhere, start it again, time
        until they run on it again."""
        member = self.rng.choice(self.nodes[1:])
        record = read_record(member.settings)
        if record is None:
            self.say(f"  node {member.name} has no run record: no node kill")
            return
        names = home_replicas(member.settings)
        self.say(f"  SIGKILL of node {member.name}'s whole process group mid-ingest ...")
        os.killpg(record.pgid, signal.SIGKILL)
        killed_at = time.monotonic()
        end_group(record.pgid)
        if _wait_placed(self.settings, names, lambda node: node != member.name, 60.0,
                        self.stop_flag.is_set):
            replaced = time.monotonic() - killed_at
            self.report.node_kill_to_replaced_s.append(replaced)
            self.say(f"  its replicas run on other nodes {replaced:.1f} s after the kill")
        else:
            self.say(f"  node {member.name}'s replicas were not re-placed within 60 s")
        began = time.monotonic()
        self.report.node_kills += 1
        try:
            start(member.settings, member.config_path)
        except Exception as exc:  # reported; the run goes on without it (stopped at the end)
            self.say(f"  node {member.name} could not be started again: {exc}")
            return
        started = time.monotonic()
        if _wait_placed(self.settings, names, lambda node: node == member.name, 60.0,
                        self.stop_flag.is_set):
            home = time.monotonic() - started
            self.report.rejoin_to_home_s.append(home)
            self.say(f"  node {member.name} started again in {started - began:.1f} s; its "
                     f"replicas home {home:.1f} s later")
        else:
            self.say(f"  node {member.name} started again in {started - began:.1f} s; its "
                     "replicas not home within 60 s")

    # --- the end ---------------------------------------------------------------------

    def verify(self) -> None:
        """Send every acknowledged reading again: each must be a duplicate (stored once)."""
        ingest = self.settings.ingest
        client = GatewayClient(host=ingest.host, port=ingest.port, token=ingest.tokens[0],
                               batch_size=1000, timeout_s=30.0, retries=3, deadline_s=None)
        accepted_again = 0
        for i in range(0, len(self.acknowledged), 1000):
            batch = self.acknowledged[i:i + 1000]
            answer = self._send_until_answered([client], batch)
            if answer is None:
                raise RuntimeError("the daemon stopped answering during verification")
            accepted_again += answer.accepted
        client.close()
        self.report.readings_acknowledged = len(self.acknowledged)
        self.report.lost = accepted_again
        from storage.backend import StoreBackend

        backend = StoreBackend(self.settings, read_only=True)
        try:
            keys = [r.key for r in backend.facts().all_readings()
                    if r.sensor_id.startswith("chaos-")]
        finally:
            backend.close()
        self.report.stored_twice = len(keys) - len(set(keys))


def _ask(clients: Sequence[PredictionClient], location: int,
         paused: Callable[[], bool] = lambda: False) -> tuple[int, Prediction | None]:
    """Ask until answered, as a client does: each node in turn (the next only when this one
    cannot be reached), with the client's own retries on each (a broken connection opened
    again, a 503 waiting for its Retry-After). (status, the answer): 200, or the status it
    was refused with, 0 when no node could be reached. While ``paused()`` (the whole daemon
    killed on purpose, until it is started again), a failure waits and does not count: a
    client would retry after such an outage too."""
    status = 0
    for client in clients:
        while True:
            try:
                return 200, client.predict(location_id=location)
            except HttpStatusError as exc:
                return exc.status, None
            except RmlError:  # no connection, no answer in time, a garbled answer
                if paused():
                    while paused():
                        time.sleep(0.05)
                    continue
                status = 0
                break
    return status, None


def _seed_model(settings: Settings, say: Callable[[str], None]) -> None:
    """Enough facts for a champion, so predictions have a model from the start."""
    from players.demo import last_midnight_ms
    from players.simulator import reading_item

    savanna = Savanna(seed=3, n_locations=10, hours=48, end_ms=last_midnight_ms())
    ingest, predict = settings.ingest, settings.predict
    with GatewayClient(host=ingest.host, port=ingest.port, token=ingest.tokens[0]) as gateway:
        gateway.send([reading_item(r) for r in savanna.readings()])
        gateway.send_outcomes(savanna.outcome_items())
    with PredictionClient(host=predict.host, port=predict.port, token=predict.tokens[0],
                          deadline_s=5.0) as client:
        deadline = time.monotonic() + 90.0
        while time.monotonic() < deadline:
            try:
                client.predict(location_id=1)
            except (BadRequest, Unavailable):  # no model, or no features, yet
                time.sleep(0.2)
                continue
            say("  a model is published and predictions answer")
            return
    raise RuntimeError("no model was published within 90 s")


def _utc(seconds: float) -> str:
    """A wall-clock time as the daemon's log spells it (UTC), to the millisecond."""
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


def _at_home_within(leader: Settings, member: _Node, timeout_s: float) -> bool:
    """Whether ``member``'s replicas all run on it within ``timeout_s``: asked from a process
    of its own, so that this one holds no Thespian client when the killer forks from it."""
    def wait() -> None:
        os._exit(0 if _wait_placed(leader, home_replicas(member.settings),
                                   lambda node: node == member.name, timeout_s) else 1)

    helper = _FORK.Process(target=wait, daemon=True)
    helper.start()
    helper.join(timeout_s + 30.0)
    if helper.is_alive():
        helper.kill()
        helper.join()
    return helper.exitcode == 0


def run_chaos(settings: Settings, config_path: str | None, *, duration_s: float = 60.0,
              kill_every_s: float = 1.0, gateways: int = 4, predict_clients: int = 2,
              predict_rate: float = 200.0,
              sigstop: bool = True, kill_daemon: bool = True, seed: int = 1,
              members: Sequence[tuple[Settings, str | None]] = (),
              say: Callable[[str], None] = print) -> ChaosReport:
    """Start a daemon, run the chaos for ``duration_s``, verify, stop; return the figures.

    ``members``: ``(settings, config path)`` of nodes that join this one (their ``[cluster]
    join`` names its admin port). They are started after it, in order, and the run waits
    until each one's replicas run on it; gateway ``i`` sends to node ``i % N``'s ingest port
    and prediction client ``j`` to node ``j % N``'s predict port (the leader is node 0),
    each failing over to the next node's port when its own cannot be reached (the
    ``predict_clients`` are processes asking ``predict_rate`` predictions a second in all,
    each until answered: ``_ask``); with
    ``kill_daemon``, a member's whole process group is SIGKILLed instead of the leader's
    and started again. All of them are stopped at the end, members first.
    """
    nodes = [_Node(settings.node_name, settings, config_path)]
    nodes += [_Node(s.node_name, s, path) for s, path in members]
    report = ChaosReport(nodes=len(nodes))
    started: list[_Node] = []
    killer: Any = None
    loads: list[Any] = []
    try:
        started_at: dict[str, float] = {}
        for node in nodes:
            started.append(node)
            start(node.settings, node.config_path)
            started_at[node.name] = time.monotonic()
        for node in nodes[1:]:
            if not _at_home_within(settings, node, 90.0):
                raise RuntimeError(f"node {node.name}'s replicas did not run on it within 90 s")
            say(f"  node {node.name} joined: its replicas run on it "
                f"({time.monotonic() - started_at[node.name]:.1f} s after its start)")
        _seed_model(settings, say)
        _clients.root = None  # the killer's process must not share this thread's client
        chaos = _Chaos(nodes, report, say, seed)
        results = _FORK.Queue()
        killer = _FORK.Process(target=chaos.killer_process, daemon=True, args=(
            results, kill_every_s, duration_s, sigstop, kill_daemon))
        killer.start()  # forked before any load thread runs (their locks would be copied)
        threads = [threading.Thread(target=chaos.gateway, args=(g, 200, 0.05), daemon=True)
                   for g in range(gateways)]
        tallies = _FORK.Queue()
        loads = [_FORK.Process(target=chaos.prediction_load, daemon=True,
                               args=(j, predict_rate / predict_clients, tallies))
                 for j in range(predict_clients)]
        for process in loads:
            process.start()  # forked before the load threads, too
        for thread in threads:
            thread.start()
        began = time.monotonic()
        spread = f" over {len(nodes)} nodes" if len(nodes) > 1 else ""
        say(f"  chaos for {duration_s:.0f} s: {gateways} gateways, {predict_clients} "
            f"prediction client processes asking {predict_rate:,.0f} a second in all"
            f"{spread}, a SIGKILL every {kill_every_s} s")
        try:
            (kills, stopped, timings, http_timings, daemon_kills, restarts, node_kills,
             node_replaced, node_home) = results.get(timeout=duration_s + 300.0)
        finally:
            chaos.stop_flag.set()
            killer.join(30.0)
        report.kills, report.stopped, report.kill_to_answer_s = kills, stopped, timings
        report.kill_to_http_s = http_timings
        report.daemon_kills, report.restarts = daemon_kills, report.restarts + restarts
        report.node_kills, report.node_kill_to_replaced_s = node_kills, node_replaced
        report.rejoin_to_home_s = node_home
        for thread in threads:
            thread.join(120.0)
        report.duration_s = time.monotonic() - began
        for _ in loads:
            try:
                sent, answered, fallback, unanswered, unanswered_at = tallies.get(timeout=60.0)
            except queue.Empty:
                say("  a prediction client process sent no tally: its predictions are missing")
                continue
            report.predictions_sent += sent
            report.predictions_answered += answered
            report.fallback_answers += fallback
            chaos.unanswered.update(unanswered)
            chaos.unanswered_at.extend(unanswered_at)
        for process in loads:
            process.join(10.0)
        if chaos.unanswered:
            when = sorted(chaos.unanswered_at)
            say("  predictions no node answered, by status (0: no connection): "
                + ", ".join(f"{s}: {n}" for s, n in sorted(chaos.unanswered.items()))
                + "; the first sent at " + _utc(when[0]) + ", the last at " + _utc(when[-1]))
        say("  verifying: every acknowledged reading sent again ...")
        chaos.verify()
        final = _status(settings)
        report.restarts += sum(a.restarts for a in final.actors) if final else 0
    finally:
        if killer is not None and killer.is_alive():
            killer.terminate()  # e.g. still starting a member again: it must not outlive us
            killer.join(10.0)
        for process in loads:
            if process.is_alive():
                process.terminate()
                process.join(10.0)
        for node in reversed(started):  # members first (each hands its replicas over)
            try:
                ended = stop(node.settings)
                if ended.leftover_pids or ended.busy_ports:
                    say(f"  node {node.name} left behind: processes {ended.leftover_pids}, "
                        f"ports {ended.busy_ports}")
            except Exception as exc:  # stop the others all the same
                say(f"  stopping node {node.name} failed: {exc!r}")
        report.replaced_s = {}
        for node in nodes:
            for what, values in replacements(node.settings.log_dir / "rml.log").items():
                report.replaced_s.setdefault(what, []).extend(values)
    return report
