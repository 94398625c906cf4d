"""Liveness: a hung actor never sends ``ChildActorExited``, so supervisors watch heartbeats.

A child that stops answering ``Ping`` (SIGSTOPped, or stuck in an endless loop in a
handler) is SIGKILLed by its pid once its heartbeat timeout passes, and restarted
like a crashed one. The probe tests run a supervisor with a short timeout on a real
actor system (the ``probe`` fixture of ``test_supervision``); the last test does it
to a predictor in a real daemon with the default settings, and then checks that the
prediction port answers every request: the stopped process no longer holds its socket.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from config.errors import ConfigError
from config.settings import Settings, load_settings
from runtime.group import group_members
from supervision.spec import ChildSpec, SupervisorSpec, system_tree
from tests.e2e_support import running_daemon, stopped
from tests.e2e_support import wait_for as wait_for_daemon
from tests.supervision_actors import (
    LABOURER,
    SPINNER,
    Labour,
    LabourDone,
    Spin,
    child,
    sub_supervisor,
    supervisor_spec,
)
from tests.test_supervision import Probe, alive, gone, kill, wait_for
from tests.test_supervision import probe as probe  # noqa: F401 (the fixture)

pytestmark = pytest.mark.e2e

# Short heartbeats for the probe tests: detection in about a second.
TIMEOUT_S = 0.8


def fast(*children: ChildSpec, name: str = "test-sup") -> SupervisorSpec:
    """A test supervisor that pings every 0.1 s and kills after ``TIMEOUT_S`` of silence."""
    return supervisor_spec(*children, name=name, heartbeat_interval_s=0.1,
                           heartbeat_timeout_s=TIMEOUT_S)


def heartbeat_events(probe: Probe, child_name: str) -> list[dict[str, Any]]:
    """The supervisor's ``child_unresponsive`` log lines about ``child_name``."""
    path = probe.settings.log_dir / "rml.log"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "child_unresponsive" and event.get("child") == child_name:
            events.append(event)
    return events


def test_batch_roles_get_the_long_heartbeat_timeout_and_the_others_the_default() -> None:
    settings = Settings()
    timeouts: dict[str, float | None] = {}
    for sub in system_tree(settings).children:
        assert sub.heartbeat_timeout_s is None and sub.spec is not None
        timeouts |= {c.role: c.heartbeat_timeout_s for c in sub.spec.children}
    batch = settings.supervision.batch_heartbeat_timeout_s
    assert timeouts == {"collector": None, "feature_generator": batch, "learner": batch,
                        "publisher": batch, "predictor": None}


def test_heartbeat_timeout_shorter_than_two_intervals_is_refused() -> None:
    with pytest.raises(ConfigError, match="supervision.heartbeat_timeout_s"):
        load_settings(None, {"RML_SUPERVISION_HEARTBEAT_INTERVAL_S": "1",
                             "RML_SUPERVISION_HEARTBEAT_TIMEOUT_S": "1.5"})


def test_stopped_worker_is_killed_by_pid_and_replaced(probe: Probe) -> None:
    sup = probe.start_supervisor(fast(child("a"), child("b")))
    a, b = sup.children["a"], sup.children["b"]

    started = time.monotonic()
    os.kill(a.pid, signal.SIGSTOP)
    try:
        hung = probe.child_up("a", "unresponsive")
        detected_s = time.monotonic() - started
        a2 = probe.child_up("a", not_pid=a.pid)
        replaced_s = time.monotonic() - started
    finally:
        if alive(a.pid):
            os.kill(a.pid, signal.SIGCONT)  # never leave a stopped process behind a failure

    print(f"\nSIGSTOPped worker: unresponsive after {detected_s:.2f} s, replacement running "
          f"after {replaced_s:.2f} s (heartbeat timeout {TIMEOUT_S} s)")
    assert (hung.pid, hung.restarts) == (a.pid, 0)
    assert a2.restarts == 1
    assert probe.ping(a2.address).pid == a2.pid != a.pid
    assert gone(a.pid), "the hung process was killed, not left stopped"
    assert [i.state for i in probe.reports("a")] == ["running", "unresponsive", "restarting",
                                                    "running"]
    assert probe.ping(b.address).pid == b.pid
    assert [i.state for i in probe.reports("b")] == ["running"]
    events = wait_for("the heartbeat event in the log", lambda: heartbeat_events(probe, "a"))
    assert events[0]["pid"] == a.pid
    assert events[0]["cause"].startswith("heartbeat missed for ")


def test_worker_stuck_in_an_endless_loop_is_replaced(probe: Probe) -> None:
    sup = probe.start_supervisor(fast(child("spinner", SPINNER)))
    spinner = sup.children["spinner"]

    probe.tell(spinner.address, Spin())

    assert probe.child_up("spinner", "unresponsive").pid == spinner.pid
    replacement = probe.child_up("spinner", not_pid=spinner.pid)
    assert replacement.restarts == 1
    assert probe.ping(replacement.address).pid == replacement.pid
    wait_for("the spinning process to be gone", lambda: gone(spinner.pid))


def test_long_handler_within_its_own_timeout_is_not_killed(probe: Probe) -> None:
    # Like the learner training: a handler longer than the supervisor's default
    # heartbeat timeout, under a child whose own timeout allows for it.
    spec = fast(child("labourer", LABOURER, heartbeat_timeout_s=30.0))
    labourer = probe.start_supervisor(spec).children["labourer"]
    work = Labour(uuid.uuid4().hex, seconds=3 * TIMEOUT_S)

    probe.tell(labourer.address, work)
    done = probe.expect("the long handler's answer", lambda m: isinstance(m, LabourDone)
                        and m.correlation_id == work.correlation_id)

    assert done.pid == labourer.pid
    assert probe.ping(labourer.address).pid == labourer.pid
    assert [i.state for i in probe.reports("labourer")] == ["running"]


def test_stopped_supervisor_is_replaced_with_its_whole_subtree(probe: Probe) -> None:
    inner = fast(child("x"), child("y"), name="inner")
    sup = probe.start_supervisor(fast(sub_supervisor(inner), child("z")))
    old_inner = sup.children["inner"]
    old = {name: probe.child_up(name).pid for name in ("x", "y")}

    os.kill(old_inner.pid, signal.SIGSTOP)
    try:
        probe.child_up("inner", "unresponsive")
        inner2 = probe.child_up("inner", not_pid=old_inner.pid)
    finally:
        if alive(old_inner.pid):
            os.kill(old_inner.pid, signal.SIGCONT)
    new = {name: probe.child_up(name, not_pid=old[name]) for name in ("x", "y")}

    assert inner2.restarts == 1
    # The hung supervisor's children were killed with it: none is left as an orphan.
    wait_for("the old subtree to be gone", lambda: gone(old_inner.pid, *old.values()))
    for name, info in new.items():
        assert probe.ping(info.address).pid == info.pid != old[name]
    assert [i.state for i in probe.reports("z")] == ["running"]


def test_killed_supervisor_leaves_no_orphans(probe: Probe) -> None:
    inner = fast(child("x"), child("y"), name="inner")
    sup = probe.start_supervisor(fast(sub_supervisor(inner)))
    old_inner = sup.children["inner"]
    old = {name: probe.child_up(name).pid for name in ("x", "y")}

    kill(old_inner.pid)

    probe.child_up("inner", not_pid=old_inner.pid)
    new = {name: probe.child_up(name, not_pid=old[name]) for name in ("x", "y")}
    wait_for("the old children (orphans) to be ended", lambda: gone(*old.values()))
    for info in new.values():
        assert probe.ping(info.address).pid == info.pid


def test_children_killed_at_the_same_moment_are_all_replaced(probe: Probe) -> None:
    # Thespian can miss an exit when several children die at once (one SIGCHLD for
    # several exits); the supervisor then notices the process is gone at its next tick.
    names = ("a", "b", "c", "d")
    sup = probe.start_supervisor(fast(*(child(n) for n in names)))
    old = {n: sup.children[n].pid for n in names}

    for pid in old.values():
        kill(pid)

    for name in names:
        new = probe.child_up(name, not_pid=old[name])
        assert new.restarts == 1
        assert probe.ping(new.address).pid == new.pid


# --- in a real daemon ------------------------------------------------------------------


def health(port: int) -> int:
    """``GET /health`` on a fresh connection (so the kernel picks a listener each time)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def test_stopped_predictor_is_replaced_and_the_port_answers_every_request(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path) as daemon:
        port = daemon.settings.predict.port
        before = daemon.actor("predictor-1")
        started = time.monotonic()
        os.kill(before["pid"], signal.SIGSTOP)
        try:
            after = wait_for_daemon(
                "predictor-1 to be replaced",
                lambda: (a := daemon.actor("predictor-1"))["pid"] != before["pid"]
                and a["state"] == "running" and a, 30.0)
            replaced_s = time.monotonic() - started
        finally:
            if stopped(before["pid"]):
                os.kill(before["pid"], signal.SIGCONT)
        statuses = [health(port) for _ in range(200)]
        answered_s = time.monotonic() - started

        print(f"\nSIGSTOPped predictor (default heartbeat timeout "
              f"{daemon.settings.supervision.heartbeat_timeout_s} s): replaced after "
              f"{replaced_s:.2f} s; 200 fresh connections answered by {answered_s:.2f} s")
        assert after["restarts"] == before["restarts"] + 1
        assert before["pid"] not in group_members(daemon.pgid), "the hung predictor was killed"
        assert statuses == [200] * 200
        assert daemon.actor("predictor-2")["restarts"] == 0
