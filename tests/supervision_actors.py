"""Test-only actors for the supervision tests: workers that answer, crash on start, or choke.

They live in an importable module (not the test file's ``__main__``) because
Thespian creates actors by module path. Every worker answers ``Ping`` with a
``Pong`` carrying its pid (``Worker`` does that), which is how a test tells an
incarnation from its replacement.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.base import Worker
from config.settings import Settings
from config.supervision import SupervisorPolicy
from messages.protocol import Init
from storage.errors import StoreUnavailable
from supervision.spec import SUPERVISOR_CLASS, ChildSpec, Restart, Strategy, SupervisorSpec

__all__ = [
    "CRASH_ON_INIT",
    "ECHO",
    "GATED",
    "LABOURER",
    "POISON_ON_MESSAGE",
    "QUITTER",
    "SPINNER",
    "STORE_DOWN",
    "StoreDown",
    "Boom",
    "CrashOnInit",
    "SERVE_FAILS_AS_STANDBY",
    "ServeFailsAsStandby",
    "EchoWorker",
    "Gated",
    "Labour",
    "Labourer",
    "LabourDone",
    "PoisonOnMessage",
    "Quit",
    "Quitter",
    "Spin",
    "Spinner",
    "child",
    "gate",
    "sub_supervisor",
    "supervisor_spec",
]

ECHO = "tests.supervision_actors.EchoWorker"
CRASH_ON_INIT = "tests.supervision_actors.CrashOnInit"
POISON_ON_MESSAGE = "tests.supervision_actors.PoisonOnMessage"
STORE_DOWN = "tests.supervision_actors.StoreDown"
SERVE_FAILS_AS_STANDBY = "tests.supervision_actors.ServeFailsAsStandby"
GATED = "tests.supervision_actors.Gated"
QUITTER = "tests.supervision_actors.Quitter"
SPINNER = "tests.supervision_actors.Spinner"
LABOURER = "tests.supervision_actors.Labourer"
GATE_TIMEOUT_S = 10.0


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


class ServeFailsAsStandby(Worker):
    """Starts fine, but cannot serve once promoted from standby (say its port is taken)."""

    role = "worker"

    def __init__(self) -> None:
        super().__init__()
        self.standby = False

    def on_start(self, init: Init) -> None:
        self.standby = init.standby

    def on_serve(self) -> None:
        if self.standby:
            raise RuntimeError("cannot serve: port taken")


@dataclass(frozen=True, slots=True)
class Quit:
    """Tells ``Quitter`` to stop on purpose (a normal exit)."""


class Quitter(Worker):
    """A worker that exits normally when told to (for ``transient`` restart types)."""

    role = "quitter"

    def on_Quit(self, msg: Quit, sender: Any) -> None:  # noqa: N802
        self.stop_normally()


class PoisonOnMessage(Worker):
    """A worker whose handler for ``Boom`` raises every time (a poison message)."""

    role = "poison"

    def on_Boom(self, msg: Boom, sender: Any) -> None:  # noqa: N802
        raise ValueError(f"boom {msg.correlation_id}")


class StoreDown(Worker):
    """A worker whose store is down until the test opens its "store" gate: its start fails
    with ``StoreUnavailable`` (each attempt counted in a file) and so does ``Boom``."""

    role = "store"

    def on_start(self, init: Init) -> None:
        attempts = gate(init.settings, init.name, "attempts")
        with attempts.open("a") as out:
            out.write(f"{os.getpid()}\n")
        if not gate(init.settings, init.name, "store").exists():
            raise StoreUnavailable("couchbase: unreachable (a test's outage)")
        gate(init.settings, init.name, "started").write_text(str(os.getpid()))

    def on_Boom(self, msg: Boom, sender: Any) -> None:  # noqa: N802
        raise StoreUnavailable(f"couchbase: unreachable while handling {msg.correlation_id}")


@dataclass(frozen=True, slots=True)
class Spin:
    """Tells ``Spinner`` to loop for ever inside its handler."""


class Spinner(Worker):
    """A worker that hangs in an endless loop when told to: alive, but answering nothing."""

    role = "spinner"

    def on_Spin(self, msg: Spin, sender: Any) -> None:  # noqa: N802
        while True:  # only SIGKILL ends this
            time.sleep(0.01)


@dataclass(frozen=True, slots=True)
class Labour:
    """Tells ``Labourer`` to work ``seconds`` inside one handler, then answer."""

    correlation_id: str
    seconds: float


@dataclass(frozen=True, slots=True)
class LabourDone:
    """``Labourer``'s answer once its long handler is over."""

    correlation_id: str
    pid: int


class Labourer(Worker):
    """A worker with a legitimately long handler (like the learner training)."""

    role = "labourer"

    def on_Labour(self, msg: Labour, sender: Any) -> None:  # noqa: N802
        time.sleep(msg.seconds)
        self.send(sender, LabourDone(msg.correlation_id, os.getpid()))


def gate(settings: Settings, name: str, stage: str) -> Path:
    """The file that lets ``Gated`` actor ``name`` finish ``stage`` ("start" or "stop")."""
    return settings.data_path / f"gate-{name}-{stage}"


def _wait_for_gate(path: Path) -> bool:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Gated(Worker):
    """A worker whose start and whose stop each wait until the test opens a gate (a file),
    like a store that is slow to open or to flush: it lets a test choose when they end."""

    role = "gated"

    def on_start(self, init: Init) -> None:
        if not _wait_for_gate(gate(init.settings, init.name, "start")):
            raise TimeoutError(f"{init.name}: start gate never opened")

    def on_stop(self) -> None:
        if self.settings is not None:
            _wait_for_gate(gate(self.settings, self.name, "stop"))


def child(name: str, actor_class: str = ECHO, restart: Restart = "permanent",
          heartbeat_timeout_s: float | None = None) -> ChildSpec:
    """A leaf child spec for a test supervisor."""
    return ChildSpec(name=name, role="worker", actor_class=actor_class, restart=restart,
                     heartbeat_timeout_s=heartbeat_timeout_s)


def supervisor_spec(*children: ChildSpec, strategy: Strategy = "one_for_one",
                    max_restarts: int = 5, period_s: float = 30.0,
                    backoff_min_s: float = 0.0, backoff_max_s: float = 0.05,
                    backoff_reset_s: float = 1.0, heartbeat_interval_s: float = 0.5,
                    heartbeat_timeout_s: float = 3.0,
                    name: str = "test-sup", standby: int = 0,
                    standby_role: str | None = None) -> SupervisorSpec:
    """A test supervisor's spec; by default with tiny backoffs, so restarts take milliseconds."""
    policy = SupervisorPolicy(strategy=strategy, max_restarts=max_restarts, period_s=period_s,
                              backoff_min_s=backoff_min_s, backoff_max_s=backoff_max_s,
                              backoff_reset_s=backoff_reset_s,
                              heartbeat_timeout_s=heartbeat_timeout_s,
                              batch_heartbeat_timeout_s=120.0, standby=standby)
    return SupervisorSpec(name=name, children=children, policy=policy,
                          heartbeat_interval_s=heartbeat_interval_s, standby_role=standby_role)


def sub_supervisor(spec: SupervisorSpec) -> ChildSpec:
    """A child that is itself a supervisor of ``spec``'s children."""
    return ChildSpec(name=spec.name, role="supervisor", actor_class=SUPERVISOR_CLASS,
                     spec=spec)
