"""The root's directory of every actor below it: for ``status``, peers and routing."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from messages.protocol import ActorInfo, Peers
from supervision.child import REACHABLE

__all__ = ["Directory"]


class Directory:
    """Every actor's latest ``ActorInfo``, by name (fed by ``ChildUp`` reports)."""

    def __init__(self) -> None:
        self._by_name: dict[str, ActorInfo] = {}

    def record(self, info: ActorInfo) -> None:
        """Take ``info``; a supervisor that stopped running took its whole subtree along."""
        self._by_name[info.name] = info
        if info.role == "supervisor" and info.state != "running":
            for other in list(self._by_name.values()):
                if other.supervisor == info.name and other.state in REACHABLE:
                    self.record(replace(other, state="restarting", address=None))

    def actors(self) -> tuple[ActorInfo, ...]:
        """Every actor, by name."""
        return tuple(sorted(self._by_name.values(), key=lambda i: i.name))

    def peers(self) -> Peers:
        """Who hears whose news: reachable workers (running ones and standbys) by role."""
        by_role: dict[str, list[Any]] = {}
        for info in self.actors():
            if info.state in REACHABLE and info.address is not None and info.role != "supervisor":
                by_role.setdefault(info.role, []).append(info.address)
        return Peers(tuple((role, tuple(addrs)) for role, addrs in sorted(by_role.items())))

    def live(self, role: str) -> list[Any]:
        """The addresses of ``role``'s running actors (standbys are never sent work)."""
        return [i.address for i in self.actors()
                if i.role == role and i.state == "running" and i.address is not None]
