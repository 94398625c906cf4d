"""Test-only actors for the supervision tests: workers that answer, crash on start, or choke.

They live in an importable module (not the test file's ``__main__``) because
Thespian creates actors by module path. Every worker answers ``Ping`` with a
``Pong`` carrying its pid (``Worker`` does that), which is how a test tells an
incarnation from its replacement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.base import Worker
from messages.protocol import Init
from supervision.spec import ChildSpec, Restart, Strategy, SupervisorSpec

__all__ = [
    "CRASH_ON_INIT",
    "ECHO",
    "POISON_ON_MESSAGE",
    "Boom",
    "CrashOnInit",
    "EchoWorker",
    "PoisonOnMessage",
    "child",
    "supervisor_spec",
]

ECHO = "tests.supervision_actors.EchoWorker"
CRASH_ON_INIT = "tests.supervision_actors.CrashOnInit"
POISON_ON_MESSAGE = "tests.supervision_actors.PoisonOnMessage"


@dataclass(frozen=True, slots=True)
class Boom:
    """A command ``PoisonOnMessage`` always fails on."""

    correlation_id: str


class EchoWorker(Worker):
    """A worker with no state: it starts, answers ``Ping`` with its pid, and nothing else."""

    role = "echo"


class CrashOnInit(Worker):
    """A worker whose start always fails, as if its store could not be opened."""

    role = "crash"

    def on_start(self, init: Init) -> None:
        raise RuntimeError(f"{init.name} cannot start")


class PoisonOnMessage(Worker):
    """A worker whose handler for ``Boom`` raises every time (a poison message)."""

    role = "poison"

    def on_Boom(self, msg: Boom, sender: Any) -> None:  # noqa: N802
        raise ValueError(f"boom {msg.correlation_id}")


def child(name: str, actor_class: str = ECHO, restart: Restart = "permanent") -> ChildSpec:
    """A leaf child spec for a test supervisor."""
    return ChildSpec(name=name, role="worker", actor_class=actor_class, restart=restart)


def supervisor_spec(*children: ChildSpec, strategy: Strategy = "one_for_one",
                    max_restarts: int = 5, period_s: float = 30.0) -> SupervisorSpec:
    """A test supervisor's spec with tiny backoffs, so restarts take milliseconds."""
    return SupervisorSpec(name="test-sup", children=children, strategy=strategy,
                          max_restarts=max_restarts, period_s=period_s,
                          backoff_min_s=0.0, backoff_max_s=0.05)
