"""The Supervisor actor: starts its children, restarts what fails, escalates past its limit.

One mechanism for the whole tree. The root is a Supervisor created by the
launcher with a Thespian ``globalName``; it also keeps the directory of live
actors, answers ``status`` and routes requests from outside to a live worker
(``supervision.root``).

Liveness (``supervision.liveness``): a crash is reported by Thespian
(``ChildActorExited``), a hang is not, so every ``heartbeat_interval_s`` a
supervisor pings each child and SIGKILLs by pid one silent past its timeout; it is
restarted through the same path as a crash, with the cause logged.

Standbys: a supervisor of a replicated role (``standby_role``) keeps ``standby``
warm spares, started with ``Init(standby=True)`` (stores open, model loaded, no
port). A dead child of that role is replaced by sending a spare ``Activate``
(milliseconds) instead of starting a new actor (a fork and a cold start); a new
spare is warmed once the promoted one answers.

Nodes (``supervision.nodes``, ``supervision.placement``): on several hosts, the ingest
and serving supervisors also place replicas on member nodes (by the ``rml.node``
capability), re-place the ones of a node that goes down and send them home when it is
back; a child on another node is never killed by pid here (its node's agent does it).
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, PoisonMessage, WakeupMessage

from actors import metrics
from actors.base import NODE_CAPABILITY, ReactiveActor
from config.settings import Settings
from messages.protocol import (
    Activate,
    ActorInfo,
    ChildUp,
    EndProcesses,
    Init,
    MessageFailed,
    NodeInfo,
    Nodes,
    Peers,
    Ping,
    Pong,
    Ready,
    StartSystem,
    StoppingNormally,
    SystemStarted,
    WorkerNote,
)
from runtime.group import descendants, process_alive, set_process_name
from runtime.logs import configure_logging, get_logger
from supervision.child import Child, standby_spec
from supervision.directory import Directory
from supervision.liveness import PINGED_STATES, judge, kill_ours, ours
from supervision.nodes import choose_node, placed_load
from supervision.placement import NodePlacement
from supervision.policy import decide_restart
from supervision.preload import module_of, preload
from supervision.root import RootServices
from supervision.spec import ROOT_NAME, SupervisorSpec, system_tree

__all__ = ["ROOT_NAME", "Supervisor"]

# A standby that cannot start is warmed again no faster than this (a fork each time).
_STANDBY_BACKOFF_MIN_S = 0.1
_STANDBY_BACKOFF_MAX_S = 1.0
# A child placed on another node that has not answered its Init within this long is as good
# as lost (a create aimed at a node that just died vanishes): it is placed again.
_REMOTE_START_TIMEOUT_S = 15.0
# A remote child's exit is acted on after at least this long (``_failed``).
_REMOTE_RESTART_DELAY_S = 0.1
#: States of a child that waits for a node to run on, or is on its way to one.
_SETTLED = ("running", "unplaced")


class Supervisor(RootServices, NodePlacement, ReactiveActor):
    """OTP-style supervisor (one_for_one, one_for_all, rest_for_one) with intensity and backoff."""

    def __init__(self) -> None:
        super().__init__()
        self.spec: SupervisorSpec | None = None
        self.settings: Settings | None = None
        self.children: list[Child] = []
        # Warm spares of the spec's standby role, in slots named ``<role>-standby-<n>``.
        self.standbys: list[Child] = []
        # Restart intensity is the supervisor's, as in OTP: all its children's restarts count.
        # ... counted per node a child belongs to: a member's replicas crash-looping escalate
        # as its own supervisor would, and N nodes do not make N times the restarts count.
        self.restart_times: dict[str, list[float]] = {}
        self.is_root = False
        self.announced = False
        self.stopping = False
        self._start_reply: tuple[Any, str] | None = None  # root: (launcher, correlation id)
        self._init_id: str | None = None
        # Root only: the directory of every actor below, and routing state.
        self.directory = Directory()
        self.started_at_ms = int(time.time() * 1000)
        self._last_peers: Peers | None = None
        self._round_robin = itertools.count()
        self._dead_letters: Any = None
        self._store_backend: Any = None
        self._last_tick = 0.0
        # The nodes (from the root's Nodes; at first this node alone) and this node's name.
        self.nodes = Nodes(())
        self.local_node = ""
        self.membership: Any = None  # root only: supervision.nodes.Membership

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
        self._watch_nodes(msg.settings)

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
        set_process_name(f"rml-sup:{name}")  # what ps shows (not rml:, a worker's prefix)
        configure_logging(settings.log_dir, settings.log_level, actor=name)
        self.log = get_logger(actor=name, role="supervisor")
        self.children = [Child(spec=c) for c in spec.children]
        policy = spec.policy
        self.standbys = ([Child(spec=standby_spec(spec, n)) for n in range(1, policy.standby + 1)]
                         if spec.standby_role else [])
        self.local_node = settings.node_name
        if not self.nodes.nodes:
            self.nodes = Nodes((NodeInfo(self.local_node, settings.cluster.roles, True, "up",
                                         self.started_at_ms, self.started_at_ms,
                                         settings=settings),))
        self.log.info("supervisor_started", strategy=policy.strategy,
                      children=[c.name for c in spec.children], standbys=policy.standby,
                      max_restarts=policy.max_restarts, period_s=policy.period_s)
        preload(module_of(c.actor_class) for c in spec.children)
        _declare_metrics(name, spec)
        for child in (*self.children, *self.standbys):
            self._start(child)
        self._last_tick = time.monotonic()
        self.wakeupAfter(spec.heartbeat_interval_s, payload="heartbeat")

    def _start(self, child: Child) -> None:
        assert self.settings is not None
        child.state = "starting"
        child.expected_exit = False
        child.normal_exit = False
        child.kill_cause = ""
        child.ping_sent = 0.0
        child.gone_since = 0.0
        child.ready_at = 0.0
        child.init_id = uuid.uuid4().hex
        child.started_at = time.monotonic()
        child.moving_since = 0.0
        child.notes = {}  # a new incarnation reports its own
        target = self._standby_target(child) if child in self.standbys else self._target(child)
        if target is None:
            # No node hosts its role now: it waits for one to join (``_reconcile``).
            child.state, child.node, child.address, child.pid = "unplaced", "", None, 0
            self._report(child.info(self.name))
            self.log.warning("child_unplaced", child=child.spec.name, role=child.spec.role)
            return
        child.node = target
        standby = self._ready_standby(child)
        child.via_standby = standby is not None
        if standby is None and target != self.local_node:
            self._start_remote(child, target)
            return
        if standby is not None:
            # Promotion: one message to a process that is already up and loaded.
            child.address, child.pid, child.last_seen = (standby.address, standby.pid,
                                                         time.monotonic())
            standby.address, standby.pid, standby.state = None, 0, "refilling"
            # The Activate first: the report and the log line can wait a millisecond.
            self.send(child.address, Activate(child.spec.name, child.spec.role, child.init_id))
            self._report(standby.info(self.name))
            metrics.PROMOTIONS.labels(child.spec.role).inc()
            self.log.info("standby_promoting", child=child.spec.name, standby=standby.spec.name,
                          pid=child.pid)
            return
        child.address = self.createActor(child.spec.actor_class)
        is_standby = child in self.standbys
        self.send(child.address, Init(child.spec.name, child.spec.role, self.settings,
                                      child.init_id, spec=child.spec.spec, standby=is_standby))

    def _start_remote(self, child: Child, node: str) -> None:
        """Create ``child`` on another node (Thespian places it by the ``rml.node``
        capability) and send it that node's own settings."""
        info = self.nodes.get(node)
        assert info is not None and info.settings is not None
        child.address = self.createActor(child.spec.actor_class,
                                         targetActorRequirements={NODE_CAPABILITY: node})
        self.send(child.address, Init(child.spec.name, child.spec.role, info.settings,
                                      child.init_id, spec=child.spec.spec,
                                      standby=child in self.standbys))
        self.log.info("child_placed", child=child.spec.name, on_node=node, home=child.spec.home)

    def _target(self, child: Child) -> str | None:
        """The node ``child`` should run on now (``supervision.nodes.choose_node``)."""
        load = placed_load(c.node for c in self.children
                           if c is not child and c.spec.role == child.spec.role
                           and c.state not in ("unplaced", "stopped", "failed"))
        return choose_node(child.spec.role, child.spec.home or self.local_node,
                           {n.name: n for n in self.nodes.nodes}, load)

    def _standby_target(self, slot: Child) -> str | None:
        """A standby waits on its own node, and only while that node is up."""
        home = slot.spec.home or self.local_node
        node = self.nodes.get(home)
        return home if home == self.local_node or (node is not None and node.state == "up") \
            else None

    def _is_local(self, child: Child) -> bool:
        return child.node in ("", self.local_node)

    def _ready_standby(self, child: Child) -> Child | None:
        """A warm standby that can take ``child``'s place, if there is one."""
        assert self.spec is not None
        if child.spec.role != self.spec.standby_role or child in self.standbys:
            return None
        return next((s for s in self.standbys
                     if s.state == "standby" and s.address is not None and not s.gone_since
                     and s.node == child.node
                     and (not self._is_local(s) or process_alive(s.pid))), None)

    def _refill_standbys(self, states: tuple[str, ...] = ("refilling",)) -> None:
        """Start a new standby in each empty slot: ``refilling`` after a promotion,
        ``restarting`` after a standby's death (once its backoff is over)."""
        if self.stopping:
            return
        for slot in self.standbys:
            if slot.state in states and slot.address is None:
                self._start(slot)

    def on_Ready(self, msg: Ready, sender: Any) -> None:  # noqa: N802
        if self.is_root and self._agent_ready(msg, sender):
            return
        child = self._by_address(sender)
        if child is None or msg.correlation_id != child.init_id:
            return  # a late answer from an incarnation we already replaced
        if child.expected_exit:
            return  # asked to exit while starting: it is not running, its group restart is due
        child.pid = msg.pid
        child.state = "standby" if child in self.standbys else "running"
        child.last_seen = child.ready_at = now = time.monotonic()
        self.log.info("child_running", child=child.spec.name, pid=msg.pid,
                      restarts=child.restarts, state=child.state)
        if child.failed_at and child.state == "running":
            # From its exit (as reported to us) to its replacement answering Init/Activate.
            self.log.info("child_replaced", child=child.spec.name, role=child.spec.role,
                          down_ms=round((now - child.failed_at) * 1000, 1),
                          via="standby" if child.via_standby else "start")
            child.failed_at = 0.0
        self._report(child.info(self.name))
        if child.spec.role == "supervisor" and self.is_root and len(self.nodes.nodes) > 1:
            self.send(child.address, self.nodes)  # a restarted subtree learns the nodes
        self._maybe_announce()
        # Warm a new spare only now: forking one (tens of ms, in this process) must not
        # delay the promoted child's answer above.
        self._refill_standbys()

    def _maybe_announce(self) -> None:
        """Once every child runs, tell whoever started us (parent, or the launcher)."""
        if not all(c.state in _SETTLED for c in self.children):
            return
        if not self.announced and not all(s.state == "standby" for s in self.standbys):
            return  # the first time, "started" includes the warm spares
        if self.is_root:
            if self._start_reply is not None:
                launcher, correlation_id = self._start_reply
                self._start_reply = None
                self.send(launcher, SystemStarted(correlation_id, True,
                                                  self.directory.actors()))
        elif self.supervisor is not None and self._init_id is not None:
            self.send(self.supervisor, Ready(self.name, "supervisor", os.getpid(),
                                             self._init_id))
        self.announced = True

    # --- failures ------------------------------------------------------------------

    def on_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:  # noqa: N802
        if self.is_root and self._agent_exited(msg.childAddress):
            return
        child = self._by_address(msg.childAddress)
        if child is None:
            return  # SIGTERM can report the same child twice: the second finds nothing
        child.address = None
        if child.below and not self.stopping:
            self._end_orphans(child)
        if self.stopping:
            child.state = "stopped"
            return
        if child.moving_since:
            self._start(child)  # stopped to go home: it starts there now
            return
        if child.expected_exit:
            child.state = "restarting"
            self._report(child.info(self.name))
            return  # stopped on purpose by one_for_all / rest_for_one; restarted with the group
        self._gone(child, "exited")

    def _gone(self, child: Child, unexplained: str) -> None:
        """``child`` exited (reported or not): a standby is warmed again, a child restarted
        with the cause we know (our kill, its own normal stop), else ``unexplained``."""
        if child in self.standbys:
            self._standby_failed(child)
            return
        self._failed(child, child.kill_cause or ("normal" if child.normal_exit else unexplained))

    def on_StoppingNormally(self, msg: StoppingNormally, sender: Any) -> None:  # noqa: N802
        child = self._by_address(sender)
        if child is not None:
            child.normal_exit = True

    def _failed(self, child: Child, cause: str) -> None:
        assert self.spec is not None
        spec, policy = child.spec, self.spec.policy
        self.log.warning("child_failed", child=spec.name, cause=cause, pid=child.pid)
        child.failed_at = child.failed_at or time.monotonic()
        if spec.restart == "temporary" or (spec.restart == "transient" and cause == "normal"):
            child.state = "stopped"
            self._report(child.info(self.name))
            return
        now = time.monotonic()
        # Intensity is the supervisor's (OTP): every child's restarts count against it.
        history = self.restart_times.setdefault(spec.home or self.local_node, [])
        decision = decide_restart(history, now, max_restarts=policy.max_restarts,
                                  period_s=policy.period_s, backoff_min_s=policy.backoff_min_s,
                                  backoff_max_s=policy.backoff_max_s)
        if not decision.restart:
            self._escalate(child, decision.recent)
            return
        metrics.RESTARTS.labels(spec.name, _cause_label(cause)).inc()
        # Backoff is the child's own: a predictor killed once does not wait because a
        # sibling was restarted a moment ago, nor because it was itself, after a stable run.
        delay_s = child.next_backoff(now, period_s=policy.period_s,
                                     reset_s=policy.backoff_reset_s,
                                     backoff_min_s=policy.backoff_min_s,
                                     backoff_max_s=policy.backoff_max_s)
        if not self._is_local(child) and self._ready_standby(child) is None:
            # A member whose admin stops without `rml stop` (which hands its replicas over
            # first) ends them a moment before Thespian says it left: wait for that word, so
            # that a new actor is not created on a node that is going. (A standby of its own
            # node is promoted at once: if the node is going, that fails fast too.)
            delay_s = max(delay_s, _REMOTE_RESTART_DELAY_S)
        history[:] = [*(t for t in history if now - t <= policy.period_s), now]
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

    def _standby_failed(self, slot: Child) -> None:
        """A standby died: warm another after its own backoff (no intensity: it served
        nothing, and a standby that cannot start must not take its supervisor down)."""
        assert self.spec is not None
        now = time.monotonic()
        self.log.warning("standby_failed", standby=slot.spec.name, pid=slot.pid)
        policy = self.spec.policy
        delay_s = slot.next_backoff(now, period_s=policy.period_s, reset_s=policy.backoff_reset_s,
                                    backoff_min_s=max(policy.backoff_min_s, _STANDBY_BACKOFF_MIN_S),
                                    backoff_max_s=max(policy.backoff_max_s, _STANDBY_BACKOFF_MAX_S))
        slot.restarts += 1
        slot.address, slot.pid, slot.state = None, 0, "restarting"
        self._report(slot.info(self.name))
        self.wakeupAfter(delay_s, payload="refill")

    def _restart_group(self, failed: Child) -> list[Child]:
        assert self.spec is not None
        if self.spec.policy.strategy == "one_for_all":
            return list(self.children)
        if self.spec.policy.strategy == "rest_for_one":
            return self.children[self.children.index(failed):]
        return [failed]

    def _restart(self, names: tuple[str, ...]) -> None:
        for child in self.children:
            if child.spec.name in names and child.state == "restarting":
                if child.address is not None and not child.expected_exit:
                    continue  # already restarted
                self._start(child)

    def _escalate(self, child: Child, recent: int) -> None:
        assert self.spec is not None
        self.log.error("restart_intensity_exceeded", child=child.spec.name, restarts=recent,
                       period_s=self.spec.policy.period_s)
        metrics.ESCALATIONS.labels(self.name).inc()
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
        elif payload == "refill":
            self._refill_standbys(("refilling", "restarting"))

    # --- liveness ------------------------------------------------------------------

    def _timeout(self, child: Child) -> float:
        assert self.spec is not None
        return child.spec.heartbeat_timeout_s or self.spec.policy.heartbeat_timeout_s

    def _heartbeat(self) -> None:
        """Ping every running child; kill the ones silent past their deadline."""
        assert self.spec is not None
        if self.stopping:
            return
        now = time.monotonic()
        stalled = now - self._last_tick > self.spec.policy.heartbeat_timeout_s
        if stalled:
            # We were stalled ourselves (stopped, or a slow handler): our children's
            # silence says nothing about them, so start their clocks afresh.
            for child in (*self.children, *self.standbys):
                child.last_seen, child.ping_sent = now, 0.0
        self._last_tick = now
        if self.is_root:
            self._check_nodes(now, stalled)
        for child in (*self.children, *self.standbys):
            local = self._is_local(child)
            if (child.state == "starting" and child.address is not None
                    and now - child.started_at > self._start_timeout(local)):
                # Its Init (or Activate) never came back Ready: it is as good as hung.
                child.last_seen = now  # the clock for giving up on its exit starts now
                self._kill_unresponsive(child, now - child.started_at, "never became ready")
                continue
            if child.moving_since and now - child.moving_since > 2 * self._timeout(child):
                # Asked to stop so it could go home, it did not: end it, start it at home.
                self.log.warning("child_move_forced", child=child.spec.name, on_node=child.node)
                if local and child.pid:
                    kill_ours({child.pid})
                self._forget(child)
                self._start(child)
                continue
            if child.address is None or child.state not in PINGED_STATES:
                continue
            if local and not child.gone_since and not process_alive(child.pid):
                child.gone_since = now  # (a pid on another host says nothing here)
            # A remote child gets twice the time: its node's own silence (the root's agent
            # ping, one timeout) is noticed first, and re-places all its replicas at once.
            timeout = self._timeout(child) * (1 if local else 2)
            verdict = judge(child, now, timeout, self.spec.heartbeat_interval_s)
            if verdict == "exit_not_reported":
                self._exit_not_reported(child)
            elif verdict == "kill":
                self._kill_unresponsive(child, now - child.last_seen)
            elif verdict == "ping":
                child.ping_sent = now
                self.send(child.address, Ping(child.init_id))
        self.wakeupAfter(self.spec.heartbeat_interval_s, payload="heartbeat")

    def on_Pong(self, msg: Pong, sender: Any) -> None:  # noqa: N802
        if self.is_root and self._agent_pong(msg, sender):
            return
        child = self._by_address(sender)
        if child is not None and msg.correlation_id == child.init_id:
            child.last_seen = time.monotonic()
            child.ping_sent = 0.0

    def _start_timeout(self, local: bool = True) -> float:
        assert self.settings is not None
        limit = self.settings.actor_system.start_timeout_s
        return limit if local else min(limit, _REMOTE_START_TIMEOUT_S)

    def _kill_unresponsive(self, child: Child, silent_s: float,
                           why: str = "heartbeat missed") -> None:
        """SIGKILL a hung child by pid (a stopped process still holds its sockets) and let
        ``ChildActorExited`` restart it like a crashed one."""
        cause = f"{why} for {silent_s:.1f} s"
        self.log.error("child_unresponsive", child=child.spec.name, pid=child.pid, cause=cause)
        metrics.HANGS.labels(child.spec.name).inc()
        child.state = "unresponsive"
        child.kill_cause = cause
        self._report(child.info(self.name))
        if not self._is_local(child):
            # A pid on another host: its node's agent kills it there.
            node = self.nodes.get(child.node)
            if child.pid and node is not None and node.agent is not None:
                self.send(node.agent, EndProcesses((child.pid,), f"{child.spec.name}: {cause}"))
            if child.address is not None:
                self.send(child.address, ActorExitRequest())
            return
        # Its own children first noted, then everything killed: once it is gone they are
        # reparented and no longer findable as its descendants.
        if child.pid:
            victims = {child.pid, *descendants(child.pid), *self._local_below(child)}
            kill_ours(victims)
            self._end_remote_below(child, cause)
        elif child.address is not None:
            self.send(child.address, ActorExitRequest())  # not Ready yet: no pid known

    def _exit_not_reported(self, child: Child) -> None:
        """The child is gone but Thespian has not said so: handle it as its report would."""
        self.log.warning("child_exit_not_reported", child=child.spec.name, pid=child.pid)
        if child.below:
            self._end_orphans(child)
        self._forget(child)
        self._gone(child, "exited (not reported by Thespian)")

    def _forget(self, child: Child) -> None:
        """Drop ``child``'s incarnation, gone without a report (or on a node that is gone).

        Thespian still counts it among our children, and would wait for it for ever when we
        exit: tell it what its own report would have. Our handler ignores that one (and any
        late real one): the child's address is cleared first."""
        gone = child.address
        child.address, child.moving_since = None, 0.0
        if gone is not None:
            self.send(self.myAddress, ChildActorExited(gone))

    def _end_orphans(self, child: Child) -> None:
        """A child supervisor is gone; SIGKILL what it left running (it cannot any more):
        here by pid, on other nodes through their agents."""
        left = {pid for pid in self._local_below(child) if ours(pid)}
        self._end_remote_below(child, f"left by {child.spec.name}, which is gone")
        child.below.clear()
        child.below_nodes.clear()
        if left:
            self.log.warning("orphans_ended", child=child.spec.name, pids=sorted(left))
            kill_ours(left)

    def _local_below(self, child: Child) -> list[int]:
        return [pid for name, pid in child.below.items()
                if child.below_nodes.get(name, self.local_node) == self.local_node]

    def _end_remote_below(self, child: Child, reason: str) -> None:
        """Ask each other node's agent to end what ``child`` had running there."""
        by_node: dict[str, list[int]] = {}
        for name, node in child.below_nodes.items():
            if node != self.local_node and name in child.below:
                by_node.setdefault(node, []).append(child.below[name])
        for node, pids in by_node.items():
            info = self.nodes.get(node)
            if info is not None and info.agent is not None:
                self.log.warning("orphans_ended", child=child.spec.name, on_node=node,
                                 pids=sorted(pids))
                self.send(info.agent, EndProcesses(tuple(sorted(pids)), reason))

    def on_MessageFailed(self, msg: MessageFailed, sender: Any) -> None:  # noqa: N802
        """Record a poison message in the dead-letter table; a failed Init fails the child."""
        self.log.error("dead_letter", failed_actor=msg.actor, message_type=msg.message_type,
                       error=msg.error.strip().splitlines()[-1:] or "")
        metrics.DEAD_LETTERS.labels(msg.actor if len(msg.actor) <= 64 else "other").inc()
        try:
            self._dead_letter_store().record(
                at_ms=int(time.time() * 1000), actor=msg.actor, message_type=msg.message_type,
                message=msg.message, error=msg.error,
            )
        except Exception:
            self.log.exception("dead_letter_not_recorded")
        child = self._by_address(sender)
        if (child is not None and msg.message_type in ("Init", "Activate")
                and child.address is not None and msg.actor == child.spec.name):
            # It could not start (or take a standby's place): -> ChildActorExited -> restart.
            # (Its own report: one it forwards about a child of its own is not about it.)
            self.send(child.address, ActorExitRequest())

    def on_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:  # noqa: N802
        """An Init that never reached its child (Thespian could not create it: a node that
        is going away): the child failed to start, whatever Thespian reports later."""
        child = self._by_address(sender)
        if child is not None and isinstance(msg.poisonMessage, Init | Activate):
            self.log.warning("child_not_created", child=child.spec.name, on_node=child.node,
                             error=str(msg.details).strip().splitlines()[-1:])
            self._forget(child)
            self._gone(child, "could not be created")
            return
        super().on_PoisonMessage(msg, sender)

    # --- directory (reported up to the root) ----------------------------------------

    def _report(self, info: ActorInfo) -> None:
        if self.is_root:
            self._record(info)
        elif self.supervisor is not None:
            self.send(self.supervisor, ChildUp(info))

    def on_WorkerNote(self, msg: WorkerNote, sender: Any) -> None:  # noqa: N802
        child = self._by_address(sender)
        if child is not None:
            child.notes[msg.key] = msg.value
            self._report(child.info(self.name))

    def on_ChildUp(self, msg: ChildUp, sender: Any) -> None:  # noqa: N802
        child = self._by_address(sender)
        if child is not None and msg.info.pid:
            child.below[msg.info.name] = msg.info.pid
            if msg.info.node and msg.info.node != self.local_node:
                child.below_nodes[msg.info.name] = msg.info.node
            else:
                child.below_nodes.pop(msg.info.name, None)
        self._report(msg.info)

    def on_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:  # noqa: N802
        self.stopping = True
        self.log.info("supervisor_stopping")

    def _by_address(self, address: Any) -> Child | None:
        if address is None:
            return None
        for child in (*self.children, *self.standbys):
            if child.address is not None and child.address == address:
                return child
        return None


def _declare_metrics(name: str, spec: SupervisorSpec) -> None:
    """This supervisor's series, at zero until something happens: a graph shows a flat line,
    not a gap, and a rate starts from the first event."""
    metrics.ESCALATIONS.labels(name).inc(0)
    if spec.standby_role:
        metrics.PROMOTIONS.labels(spec.standby_role).inc(0)
    for child in spec.children:
        metrics.RESTARTS.labels(child.name, "exited").inc(0)
        metrics.HANGS.labels(child.name).inc(0)
        metrics.DEAD_LETTERS.labels(child.name).inc(0)


def _cause_label(cause: str) -> str:
    """A restart's cause as a metric label: its kind, not its figures ("heartbeat missed for
    3.1 s" -> "heartbeat missed")."""
    return cause.split(" for ", 1)[0][:48] or "unexplained"
