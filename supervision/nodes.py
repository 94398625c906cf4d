"""The nodes of one actor system on several hosts: membership (the root's) and placement.

Thespian's own multi-system support does the joining: a member admin started with the
leader's address as its ``Convention Address.IPv4`` capability registers with the leader,
and the root, which asked ``notifyOnSystemRegistrationChanges``, hears of it
(``ActorSystemConventionUpdate``). A member's capabilities name it (``rml.node``), say what
it may host (``rml.roles``) and carry its own settings (``rml.settings``: its ports,
tokens, store and replica counts), which the actors placed there run with.

Thespian notices a member that died only after several missed re-registrations, and a
send to an actor on a dead host vanishes without an error; so liveness is the project's
own: the root pings a ``NodeAgent`` on each member every heartbeat, and a node whose agent
is silent past the root's heartbeat timeout is declared down. While Thespian still lists a
node that is down, the root tries again to start an agent there every timeout: a node that
was only unreachable comes back up that way.

Placement is a pure function of the slots and the nodes: a slot of a replicated role
(``collector-2@b``) belongs to its home node and runs there while that node is up; while it
is down the slot runs on the up node of that role with the fewest slots (the leader first
on a tie), and it goes home when its node is up again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from config.settings import Settings
from messages.protocol import NodeInfo, Nodes

__all__ = [
    "NODE_ROLE",
    "Member",
    "Membership",
    "choose_node",
    "node_slot_names",
    "replica_count",
    "storage_identity",
]

#: The child role -> the ``[cluster] roles`` entry a node needs to host it.
NODE_ROLE = {"collector": "collector", "predictor": "predictor"}


def replica_count(settings: Settings, role: str) -> int:
    """How many replicas of ``role`` a node with these settings hosts."""
    return settings.ingest.collectors if role == "collector" else settings.predict.replicas


def node_slot_names(role: str, node: str, count: int) -> list[str]:
    """A member's slots of ``role``: ``collector-1@b``, ``collector-2@b``, ..."""
    return [f"{role}-{i}@{node}" for i in range(1, count + 1)]


def storage_identity(settings: Settings) -> tuple[str, ...]:
    """What two nodes must agree on to share one store."""
    storage = settings.storage
    if storage.backend == "couchbase":
        cb = storage.couchbase
        return ("couchbase", cb.connection_string, cb.bucket, cb.scope)
    return ("sqlite", str(settings.data_path))


def choose_node(role: str, home: str, nodes: Mapping[str, NodeInfo],
                load: Mapping[str, int]) -> str | None:
    """Where a slot of ``role`` homed on ``home`` runs now: home while it is up and hosts the
    role, else the up node of that role with the least ``load`` (its slots placed), the
    leader first on a tie; None when no node can host it."""
    wanted = NODE_ROLE.get(role)
    if wanted is None:
        return home  # the single workers and supervisors stay where their supervisor is
    own = nodes.get(home)
    if own is not None and own.state == "up" and wanted in own.roles:
        return home
    candidates = [n for n in nodes.values() if n.state == "up" and wanted in n.roles]
    if not candidates:
        return None
    return min(candidates, key=lambda n: (load.get(n.name, 0), not n.leader, n.name)).name


@dataclass
class Member:
    """What the root knows of one node (mutable: the root's own state)."""

    name: str
    roles: tuple[str, ...]
    leader: bool
    settings: Settings
    state: str = "joining"
    admin: Any = None  # its admin's Thespian address (None for the leader itself)
    joined_at_ms: int = 0
    last_seen_ms: int = 0
    last_seen: float = 0.0  # monotonic: its agent's last answer
    listed: bool = True  # Thespian's convention lists it
    leaving: bool = False  # its `rml stop` said so: no agent is started there again
    problem: str = ""
    agent: Any = None
    agent_id: str = ""
    agent_started: float = 0.0  # monotonic: when the current agent was asked for
    agent_ready: bool = False
    ping_sent: float = 0.0

    def info(self) -> NodeInfo:
        return NodeInfo(self.name, self.roles, self.leader, self.state, self.joined_at_ms,
                        self.last_seen_ms, "" if self.admin is None else str(self.admin),
                        self.problem, self.settings, self.agent)


class Membership:
    """The root's table of nodes: the leader (itself) and every member that joined."""

    def __init__(self, settings: Settings) -> None:
        now_ms = int(time.time() * 1000)
        self.leader = Member(settings.node_name, settings.cluster.roles, True, settings,
                             state="up", joined_at_ms=now_ms, last_seen_ms=now_ms)
        self.members: dict[str, Member] = {}
        self.refused: dict[str, Member] = {}  # by admin address (as text): kept for status
        self._storage = storage_identity(settings)

    def all(self) -> list[Member]:
        return [self.leader, *sorted(self.members.values(), key=lambda m: m.name),
                *self.refused.values()]

    def snapshot(self) -> Nodes:
        self.leader.last_seen_ms = int(time.time() * 1000)
        return Nodes(tuple(m.info() for m in self.all()))

    def by_agent(self, address: Any) -> Member | None:
        if address is None:
            return None
        return next((m for m in self.members.values() if m.agent == address), None)

    def by_admin(self, address: Any) -> Member | None:
        return next((m for m in self.members.values() if m.admin == address), None)

    def joined(self, admin: Any, capabilities: Mapping[str, Any]) -> Member | None:
        """A member's admin registered: the node to start an agent on, or None (refused or
        already up with a live agent; a refusal is kept, with its reason, for ``status``)."""
        name = capabilities.get("rml.node")
        settings = capabilities.get("rml.settings")
        roles = tuple(capabilities.get("rml.roles") or ())
        if not isinstance(name, str) or not isinstance(settings, Settings):
            return None  # not one of ours (a plain Thespian system joined)
        current = self.members.get(name)
        problem = ""
        if name == self.leader.name:
            problem = f"node name {name!r} is the leader's own"
        elif current is not None and current.admin != admin and current.state == "up":
            problem = f"node name {name!r} is taken by the node at {current.admin}"
        elif storage_identity(settings) != self._storage:
            problem = ("its store is not the leader's: "
                       f"{'/'.join(storage_identity(settings))} against "
                       f"{'/'.join(self._storage)}")
        if problem:
            self.refused[str(admin)] = Member(name, roles, False, settings, state="refused",
                                              admin=admin, problem=problem)
            return None
        self.refused.pop(str(admin), None)
        if current is not None and current.admin == admin and current.state in ("up",
                                                                                "joining"):
            current.settings, current.roles = settings, roles  # its capabilities changed
            current.listed = True
            return None
        member = Member(name, roles, False, settings, state="joining", admin=admin)
        self.members[name] = member
        return member

    def left(self, admin: Any) -> Member | None:
        """A member's admin left the convention (a clean stop, or Thespian gave up on it):
        the member, for the root to take down, or None when it was not one of ours."""
        self.refused.pop(str(admin), None)
        member = self.by_admin(admin)
        if member is None:
            return None
        member.listed = False
        return member

    def up(self, member: Member) -> None:
        now_ms = int(time.time() * 1000)
        member.state, member.joined_at_ms, member.last_seen_ms = "up", now_ms, now_ms
        member.last_seen = time.monotonic()

    def down(self, member: Member) -> bool:
        """Mark ``member`` down; True when it was not already."""
        if member.state == "down":
            return False
        member.state = "down"
        member.agent, member.agent_id, member.agent_ready = None, "", False
        return True

    def seen(self, member: Member) -> None:
        member.last_seen = time.monotonic()
        member.last_seen_ms = int(time.time() * 1000)
        member.ping_sent = 0.0


def placed_load(assignments: Iterable[str | None]) -> dict[str, int]:
    """How many slots each node runs (for ``choose_node``)."""
    load: dict[str, int] = {}
    for node in assignments:
        if node is not None:
            load[node] = load.get(node, 0) + 1
    return load


def with_state(nodes: Nodes, name: str, state: str) -> Nodes:
    """``nodes`` with ``name``'s state replaced (tests, and a supervisor's own suspicion)."""
    return Nodes(tuple(replace(n, state=state) if n.name == name else n for n in nodes.nodes))
