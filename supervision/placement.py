"""A supervisor's side of several nodes: member slots, re-placing, going home.

Mixed into ``Supervisor``. Every supervisor hears ``Nodes`` from the root (which keeps
the membership, ``supervision.nodes``) and reconciles its children with it:

- a member that is up gets its own slots of the supervisor's replicated role
  (``collector-1@b``), as many as its own settings ask for;
- a child on a node that is down is dropped (its process cannot be reached, let alone
  killed) and started again where ``choose_node`` says: a surviving node of its role;
- a child away from its home node goes home once that node is up again: it is asked to
  stop, and started there when its exit is reported;
- a slot that no node can host waits, ``unplaced``, for one;
- a member keeps its own warm standbys (``predictor-standby-1@b``), which replace its
  own replicas only, and wait (``unplaced``) while it is down.

Moving is not a failure: it counts towards no restart intensity.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from thespian.actors import ActorExitRequest

from config.settings import Settings
from messages.protocol import Nodes
from supervision.child import Child
from supervision.nodes import NODE_ROLE, node_slot_names, replica_count
from supervision.spec import ChildSpec, SupervisorSpec

__all__ = ["NodePlacement"]


class NodePlacement:
    """Mixed into ``Supervisor``: what it does when nodes join, go and come back."""

    # Provided by the Supervisor (annotations only).
    name: str
    spec: SupervisorSpec | None
    log: Any
    send: Callable[[Any, Any], None]
    children: list[Child]
    standbys: list[Child]
    nodes: Nodes
    local_node: str
    stopping: bool
    _start: Callable[[Child], None]
    _forget: Callable[[Child], None]
    _report: Callable[[Any], None]

    def on_Nodes(self, msg: Nodes, sender: Any) -> None:  # noqa: N802
        """Root (or parent) -> supervisor: the nodes changed; pass it down, then reconcile."""
        self.nodes = msg
        for child in self.children:
            if child.spec.role == "supervisor" and child.address is not None:
                self.send(child.address, msg)
        if self.spec is not None and not self.stopping:
            self._add_member_slots()
            self._reconcile()

    def _add_member_slots(self) -> None:
        """Each member that is up has its own slots of our replicated roles, as many as its
        settings ask for (more are added, fewer retire the extra ones)."""
        assert self.spec is not None
        for node in self.nodes.nodes:
            if node.leader or node.state != "up" or node.settings is None:
                continue
            for template in self.spec.replica_templates:
                hosts = NODE_ROLE.get(template.role) in node.roles
                wanted = node_slot_names(template.role, node.name,
                                         replica_count(node.settings, template.role)
                                         if hosts else 0)
                for child in [c for c in self.children
                              if c.spec.home == node.name and c.spec.role == template.role
                              and c.spec.name not in wanted]:
                    self._retire(child)
                have = {c.spec.name for c in self.children}
                for name in wanted:
                    if name not in have:
                        self._insert(Child(spec=replace(template, name=name, home=node.name),
                                           state="unplaced"))
                if template.role == self.spec.standby_role:
                    self._member_standbys(node.name, node.settings, template, hosts)

    def _member_standbys(self, node: str, settings: Settings, template: ChildSpec,
                         hosts: bool) -> None:
        """A member keeps the warm spares its own ``[supervision.<us>] standby`` asks for, on
        itself: a dead replica there is replaced by promoting one (no fork, no cold start)."""
        count = settings.supervision.policy(self.name).standby if hosts else 0
        wanted = [f"{template.role}-standby-{i}@{node}" for i in range(1, count + 1)]
        for slot in [s for s in self.standbys
                     if s.spec.home == node and s.spec.name not in wanted]:
            self.standbys.remove(slot)
            if slot.address is not None:
                self.send(slot.address, ActorExitRequest())
            slot.state = "stopped"
            self._report(slot.info(self.name))
        have = {s.spec.name for s in self.standbys}
        for name in wanted:
            if name not in have:
                slot = Child(spec=replace(template, name=name, home=node), state="unplaced")
                self.standbys.append(slot)
                self._report(slot.info(self.name))

    def _insert(self, child: Child) -> None:
        """Add a slot after the last one of its role (``rest_for_one`` keeps its order)."""
        last = max((i for i, c in enumerate(self.children) if c.spec.role == child.spec.role),
                   default=-1)
        self.children.insert(last + 1, child)
        self._report(child.info(self.name))

    def _retire(self, child: Child) -> None:
        """A member now asks for fewer replicas: this slot stops and is dropped."""
        self.children.remove(child)
        if child.address is not None:
            self.send(child.address, ActorExitRequest())
        child.state = "stopped"
        self._report(child.info(self.name))
        self.log.info("slot_retired", child=child.spec.name)

    def _reconcile(self) -> None:
        """Re-place the children on nodes that went, go home, place the unplaced; a
        standby waits on its own node only (dropped while it is down)."""
        for slot in self.standbys:
            node = self.nodes.get(slot.node) if slot.node else None
            if (slot.node not in ("", self.local_node) and (node is None or node.state != "up")
                    and (slot.address is not None or slot.state not in ("unplaced", "stopped"))):
                self._forget(slot)
                slot.state, slot.pid = "unplaced", 0
                self._report(slot.info(self.name))
            elif slot.state == "unplaced":
                self._start(slot)
        for child in list(self.children):
            node = self.nodes.get(child.node) if child.node else None
            remote = child.node not in ("", self.local_node)
            if remote and (node is None or node.state != "up") and (
                    child.address is not None or child.state in ("starting", "unresponsive")):
                self._node_lost(child)
            elif child.state == "unplaced":
                self._start(child)
            elif child.state == "running" and not child.moving_since and self._away(child):
                self._go_home(child)

    def _away(self, child: Child) -> bool:
        """Whether ``child`` runs away from its home node while that node can take it."""
        home = child.spec.home or self.local_node
        node = self.nodes.get(home)
        return (child.node != home and node is not None and node.state == "up"
                and NODE_ROLE.get(child.spec.role) in node.roles)

    def _node_lost(self, child: Child) -> None:
        """``child``'s node is down: drop the incarnation there and place it again."""
        self.log.warning("child_failed", child=child.spec.name, cause=f"node {child.node} down",
                         pid=child.pid, on_node=child.node)
        self._forget(child)
        child.restarts += 1
        child.failed_at = child.failed_at or time.monotonic()
        self._start(child)

    def _go_home(self, child: Child) -> None:
        """Stop ``child`` where it runs; its exit report starts it at home."""
        self.log.info("child_going_home", child=child.spec.name, on_node=child.node,
                      home=child.spec.home or self.local_node)
        child.moving_since = time.monotonic()
        child.expected_exit = True
        child.state = "moving"
        self._report(child.info(self.name))
        if child.address is not None:
            self.send(child.address, ActorExitRequest())
