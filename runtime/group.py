"""Processes and ports: what the daemon owns on this machine, seen from outside.

Used by the daemon and by actors and supervisors (process names, descendants), so it sits
below them; its old name ``daemon.group`` still imports it (``daemon.MOVED``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "NODE_ENV", "children_of", "descendants", "end_group", "free_ports", "group_members",
    "kill_group", "port_accepts", "port_bindable", "process_alive", "process_name",
    "set_process_name", "wait_until",
]

#: The node a process runs on (``[cluster] node_name``): set by the node's keeper, inherited
#: by its processes, on every log line (``runtime.logs``).
NODE_ENV = "RML_NODE"

_PR_SET_NAME = 15


def _processes() -> list[tuple[int, str, int, int]]:
    """``(pid, state, ppid, pgrp)`` of every process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command (which may hold spaces) start after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        found.append((int(entry.name), fields[0], int(fields[1]), int(fields[2])))
    return found


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    return sorted(pid for pid, state, _, pgrp in _processes()
                  if pgrp == pgid and state not in ("Z", "X"))


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has exited: it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    return sorted(child for child, state, ppid, _ in _processes()
                  if ppid == pid and state not in ("Z", "X"))


def set_process_name(name: str) -> None:
    """Name this process (``/proc/<pid>/comm``, what ``ps`` and ``top`` show; 15 bytes):
    a member's node agent finds the workers of its node by it."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def process_name(pid: int) -> str:
    """``pid``'s name (``set_process_name``), or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (its children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for child, state, ppid, _ in _processes():
        if state not in ("Z", "X"):
            children.setdefault(ppid, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the whole group; a group that is gone already is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        for pid in group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def end_group(pgid: int, timeout_s: float = 10.0) -> bool:
    """SIGKILL the group until no process is left in it (a process forking while the first
    signal is delivered can leave a child that missed it); True when it is empty."""
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        kill_group(pgid, signal.SIGKILL)
        time.sleep(0.02)
    return True


# Where free_ports looks first: below the kernel's ephemeral range, so that no socket bound
# to port 0 meanwhile (an actor of another daemon, a client's source port) can take a port
# between the moment it is chosen and the moment its daemon binds it.
_FIXED_PORTS_FROM = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free on ``host`` a moment ago (for tests and benches),
    chosen outside the kernel's ephemeral range where it leaves room for them."""
    try:
        ephemeral_low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 0
    chosen: list[int] = []
    if ephemeral_low - _FIXED_PORTS_FROM >= 1000:
        candidates = random.sample(range(_FIXED_PORTS_FROM, ephemeral_low), 64 + n)
        chosen = [port for port in candidates if port_bindable(host, port)][:n]
    if len(chosen) == n:
        return chosen
    sockets = [socket.socket() for _ in range(n)]  # let the kernel choose
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_bindable(host: str, port: int) -> bool:
    """Whether ``host:port`` could be bound by a fresh listener (no SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        return True
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise
    finally:
        sock.close()


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or the deadline passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
