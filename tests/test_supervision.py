"""The supervisor against a real ``multiprocTCPBase`` actor system: restarts, strategies,
intensity, poison messages.

Each test gets its own actor system on a free admin port with a temporary data
directory, bound to loopback. The test process is the parent of a sub-supervisor
(it sends ``Init`` with a ``SupervisorSpec``), so every ``ChildUp`` and ``Ready`` the
supervisor sends up lands in the test's inbox; children are probed with ``Ping``
at the addresses their ``ChildUp`` carries, and the ``Pong`` names the pid that
answered. Teardown shuts the system down and fails the test if any of its
processes, or its admin port, outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import ActorSystem, PoisonMessage

from config.settings import Settings
from messages.protocol import ActorInfo, ChildUp, Init, Ping, Pong, Ready
from runtime.group import port_accepts
from runtime.logs import thespian_log_defs
from runtime.loopback import bind_thespian_to
from storage.deadletters import DeadLetter
from storage.sqlite.deadletters import SQLiteDeadLetters
from supervision.spec import SUPERVISOR_CLASS, SupervisorSpec
from tests.e2e_support import wait_for as e2e_wait_for
from tests.supervision_actors import (
    CRASH_ON_INIT,
    GATED,
    POISON_ON_MESSAGE,
    QUITTER,
    SERVE_FAILS_AS_STANDBY,
    STORE_DOWN,
    Boom,
    Quit,
    child,
    gate,
    supervisor_spec,
)

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
WAIT_S = 15.0  # generous: a loaded 2-core box; a healthy restart takes milliseconds


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, session id)`` of ``pid``, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command (which may hold spaces) start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3])


def _processes() -> dict[int, tuple[str, int, int]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = stat
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has exited: it counts as gone)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children_of(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    return {p for p, (_, ppid, _) in _processes().items() if ppid == pid}


def session_members(sids: set[int]) -> set[int]:
    """Live processes in any of the sessions ``sids``."""
    return {p for p, (state, _, sid) in _processes().items()
            if sid in sids and state not in ("Z", "X")}


def wait_for(what: str, predicate: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    """``e2e_support.wait_for`` with this module's deadline and a finer poll."""
    return e2e_wait_for(what, predicate, timeout_s, interval_s=0.02)


def gone(*pids: int) -> bool:
    """Whether none of ``pids`` is alive."""
    return not any(alive(p) for p in pids)


@dataclass
class RunningSupervisor:
    """A sub-supervisor started by the test, and its children as first reported."""

    address: Any
    pid: int
    children: dict[str, ActorInfo]


@dataclass
class Probe:
    """The test's endpoint in the actor system: it sends, and keeps all it receives.

    ``expect`` consumes the first kept message that matches, listening until the
    deadline; ``history`` keeps everything, for assertions that something did
    not happen.
    """

    asys: Any
    settings: Settings
    inbox: list[Any] = field(default_factory=list)
    history: list[Any] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)

    def tell(self, address: Any, message: Any) -> None:
        """Send ``message``; answers come back to this endpoint."""
        self.asys.tell(address, message)

    def expect(self, what: str, predicate: Callable[[Any], bool],
               timeout_s: float = WAIT_S) -> Any:
        """The first received message matching ``predicate``, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for i, message in enumerate(self.inbox):
                if predicate(message):
                    return self.inbox.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; "
                                     f"unmatched: {self.inbox[-8:]!r}")
            message = self.asys.listen(min(left, 0.5))
            if message is not None:
                self._keep(message)

    def _keep(self, message: Any) -> None:
        self.inbox.append(message)
        self.history.append(message)
        if isinstance(message, Ready | Pong) and message.pid:
            self.pids.add(message.pid)
        elif isinstance(message, ChildUp) and message.info.pid:
            self.pids.add(message.info.pid)

    def ping(self, address: Any) -> Pong:
        """The ``Pong`` of the actor at ``address``: it is alive, and which pid it is."""
        correlation_id = uuid.uuid4().hex
        self.tell(address, Ping(correlation_id))
        pong: Pong = self.expect(f"Pong {correlation_id}", lambda m: isinstance(m, Pong)
                                 and m.correlation_id == correlation_id)
        return pong

    def child_up(self, name: str, state: str = "running", not_pid: int | None = None,
                 timeout_s: float = WAIT_S) -> ActorInfo:
        """The next report of ``name`` in ``state`` (from a pid other than ``not_pid``)."""
        def matches(m: Any) -> bool:
            return (isinstance(m, ChildUp) and m.info.name == name and m.info.state == state
                    and (not_pid is None or m.info.pid != not_pid))

        info: ActorInfo = self.expect(f"{name} {state}", matches, timeout_s).info
        return info

    def reports(self, name: str) -> list[ActorInfo]:
        """Every ``ChildUp`` received so far about ``name``, in order."""
        return [m.info for m in self.history if isinstance(m, ChildUp) and m.info.name == name]

    def new_supervisor(self, spec: SupervisorSpec) -> tuple[Any, int, str]:
        """Create a ``Supervisor`` and send it ``Init``; its address, pid and init id."""
        address = self.asys.createActor(SUPERVISOR_CLASS)
        pid = self.ping(address).pid  # answered before Init: it may give up soon after
        init_id = uuid.uuid4().hex
        self.tell(address, Init("test-sup", "supervisor", self.settings, init_id, spec=spec))
        return address, pid, init_id

    def start_supervisor(self, spec: SupervisorSpec) -> RunningSupervisor:
        """Start a supervisor and wait until it answers ``Ready`` (every child runs)."""
        address, pid, init_id = self.new_supervisor(spec)
        ready = self.expect("supervisor Ready", lambda m: isinstance(m, Ready)
                            and m.correlation_id == init_id)
        assert ready.pid == pid
        children = {c.name: self.child_up(c.name) for c in spec.children}
        for info in children.values():
            assert info.address is not None, "a running child's ChildUp carries its address"
        return RunningSupervisor(address, pid, children)


def free_port() -> int:
    """A port that was free on loopback a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def kill(pid: int) -> None:
    """SIGKILL: the crash no handler sees."""
    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[Probe]:
    """A fresh actor system for one test; afterwards none of its processes may be left."""
    port = free_port()
    settings = Settings(data_dir=str(tmp_path))
    before = children_of(os.getpid())
    bind_thespian_to(HOST)
    # transientUnique: our own system base, not Thespian's per-process singleton, which
    # another test module may have left connected to a different admin.
    asys = ActorSystem("multiprocTCPBase",
                       {"Admin Port": port, "Process Startup Method": "fork"},
                       logDefs=thespian_log_defs(settings.log_dir), transientUnique=True)
    # The admin daemonizes: our child calls setsid, forks the admin and exits. Every
    # actor forks from the admin, so that child's pid is the session of all of them,
    # orphans included.
    sessions = children_of(os.getpid()) - before
    # No new admin means port was taken by someone else's system: never shut that down.
    assert sessions, f"no admin was started: port {port} is another actor system's"
    probe = Probe(asys, settings)
    try:
        yield probe
    finally:
        ours = session_members(sessions) | probe.pids
        asys.shutdown()
        for pid in sessions:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        deadline = time.monotonic() + WAIT_S
        left = sorted(p for p in ours | session_members(sessions) if alive(p))
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [p for p in left if alive(p)]
        for pid in left:  # never leave them to the next test, but still fail this one
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes outlived the actor system: {left}"
        assert ours, "the test saw none of the system's processes"
        deadline = time.monotonic() + WAIT_S
        while port_accepts(HOST, port, 0.2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not port_accepts(HOST, port, 0.2), f"admin port {port} still accepts"


# --- restarts and strategies -------------------------------------------------------


def test_a_killed_child_is_replaced_by_its_warm_standby(probe: Probe) -> None:
    spec = supervisor_spec(child("a"), child("b"), standby=1, standby_role="worker")
    sup = probe.start_supervisor(spec)
    spare = probe.child_up("worker-standby-1", "standby")
    a = sup.children["a"]

    kill(a.pid)

    a2 = probe.child_up("a", not_pid=a.pid)
    assert (a2.pid, a2.restarts) == (spare.pid, 1)  # the spare's process took a's place
    assert probe.ping(a2.address).pid == spare.pid
    again = probe.child_up("worker-standby-1", "standby", not_pid=spare.pid)
    assert again.pid not in (a.pid, spare.pid)


def test_a_standby_that_cannot_take_over_is_given_up_and_the_child_starts_cold(
        probe: Probe) -> None:
    spec = supervisor_spec(child("a", SERVE_FAILS_AS_STANDBY), standby=1,
                           standby_role="worker")
    sup = probe.start_supervisor(spec)
    spare = probe.child_up("worker-standby-1", "standby")
    a = sup.children["a"]

    kill(a.pid)

    a2 = probe.child_up("a", not_pid=a.pid)  # after the Activate failed twice
    assert a2.pid not in (a.pid, spare.pid)
    assert probe.ping(a2.address).pid == a2.pid
    letters = read_dead_letters(probe.settings)
    assert [(d.actor, d.message_type) for d in letters] == [("a", "Activate")]
    # A new spare is warmed (and the test ends only once it is up: Thespian can hang a
    # shutdown that races with a child still starting).
    assert probe.child_up("worker-standby-1", "standby", not_pid=spare.pid).pid != a2.pid


def test_killed_child_is_replaced_and_its_sibling_keeps_running(probe: Probe) -> None:
    sup = probe.start_supervisor(supervisor_spec(child("a"), child("b")))
    a, b = sup.children["a"], sup.children["b"]

    kill(a.pid)

    assert probe.child_up("a", "restarting").restarts == 1
    a2 = probe.child_up("a", not_pid=a.pid)
    assert a2.restarts == 1
    assert probe.ping(a2.address).pid == a2.pid != a.pid
    assert gone(a.pid)
    assert probe.ping(b.address).pid == b.pid
    assert [i.state for i in probe.reports("b")] == ["running"]


def test_terminated_child_is_restarted_once(probe: Probe) -> None:
    # SIGTERM can make Thespian report the same child twice; one exit is one restart.
    sup = probe.start_supervisor(supervisor_spec(child("a"), child("b")))
    a, b = sup.children["a"], sup.children["b"]

    os.kill(a.pid, signal.SIGTERM)
    a2 = probe.child_up("a", not_pid=a.pid)
    kill(b.pid)  # a later failure, handled after any duplicate report of "a"
    probe.child_up("b", not_pid=b.pid)

    assert a2.restarts == 1
    assert [(i.state, i.restarts) for i in probe.reports("a")] == [
        ("running", 0), ("restarting", 1), ("running", 1)]
    assert probe.ping(a2.address).pid == a2.pid


def test_one_for_all_restarts_every_child_when_one_dies(probe: Probe) -> None:
    spec = supervisor_spec(child("a"), child("b"), child("c"), strategy="one_for_all")
    sup = probe.start_supervisor(spec)
    old = {name: info.pid for name, info in sup.children.items()}

    kill(old["b"])

    new = {name: probe.child_up(name, not_pid=old[name]) for name in old}
    assert {name: info.restarts for name, info in new.items()} == {"a": 0, "b": 1, "c": 0}
    for name, info in new.items():
        assert probe.ping(info.address).pid == info.pid != old[name]
    wait_for("the old incarnations to exit", lambda: gone(*old.values()))


def test_rest_for_one_restarts_the_failed_child_and_those_after_it(probe: Probe) -> None:
    spec = supervisor_spec(child("a"), child("b"), child("c"), strategy="rest_for_one")
    sup = probe.start_supervisor(spec)
    old = {name: info.pid for name, info in sup.children.items()}

    kill(old["b"])

    b2 = probe.child_up("b", not_pid=old["b"])
    c2 = probe.child_up("c", not_pid=old["c"])
    assert (b2.restarts, c2.restarts) == (1, 0)
    assert probe.ping(b2.address).pid == b2.pid != old["b"]
    assert probe.ping(c2.address).pid == c2.pid != old["c"]
    assert probe.ping(sup.children["a"].address).pid == old["a"]
    assert [i.state for i in probe.reports("a")] == ["running"]
    wait_for("b and c's old incarnations to exit", lambda: gone(old["b"], old["c"]))


def test_sibling_stopped_while_starting_is_still_restarted_with_its_group(probe: Probe) -> None:
    # "slow" is still starting when "a" dies; its Ready arrives after the supervisor asked
    # it to exit, and it takes its time to exit. That dying incarnation must not count as
    # running, or the group restart skips it and it stays down for good.
    spec = supervisor_spec(child("a"), child("slow", GATED), strategy="rest_for_one",
                           backoff_min_s=0.5, backoff_max_s=1.0)
    probe.new_supervisor(spec)
    a = probe.child_up("a")

    kill(a.pid)
    probe.child_up("slow", "restarting")
    gate(probe.settings, "slow", "start").touch()
    a2 = probe.child_up("a", not_pid=a.pid)  # the group restart (after the backoff)
    gate(probe.settings, "slow", "stop").touch()

    slow = probe.child_up("slow")
    assert probe.ping(slow.address).pid == slow.pid
    assert probe.ping(a2.address).pid == a2.pid
    assert [i.state for i in probe.reports("slow")] == ["restarting", "running"]


def test_temporary_child_is_not_restarted(probe: Probe) -> None:
    spec = supervisor_spec(child("temp", restart="temporary"), child("perm"))
    sup = probe.start_supervisor(spec)
    temp, perm = sup.children["temp"], sup.children["perm"]

    kill(temp.pid)
    assert probe.child_up("temp", "stopped").restarts == 0
    # A permanent sibling's restart afterwards shows the supervisor is still at work,
    # and that no restart of "temp" was merely pending.
    kill(perm.pid)
    perm2 = probe.child_up("perm", not_pid=perm.pid)

    assert probe.ping(perm2.address).pid == perm2.pid
    assert [i.state for i in probe.reports("temp")] == ["running", "stopped"]
    assert probe.ping(sup.address).pid == sup.pid
    assert gone(temp.pid)


def test_transient_child_that_stops_normally_is_not_restarted_but_a_crash_is(
    probe: Probe,
) -> None:
    spec = supervisor_spec(child("calm", QUITTER, restart="transient"),
                           child("crashy", QUITTER, restart="transient"),
                           child("loyal", QUITTER))
    sup = probe.start_supervisor(spec)
    calm, crashy, loyal = (sup.children[n] for n in ("calm", "crashy", "loyal"))

    probe.tell(calm.address, Quit())
    assert probe.child_up("calm", "stopped").restarts == 0
    kill(crashy.pid)  # an abnormal exit: a transient child is restarted
    assert probe.child_up("crashy", not_pid=crashy.pid).restarts == 1
    probe.tell(loyal.address, Quit())  # a permanent child is restarted even after a normal exit
    assert probe.child_up("loyal", not_pid=loyal.pid).restarts == 1
    assert gone(calm.pid)


# --- giving up ------------------------------------------------------------------------


def test_supervisor_gives_up_after_max_restarts_within_the_period(probe: Probe) -> None:
    spec = supervisor_spec(child("steady"), child("flaky"), max_restarts=2, period_s=60.0)
    sup = probe.start_supervisor(spec)
    flaky = sup.children["flaky"]

    for restart in (1, 2):  # within the limit: each kill is answered by a restart
        kill(flaky.pid)
        flaky = probe.child_up("flaky", not_pid=flaky.pid)
        assert flaky.restarts == restart
    kill(flaky.pid)  # the third within the period: one more than allowed

    failed = probe.child_up("flaky", "failed")
    assert failed.restarts == 2
    wait_for("the supervisor and its children to exit",
             lambda: gone(sup.pid, sup.children["steady"].pid, flaky.pid))


def test_child_that_cannot_start_makes_its_supervisor_give_up(probe: Probe) -> None:
    spec = supervisor_spec(child("doomed", CRASH_ON_INIT), max_restarts=2, period_s=60.0)
    _, sup_pid, init_id = probe.new_supervisor(spec)

    failed = probe.child_up("doomed", "failed")

    assert failed.restarts == 2
    assert not any(isinstance(m, Ready) and m.correlation_id == init_id
                   for m in probe.history), "a supervisor whose child never ran is not Ready"
    wait_for("the supervisor to exit", lambda: gone(sup_pid))
    # Each incarnation's failed Init is a dead letter: the first start and two restarts.
    letters = read_dead_letters(probe.settings)
    assert [(d.actor, d.message_type) for d in letters] == [("doomed", "Init")] * 3
    assert all("RuntimeError: doomed cannot start" in d.error for d in letters)


def test_a_child_whose_store_is_down_waits_for_it_instead_of_being_restarted(
        probe: Probe) -> None:
    sup = probe.start_supervisor(supervisor_spec(child("patient", STORE_DOWN)))
    patient = sup.children["patient"]
    attempts = gate(probe.settings, "patient", "attempts")
    # It retries its start every second while answering heartbeats, never restarted.
    wait_for("three attempts to start", lambda: attempts.exists()
             and len(attempts.read_text().split()) >= 3, 30.0)
    assert probe.ping(patient.address).pid == patient.pid
    assert set(attempts.read_text().split()) == {str(patient.pid)}
    # A message it cannot handle for want of its store is no poison message.
    boom = Boom(uuid.uuid4().hex)
    probe.tell(patient.address, boom)
    gate(probe.settings, "patient", "store").touch()  # the store is back
    started = gate(probe.settings, "patient", "started")
    wait_for("its start to succeed", started.exists, 30.0)
    assert started.read_text() == str(patient.pid)
    probe.tell(patient.address, boom)  # now started: its handler runs, and finds no store
    assert probe.ping(patient.address).pid == patient.pid
    assert [i.state for i in probe.reports("patient")] == ["running"]
    assert not any(isinstance(m, PoisonMessage) for m in probe.history)
    assert read_dead_letters(probe.settings) == []


# --- poison messages -------------------------------------------------------------------


def read_dead_letters(settings: Settings) -> list[DeadLetter]:
    # Not read-only: the supervisor may have created the file but not yet its table,
    # and opening for writing creates the table (idempotently) instead of failing.
    store = SQLiteDeadLetters(settings.data_path / "system.sqlite")
    try:
        return list(store.list())
    finally:
        store.close()


def test_poison_message_goes_back_to_sender_and_to_the_dead_letters(probe: Probe) -> None:
    sup = probe.start_supervisor(supervisor_spec(child("choker", POISON_ON_MESSAGE)))
    choker = sup.children["choker"]
    boom = Boom(uuid.uuid4().hex)

    probe.tell(choker.address, boom)

    poison = probe.expect("PoisonMessage", lambda m: isinstance(m, PoisonMessage))
    assert poison.poisonMessage == boom
    assert f"ValueError: boom {boom.correlation_id}" in str(poison.details)
    letters = wait_for("a dead letter", lambda: read_dead_letters(probe.settings))
    assert len(letters) == 1
    assert (letters[0].actor, letters[0].message_type) == ("choker", "Boom")
    assert boom.correlation_id in letters[0].message
    assert f"ValueError: boom {boom.correlation_id}" in letters[0].error
    # The actor survived its poison: same process, still answering, never restarted.
    assert probe.ping(choker.address).pid == choker.pid
    assert [i.state for i in probe.reports("choker")] == ["running"]

