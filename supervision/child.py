"""What a supervisor knows of each child: one mutable record per child (its own state)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from messages.protocol import ActorInfo
from supervision.policy import backoff_delay
from supervision.spec import ChildSpec, SupervisorSpec

__all__ = ["REACHABLE", "Child", "standby_spec"]

#: States whose actors hear their peers' news (a standby must follow the champion too);
#: only ``running`` ones are sent work.
REACHABLE = ("running", "standby")


@dataclass
class Child:
    """One child of a supervisor (or one standby slot) and its incarnation's state."""

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
    failed_at: float = 0.0  # when its failure was handled; 0 once a replacement runs
    started_at: float = 0.0  # when its Init (or Activate) was sent
    ready_at: float = 0.0  # when its Ready arrived; 0 until then
    via_standby: bool = False  # its current incarnation is a promoted standby
    node: str = ""  # the node its current incarnation was placed on ("": not placed)
    moving_since: float = 0.0  # asked to stop so it can start again on its home node
    restart_times: list[float] = field(default_factory=list)  # its own: paces its backoff
    # A child supervisor's own descendants (name -> pid, from the ChildUp it sends up):
    # a supervisor that dies abruptly leaves them running, so we end them.
    below: dict[str, int] = field(default_factory=dict)
    below_nodes: dict[str, str] = field(default_factory=dict)  # name -> node, where not ours
    notes: dict[str, Any] = field(default_factory=dict)  # its own WorkerNotes, for status

    def backoff_history(self, reset_s: float) -> list[float]:
        """The restarts that pace its next backoff, cleared first if it was alive ``reset_s``
        or longer after its Ready (its last Pong counts, not the kill of a hung child):
        Akka's autoReset, a stable run is not a crash loop, so its backoff starts over."""
        if self.ready_at and self.last_seen - self.ready_at >= reset_s:
            self.restart_times.clear()
        return self.restart_times

    def next_backoff(self, now: float, *, period_s: float, reset_s: float,
                     backoff_min_s: float, backoff_max_s: float,
                     rng: random.Random | None = None) -> float:
        """Its own backoff (as Akka's BackoffSupervisor) before the restart it is about to
        get, which is recorded: paced by its restarts within ``period_s`` since its last
        stable run (``backoff_history``)."""
        history = [t for t in self.backoff_history(reset_s) if now - t <= period_s]
        delay = backoff_delay(history, now, period_s=period_s, backoff_min_s=backoff_min_s,
                              backoff_max_s=backoff_max_s, rng=rng)
        self.restart_times = [*history, now]
        return delay

    def info(self, supervisor: str) -> ActorInfo:
        """What the root's directory (and ``rml status``) shows of it."""
        return ActorInfo(self.spec.name, self.spec.role, self.pid, self.restarts, self.state,
                         supervisor, self.address if self.state in REACHABLE else None,
                         self.node, tuple(sorted(self.notes.items())))


def standby_spec(spec: SupervisorSpec, n: int) -> ChildSpec:
    """Standby slot ``n``'s spec: a copy of the first child of the standby role, renamed."""
    template = next(c for c in spec.children if c.role == spec.standby_role)
    return replace(template, name=f"{template.role}-standby-{n}")
