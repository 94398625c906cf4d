"""The Supervisor actor: starts its children, restarts what fails, escalates past its limit.

One mechanism for the whole tree. The root is a Supervisor created by the
launcher with a Thespian ``globalName``; it also keeps the directory of live
actors (fed by ``ChildUp`` from every supervisor below), answers ``status``,
tells workers where their peers are, and routes requests from outside
(``PredictRequest``, ``TrainRequest``) to a live worker.

Liveness: a crash is reported by Thespian (``ChildActorExited``), a hang is not.
So every ``heartbeat_interval_s`` a supervisor pings each running child; a child
whose last ``Pong`` is older than its heartbeat timeout is SIGKILLed by pid (with
whatever processes it started, so that nothing keeps holding its port) and
restarted through the same path as a crash, with the cause logged.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from actors.base import ReactiveActor
from config.settings import Settings
from daemon.group import descendants, process_alive
from daemon.logs import configure_logging, get_logger
from messages.protocol import (
    ActorInfo,
    ChildUp,
    Forwarded,
    Init,
    MessageFailed,
    Peers,
    Ping,
    Pong,
    PredictionError,
    PredictRequest,
    Ready,
    RollbackRequest,
    RollbackResult,
    StartSystem,
    StatusReport,
    StatusRequest,
    StoppingNormally,
    SystemStarted,
    TrainRequest,
    TrainResult,
)
from supervision.policy import decide_restart
from supervision.spec import ChildSpec, SupervisorSpec, system_tree

__all__ = ["ROOT_NAME", "Supervisor"]

ROOT_NAME = "rml-root"


@dataclass
class _Child:
    """What a supervisor knows of one child (mutable: it is the supervisor's own state)."""

    spec: ChildSpec
    address: Any = None
    pid: int = 0
    restarts: int = 0
    state: str = "starting"
    init_id: str = ""
    expected_exit: bool = False
    normal_exit: bool = False
    last_seen: float = 0.0  # monotonic time of its Ready or last Pong
    ping_sent: float = 0.0  # monotonic time of the unanswered Ping; 0 when answered
    kill_cause: str = ""  # why the supervisor killed it (a missed heartbeat)
    gone_since: float = 0.0  # when its process was first seen gone with no exit reported
    restart_times: list[float] = field(default_factory=list)  # its own: paces its backoff
    # A child supervisor's own descendants (name -> pid, from the ChildUp it sends up):
    # a supervisor that dies abruptly leaves them running, so we end them.
    below: dict[str, int] = field(default_factory=dict)

    def info(self, supervisor: str) -> ActorInfo:
        return ActorInfo(self.spec.name, self.spec.role, self.pid, self.restarts, self.state,
                         supervisor, self.address if self.state == "running" else None)


class Supervisor(ReactiveActor):
    """OTP-style supervisor (one_for_one, one_for_all, rest_for_one) with intensity and backoff."""

    def __init__(self) -> None:
        super().__init__()
        self.spec: SupervisorSpec | None = None
        self.settings: Settings | None = None
        self.children: list[_Child] = []
        # Restart intensity is the supervisor's, as in OTP: all its children's restarts count.
        self.restart_times: list[float] = []
        self.is_root = False
        self.announced = False
        self.stopping = False
        self._start_reply: tuple[Any, str] | None = None  # root: (launcher, correlation id)
        self._init_id: str | None = None
        # Root only: the directory of every actor below, and routing state.
        self.directory: dict[str, ActorInfo] = {}
        self.started_at_ms = int(time.time() * 1000)
        self._last_peers: Peers | None = None
        self._round_robin = itertools.count()
        self._dead_letters: Any = None
        self._last_tick = 0.0

    # --- starting ---------------------------------------------------------------

    def on_StartSystem(self, msg: StartSystem, sender: Any) -> None:  # noqa: N802
        """Launcher -> root: build the whole tree."""
        if self.spec is not None:  # a repeated start: answer with what is there
            self._start_reply = (sender, msg.correlation_id)
            self._maybe_announce()
            return
        self.is_root = True
        self._start_reply = (sender, msg.correlation_id)
        self._begin(ROOT_NAME, msg.settings, system_tree(msg.settings))
        self._dead_letter_store()  # its table exists before anyone reads it (status)

    def on_Init(self, msg: Init, sender: Any) -> None:  # noqa: N802
        """Parent -> sub-supervisor: start these children."""
        if self._init_id == msg.correlation_id:
            self._maybe_announce()
            return
        self.supervisor = sender
        self._init_id = msg.correlation_id
        self._begin(msg.name, msg.settings, msg.spec)

    def _begin(self, name: str, settings: Settings, spec: SupervisorSpec) -> None:
        self.name = name
        self.settings = settings
        self.spec = spec
        configure_logging(settings.log_dir, settings.log_level, actor=name)
        self.log = get_logger(actor=name, role="supervisor")
        self.children = [_Child(spec=c) for c in spec.children]
        self.log.info("supervisor_started", strategy=spec.strategy,
                      children=[c.name for c in spec.children])
        for child in self.children:
            self._start(child)
        self._last_tick = time.monotonic()
        self.wakeupAfter(spec.heartbeat_interval_s, payload="heartbeat")

    def _start(self, child: _Child) -> None:
        assert self.settings is not None
        child.address = self.createActor(child.spec.actor_class)
        child.state = "starting"
        child.expected_exit = False
        child.normal_exit = False
        child.kill_cause = ""
        child.ping_sent = 0.0
        child.gone_since = 0.0
        child.init_id = uuid.uuid4().hex
        self.send(child.address, Init(child.spec.name, child.spec.role, self.settings,
                                      child.init_id, spec=child.spec.spec))

    def on_Ready(self, msg: Ready, sender: Any) -> None:  # noqa: N802
        child = self._by_address(sender)
        if child is None or msg.correlation_id != child.init_id:
            return  # a late answer from an incarnation we already replaced
        if child.expected_exit:
            return  # asked to exit while starting: it is not running, its group restart is due
        child.pid = msg.pid
        child.state = "running"
        child.last_seen = time.monotonic()
        self.log.info("child_running", child=child.spec.name, pid=msg.pid,
                      restarts=child.restarts)
        self._report(child.info(self.name))
        self._maybe_announce()

    def _maybe_announce(self) -> None:
        """Once every child runs, tell whoever started us (parent, or the launcher)."""
        if not all(c.state == "running" for c in self.children):
            return
        if self.is_root:
            if self._start_reply is not None:
                launcher, correlation_id = self._start_reply
                self._start_reply = None
                self.send(launcher, SystemStarted(correlation_id, True,
                                                  tuple(self.directory.values())))
        elif self.supervisor is not None and self._init_id is not None:
            self.send(self.supervisor, Ready(self.name, "supervisor", os.getpid(),
                                             self._init_id))
        self.announced = True

    # --- failures ------------------------------------------------------------------

    def on_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:  # noqa: N802
        child = self._by_address(msg.childAddress)
        if child is None:
            return  # SIGTERM can report the same child twice: the second finds nothing
        child.address = None
        if child.below and not self.stopping:
            self._end_orphans(child)
        if self.stopping:
            child.state = "stopped"
            return
        if child.expected_exit:
            child.state = "restarting"
            self._report(child.info(self.name))
            return  # stopped on purpose by one_for_all / rest_for_one; restarted with the group
        self._failed(child, child.kill_cause or ("normal" if child.normal_exit else "exited"))

    def on_StoppingNormally(self, msg: StoppingNormally, sender: Any) -> None:  # noqa: N802
        child = self._by_address(sender)
        if child is not None:
            child.normal_exit = True

    def _failed(self, child: _Child, cause: str) -> None:
        assert self.spec is not None
        spec = child.spec
        self.log.warning("child_failed", child=spec.name, cause=cause, pid=child.pid)
        if spec.restart == "temporary" or (spec.restart == "transient" and cause == "normal"):
            child.state = "stopped"
            self._report(child.info(self.name))
            return
        now = time.monotonic()
        limits = functools.partial(
            decide_restart, now=now, max_restarts=self.spec.max_restarts,
            period_s=self.spec.period_s, backoff_min_s=self.spec.backoff_min_s,
            backoff_max_s=self.spec.backoff_max_s)
        # Intensity is the supervisor's (OTP): every child's restarts count against it.
        decision = limits(self.restart_times)
        if not decision.restart:
            self._escalate(child, decision.recent)
            return
        # Backoff is the child's own (as Akka's BackoffSupervisor): a predictor killed once
        # does not wait because a sibling was restarted a moment ago.
        delay_s = limits(child.restart_times).delay_s
        self.restart_times = [t for t in self.restart_times if now - t <= self.spec.period_s]
        self.restart_times.append(now)
        child.restart_times = [t for t in child.restart_times if now - t <= self.spec.period_s]
        child.restart_times.append(now)
        group = self._restart_group(child)
        for member in group:
            member.restarts += member is child
            member.state = "restarting"
            if member is not child and member.address is not None:
                member.expected_exit = True
                self.send(member.address, ActorExitRequest())
            self._report(member.info(self.name))
        names = tuple(m.spec.name for m in group)
        if delay_s > 0:
            self.wakeupAfter(delay_s, payload=("restart", names))
        else:
            self._restart(names)

    def _restart_group(self, failed: _Child) -> list[_Child]:
        assert self.spec is not None
        if self.spec.strategy == "one_for_all":
            return list(self.children)
        if self.spec.strategy == "rest_for_one":
            return self.children[self.children.index(failed):]
        return [failed]

    def _restart(self, names: tuple[str, ...]) -> None:
        for child in self.children:
            if child.spec.name in names and child.state == "restarting":
                if child.address is not None and not child.expected_exit:
                    continue  # already restarted
                self._start(child)

    def _escalate(self, child: _Child, recent: int) -> None:
        assert self.spec is not None
        self.log.error("restart_intensity_exceeded", child=child.spec.name, restarts=recent,
                       period_s=self.spec.period_s)
        child.state = "failed"
        self._report(child.info(self.name))
        if not self.is_root:
            # Give up: exiting takes our children down; our parent decides what next.
            self.send(self.myAddress, ActorExitRequest())

    def on_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:  # noqa: N802
        payload = msg.payload
        if payload == "heartbeat":
            self._heartbeat()
        elif isinstance(payload, tuple) and payload and payload[0] == "restart":
            self._restart(payload[1])

    # --- liveness ------------------------------------------------------------------

    def _timeout(self, child: _Child) -> float:
        assert self.spec is not None
        return child.spec.heartbeat_timeout_s or self.spec.heartbeat_timeout_s

    def _heartbeat(self) -> None:
        """Ping every running child; kill the ones silent past their deadline."""
        assert self.spec is not None
        if self.stopping:
            return
        now = time.monotonic()
        if now - self._last_tick > self.spec.heartbeat_timeout_s:
            # We were stalled ourselves (stopped, or a slow handler): our children's
            # silence says nothing about them, so start their clocks afresh.
            for child in self.children:
                child.last_seen, child.ping_sent = now, 0.0
        self._last_tick = now
        for child in self.children:
            if child.address is None or child.state not in ("running", "unresponsive"):
                continue
            timeout = self._timeout(child)
            silent = now - child.last_seen
            if not child.gone_since and not process_alive(child.pid):
                child.gone_since = now
            if (child.gone_since and now - child.gone_since >= self.spec.heartbeat_interval_s
                    or child.state == "unresponsive" and silent > 2 * timeout):
                # Thespian reports a dead child within milliseconds, but it can miss one
                # (two children dying at once): a tick later, act as its report would.
                # A process we killed that never went away is given up on as well.
                self._exit_not_reported(child)
            elif child.gone_since or child.state == "unresponsive":
                continue  # it just exited, or we just killed it: its report is on its way
            elif silent > timeout:
                self._kill_unresponsive(child, silent)
            elif not child.ping_sent or now - child.ping_sent > timeout / 3:
                # One Ping in flight per child (resent now and then, in case one was
                # lost): a hung child's inbox must not fill with them.
                child.ping_sent = now
                self.send(child.address, Ping(child.init_id))
        self.wakeupAfter(self.spec.heartbeat_interval_s, payload="heartbeat")

    def on_Pong(self, msg: Pong, sender: Any) -> None:  # noqa: N802
        child = self._by_address(sender)
        if child is not None and msg.correlation_id == child.init_id:
            child.last_seen = time.monotonic()
            child.ping_sent = 0.0

    def _kill_unresponsive(self, child: _Child, silent_s: float) -> None:
        """SIGKILL a hung child by pid (a stopped process still holds its sockets) and let
        ``ChildActorExited`` restart it like a crashed one."""
        cause = f"heartbeat missed for {silent_s:.1f} s"
        self.log.error("child_unresponsive", child=child.spec.name, pid=child.pid, cause=cause)
        child.state = "unresponsive"
        child.kill_cause = cause
        self._report(child.info(self.name))
        # Its own children first noted, then everything killed: once it is gone they are
        # reparented and no longer findable as its descendants.
        victims = {child.pid, *descendants(child.pid), *child.below.values()}
        _kill(victims)

    def _exit_not_reported(self, child: _Child) -> None:
        """The child is gone but Thespian has not said so: handle it as its report would."""
        self.log.warning("child_exit_not_reported", child=child.spec.name, pid=child.pid)
        if child.below:
            self._end_orphans(child)
        # Thespian still counts it among our children, and would wait for it for ever
        # when we exit: tell it what its own report would have. Our handler ignores that
        # one (and any late real one): the child's address is cleared first.
        gone = child.address
        child.address = None
        self.send(self.myAddress, ChildActorExited(gone))
        self._failed(child, child.kill_cause or ("normal" if child.normal_exit
                                                 else "exited (not reported by Thespian)"))

    def _end_orphans(self, child: _Child) -> None:
        """A child supervisor is gone; SIGKILL what it left running (it cannot any more)."""
        left = {pid for pid in child.below.values() if _ours(pid)}
        child.below.clear()
        if left:
            self.log.warning("orphans_ended", child=child.spec.name, pids=sorted(left))
            _kill(left)

    def on_MessageFailed(self, msg: MessageFailed, sender: Any) -> None:  # noqa: N802
        """Record a poison message in the dead-letter table; a failed Init fails the child."""
        self.log.error("dead_letter", failed_actor=msg.actor, message_type=msg.message_type,
                       error=msg.error.strip().splitlines()[-1:] or "")
        try:
            self._dead_letter_store().record(
                at_ms=int(time.time() * 1000), actor=msg.actor, message_type=msg.message_type,
                message=msg.message, error=msg.error,
            )
        except Exception:
            self.log.exception("dead_letter_not_recorded")
        child = self._by_address(sender)
        if child is not None and msg.message_type == "Init" and child.address is not None:
            self.send(child.address, ActorExitRequest())  # -> ChildActorExited -> restart

    def _dead_letter_store(self) -> Any:
        if self._dead_letters is None:
            from storage.deadletters import SQLiteDeadLetters

            assert self.settings is not None
            self._dead_letters = SQLiteDeadLetters(self.settings.data_path / "system.sqlite")
        return self._dead_letters

    # --- directory (reported up to the root) ----------------------------------------

    def _report(self, info: ActorInfo) -> None:
        if self.is_root:
            self._record(info)
        elif self.supervisor is not None:
            self.send(self.supervisor, ChildUp(info))

    def on_ChildUp(self, msg: ChildUp, sender: Any) -> None:  # noqa: N802
        child = self._by_address(sender)
        if child is not None and msg.info.pid:
            child.below[msg.info.name] = msg.info.pid
        self._report(msg.info)

    def _record(self, info: ActorInfo) -> None:
        self.directory[info.name] = info
        if info.role == "supervisor" and info.state != "running":
            # Its whole subtree went with it.
            for other in list(self.directory.values()):
                if other.supervisor == info.name and other.state == "running":
                    self._record(replace(other, state="restarting", address=None))
        self._broadcast_peers()

    def _broadcast_peers(self) -> None:
        by_role: dict[str, list[Any]] = {}
        for info in sorted(self.directory.values(), key=lambda i: i.name):
            if info.state == "running" and info.address is not None and info.role != "supervisor":
                by_role.setdefault(info.role, []).append(info.address)
        peers = Peers(tuple((role, tuple(addrs)) for role, addrs in sorted(by_role.items())))
        if peers == self._last_peers:
            return
        self._last_peers = peers
        for addrs in by_role.values():
            for addr in addrs:
                self.send(addr, peers)

    def _live(self, role: str) -> list[Any]:
        return [i.address for i in sorted(self.directory.values(), key=lambda i: i.name)
                if i.role == role and i.state == "running" and i.address is not None]

    # --- answers and routing (root) -------------------------------------------------

    def on_StatusRequest(self, msg: StatusRequest, sender: Any) -> None:  # noqa: N802
        own = ActorInfo(self.name, "supervisor", os.getpid(), 0,
                        "running" if self.spec else "starting", "")
        actors = (own, *sorted(self.directory.values(), key=lambda i: i.name))
        dead = 0
        try:
            if self.settings is not None:
                dead = self._dead_letter_store().count()
        except Exception:
            self.log.exception("dead_letters_unreadable")
        self.send(sender, StatusReport(msg.correlation_id,
                                       tuple(replace(a, address=None) for a in actors),
                                       self.started_at_ms, dead))

    def on_PredictRequest(self, msg: PredictRequest, sender: Any) -> None:  # noqa: N802
        self._route("predictor", msg, sender,
                    PredictionError(msg.correlation_id, "no predictor is running", 503))

    def on_TrainRequest(self, msg: TrainRequest, sender: Any) -> None:  # noqa: N802
        self._route("learner", msg, sender,
                    TrainResult(msg.correlation_id, None, False, (), "no learner is running"))

    def on_RollbackRequest(self, msg: RollbackRequest, sender: Any) -> None:  # noqa: N802
        self._route("publisher", msg, sender,
                    RollbackResult(msg.correlation_id, msg.version, False, None,
                                   "no publisher is running"))

    def _route(self, role: str, msg: Any, sender: Any, unavailable: Any) -> None:
        live = self._live(role)
        if not live:
            self.send(sender, unavailable)
            return
        target = live[next(self._round_robin) % len(live)]
        self.send(target, Forwarded(msg, sender))

    def on_Ping(self, msg: Ping, sender: Any) -> None:  # noqa: N802
        self.send(sender, Pong(msg.correlation_id, self.name, os.getpid()))

    def on_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:  # noqa: N802
        self.stopping = True
        self.log.info("supervisor_stopping")

    def _by_address(self, address: Any) -> _Child | None:
        if address is None:
            return None
        for child in self.children:
            if child.address is not None and child.address == address:
                return child
        return None


def _ours(pid: int) -> bool:
    """Whether ``pid`` is a live process of our own process group (not a reused pid)."""
    try:
        return pid > 0 and pid != os.getpid() and os.getpgid(pid) == os.getpgrp()
    except ProcessLookupError:
        return False


def _kill(pids: set[int]) -> None:
    for pid in pids:
        if _ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
