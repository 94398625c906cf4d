"""Liveness: what a heartbeat tick does with each child, and killing by pid.

A crash is reported by Thespian (``ChildActorExited``), a hang is not. So every
``heartbeat_interval_s`` a supervisor judges each child it pings: a child whose last
``Pong`` is older than its heartbeat timeout is SIGKILLed by pid (with whatever
processes it started, so that nothing keeps holding its port) and restarted through
the same path as a crash. Thespian can also miss a death (two children dying at once):
a process seen gone for a tick with no report is handled as its report would be.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Literal

from supervision.child import Child

__all__ = ["PINGED_STATES", "Verdict", "judge", "kill_ours", "ours"]

#: The states of a child that is pinged and judged.
PINGED_STATES = ("running", "unresponsive", "standby")

Verdict = Literal["exit_not_reported", "await_report", "kill", "ping", "wait"]


def judge(child: Child, now: float, timeout_s: float, interval_s: float) -> Verdict:
    """One tick's verdict on ``child`` (``child.gone_since`` already updated):

    ``exit_not_reported``: gone a tick ago (or killed by us and never gone) with no report;
    ``await_report``: it just exited, or we just killed it; ``kill``: silent past its
    timeout; ``ping``: time to (re)send its one Ping; ``wait``: nothing to do.
    """
    silent = now - child.last_seen
    if (child.gone_since and now - child.gone_since >= interval_s
            or child.state == "unresponsive" and silent > 2 * timeout_s):
        return "exit_not_reported"
    if child.gone_since or child.state == "unresponsive":
        return "await_report"
    if silent > timeout_s:
        return "kill"
    # One Ping in flight per child (resent now and then, in case one was lost): a hung
    # child's inbox must not fill with them.
    if not child.ping_sent or now - child.ping_sent > timeout_s / 3:
        return "ping"
    return "wait"


def ours(pid: int) -> bool:
    """Whether ``pid`` is a live process of our own process group (not a reused pid)."""
    try:
        return pid > 0 and pid != os.getpid() and os.getpgid(pid) == os.getpgrp()
    except ProcessLookupError:
        return False


def kill_ours(pids: set[int]) -> None:
    """SIGKILL those of ``pids`` that are ours."""
    for pid in pids:
        if ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
