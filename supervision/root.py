"""The root supervisor's services to the outside: the directory, status, routing, dead letters.

Only the root (``rml-root``, the one actor with a Thespian ``globalName``) keeps the
directory of every actor below (fed by ``ChildUp``), tells workers where their peers are,
answers ``StatusRequest`` and routes requests from outside (``PredictRequest``,
``TrainRequest``, ``RollbackRequest``) to a live worker of the right role.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from thespian.actors import ActorSystemConventionUpdate, ChildActorExited

from actors.base import NODE_CAPABILITY
from config.settings import Settings
from messages.protocol import (
    ActorInfo,
    EndStaleWorkers,
    Forwarded,
    Init,
    LeaveAccepted,
    LeaveRequest,
    Nodes,
    Peers,
    Ping,
    Pong,
    PredictionError,
    PredictRequest,
    Ready,
    RollbackRequest,
    RollbackResult,
    StaleWorkersEnded,
    StatusReport,
    StatusRequest,
    TrainRequest,
    TrainResult,
)
from supervision.child import Child
from supervision.directory import Directory
from supervision.node_agent import AGENT_CLASS
from supervision.nodes import Member, Membership
from supervision.spec import SupervisorSpec

__all__ = ["RootServices"]


class RootServices:
    """Mixed into ``Supervisor``; these handlers only ever run in the root."""

    # Provided by the Supervisor (annotations only: nothing here shadows the actor's own).
    name: str
    settings: Settings | None
    spec: SupervisorSpec | None
    log: Any
    send: Callable[[Any, Any], None]
    directory: Directory
    started_at_ms: int
    _last_peers: Peers | None
    _round_robin: Iterator[int]
    _dead_letters: Any
    _store_backend: Any
    children: list[Child]
    nodes: Nodes
    local_node: str
    membership: Membership | None
    createActor: Callable[..., Any]
    notifyOnSystemRegistrationChanges: Callable[[bool], None]
    myAddress: Any

    def _dead_letter_store(self) -> Any:
        if self._dead_letters is None:
            from storage.backend import ACTOR_CONNECT_WAIT_S, StoreBackend

            assert self.settings is not None
            if self._store_backend is None:  # one, kept: its connection may still be coming
                self._store_backend = StoreBackend(self.settings,
                                                   connect_wait_s=ACTOR_CONNECT_WAIT_S)
            self._dead_letters = self._store_backend.deadletters()
        return self._dead_letters

    def _record(self, info: ActorInfo) -> None:
        self.directory.record(info)
        peers = self.directory.peers()
        if peers == self._last_peers:
            return
        self._last_peers = peers
        for _role, addresses in peers.by_role:
            for address in addresses:
                self.send(address, peers)

    # --- nodes (``supervision.nodes``) ------------------------------------------------

    def _watch_nodes(self, settings: Settings) -> None:
        """Root: keep the membership, hear of members joining and leaving."""
        self.membership = Membership(settings)
        self.notifyOnSystemRegistrationChanges(True)

    def on_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate,  # noqa: N802
                                       sender: Any) -> None:
        if self.membership is None:
            return
        if msg.remoteAdded:
            member = self.membership.joined(msg.remoteAdminAddress, msg.remoteCapabilities or {})
            refused = self.membership.refused.get(str(msg.remoteAdminAddress))
            if refused is not None:
                self.log.error("node_refused", member=refused.name, problem=refused.problem,
                               address=str(msg.remoteAdminAddress))
            if member is not None:
                self.log.info("node_joining", member=member.name, roles=list(member.roles),
                              address=str(member.admin))
                self._start_agent(member)
            return
        member = self.membership.left(msg.remoteAdminAddress)
        if member is not None:
            self._node_down(member, "left the actor system")

    def on_LeaveRequest(self, msg: LeaveRequest, sender: Any) -> None:  # noqa: N802
        """A member is stopping: re-place its replicas now, while they still serve."""
        member = None if self.membership is None else self.membership.members.get(msg.node)
        if member is not None:
            member.leaving = True
            self._node_down(member, "leaving (rml stop)")
        self.send(sender, LeaveAccepted(msg.correlation_id, msg.node))

    def _start_agent(self, member: Member) -> None:
        """Create ``member``'s NodeAgent there; the node is up once it answers (and has
        ended the workers an earlier tree left on it)."""
        if member.agent is not None:
            self.send(self.myAddress, ChildActorExited(member.agent))  # forget the old one
        member.agent_id = uuid.uuid4().hex
        member.agent_ready = False
        member.agent_started = time.monotonic()
        member.agent = self.createActor(AGENT_CLASS,
                                        targetActorRequirements={NODE_CAPABILITY: member.name})
        self.send(member.agent, Init(f"agent@{member.name}", "agent", member.settings,
                                     member.agent_id))

    def _agent_ready(self, msg: Ready, sender: Any) -> bool:
        member = None if self.membership is None else self.membership.by_agent(sender)
        if member is None:
            return False
        if msg.correlation_id == member.agent_id:
            member.agent_ready = True
            self.membership.seen(member)  # type: ignore[union-attr]
            if member.state != "up":
                self.send(sender, EndStaleWorkers(member.agent_id))
        return True

    def on_StaleWorkersEnded(self, msg: StaleWorkersEnded, sender: Any) -> None:  # noqa: N802
        member = None if self.membership is None else self.membership.by_agent(sender)
        if member is None or msg.correlation_id != member.agent_id or member.state == "up":
            return
        assert self.membership is not None
        self.membership.up(member)
        self.log.info("node_up", member=member.name, roles=list(member.roles),
                      stale_workers_ended=list(msg.pids))
        self._broadcast_nodes()

    def _agent_pong(self, msg: Pong, sender: Any) -> bool:
        member = None if self.membership is None else self.membership.by_agent(sender)
        if member is None:
            return False
        if msg.correlation_id == member.agent_id:
            self.membership.seen(member)  # type: ignore[union-attr]
        return True

    def _agent_exited(self, address: Any) -> bool:
        """A member's agent exited while its admin lives (a crash): start another; the node
        stays as it was meanwhile (its silence, if it lasts, takes it down)."""
        member = None if self.membership is None else self.membership.by_agent(address)
        if member is None:
            return False
        member.agent = None
        if member.listed and not getattr(self, "stopping", False):
            self.log.warning("node_agent_exited", member=member.name)
            self._start_agent(member)
        return True

    def _check_nodes(self, now: float, stalled: bool) -> None:
        """Root's heartbeat: ping each member's agent; one silent past the timeout takes its
        node down; a node down (or joining) that Thespian still lists gets another agent."""
        if self.membership is None or self.spec is None:
            return
        timeout = self.spec.policy.heartbeat_timeout_s
        for member in list(self.membership.members.values()):
            if stalled:
                member.last_seen, member.ping_sent = now, 0.0
            if member.state == "up":
                silent = now - member.last_seen
                if silent > timeout:
                    self._node_down(member, f"its agent was silent for {silent:.1f} s")
                elif member.agent is not None and (
                        not member.ping_sent or now - member.ping_sent > timeout / 3):
                    member.ping_sent = now
                    self.send(member.agent, Ping(member.agent_id))
            elif member.listed and not member.leaving and now - member.agent_started > 2 * timeout:
                self._start_agent(member)  # the last attempt was lost: the node may be back

    def _node_down(self, member: Member, why: str) -> None:
        assert self.membership is not None
        agent = member.agent
        if not self.membership.down(member):
            return  # down already
        if agent is not None:
            self.send(self.myAddress, ChildActorExited(agent))  # Thespian forgets it
        member.agent_started = time.monotonic()
        self.log.warning("node_down", member=member.name, reason=why)
        self._broadcast_nodes()
        # A node refused because this one held its name (it restarted on another address
        # before this one was found dead) is admitted now.
        for waiting in [r for r in self.membership.refused.values() if r.name == member.name]:
            again = self.membership.joined(waiting.admin, {
                "rml.node": waiting.name, "rml.roles": waiting.roles,
                "rml.settings": waiting.settings})
            if again is not None:
                self.log.info("node_joining", member=again.name, address=str(again.admin))
                self._start_agent(again)

    def _broadcast_nodes(self) -> None:
        """The nodes changed: every supervisor reconciles its children with them."""
        assert self.membership is not None
        self.nodes = self.membership.snapshot()
        for child in self.children:
            if child.spec.role == "supervisor" and child.address is not None:
                self.send(child.address, self.nodes)

    def on_StatusRequest(self, msg: StatusRequest, sender: Any) -> None:  # noqa: N802
        own = ActorInfo(self.name, "supervisor", os.getpid(), 0,
                        "running" if self.spec else "starting", "", node=self.local_node)
        actors = (own, *self.directory.actors())
        dead = 0
        try:
            if self.settings is not None:
                dead = self._dead_letter_store().count()
        except Exception:
            self.log.exception("dead_letters_unreadable")
        nodes = () if self.membership is None else tuple(
            replace(n, settings=None, agent=None) for n in self.membership.snapshot().nodes)
        self.send(sender, StatusReport(msg.correlation_id,
                                       tuple(replace(a, address=None) for a in actors),
                                       self.started_at_ms, dead, nodes))

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
        live = self.directory.live(role)
        if not live:
            self.send(sender, unavailable)
            return
        target = live[next(self._round_robin) % len(live)]
        self.send(target, Forwarded(msg, sender))
