"""The daemon's process group and ports, seen from outside, on real processes and sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.group import (
    end_group,
    free_ports,
    group_members,
    kill_group,
    port_accepts,
    port_bindable,
)

# A grandchild that ignores SIGTERM, then blocks on the stdin it shares with its parent.
GRANDCHILD = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print(os.getpid(), flush=True)\n"
    "sys.stdin.read()\n"
)
# The group leader: starts the grandchild, reports both pids once the grandchild is ready.
LEADER = (
    "import os, subprocess, sys\n"
    f"child = subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}], stdout=subprocess.PIPE)\n"
    "assert child.stdout is not None\n"
    "grandchild = int(child.stdout.readline())\n"
    "print(os.getpid(), grandchild, flush=True)\n"
    "sys.stdin.read()\n"
)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.fixture()
def group() -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """A new session: the leader and its SIGTERM-ignoring child; (process, leader, child)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LEADER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    leader, child = (int(p) for p in proc.stdout.readline().split())
    try:
        yield proc, leader, child
    finally:
        # Whatever a test did, leave nothing behind.
        kill_group(proc.pid, signal.SIGKILL)
        if proc.stdin is not None:
            proc.stdin.close()
        proc.stdout.close()
        proc.wait(timeout=30)


def test_group_members_finds_the_leader_and_its_child(
    group: tuple[subprocess.Popen[bytes], int, int],
) -> None:
    proc, leader, child = group
    assert leader == proc.pid
    assert os.getpgid(proc.pid) == proc.pid  # start_new_session made it a group leader
    assert group_members(proc.pid) == sorted([leader, child])


def test_group_members_holds_only_the_groups_own_processes(
    group: tuple[subprocess.Popen[bytes], int, int],
) -> None:
    proc, _, _ = group
    assert os.getpid() not in group_members(proc.pid)
    assert proc.pid not in group_members(os.getpgid(os.getpid()))


def test_end_group_ends_every_member_including_one_that_ignores_sigterm(
    group: tuple[subprocess.Popen[bytes], int, int],
) -> None:
    proc, leader, child = group
    # SIGTERM alone leaves the child that ignores it.
    kill_group(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert group_members(proc.pid) == [child]
    assert alive(child)

    assert end_group(proc.pid, timeout_s=30)
    assert group_members(proc.pid) == []
    assert not alive(leader) and not alive(child)


def test_end_group_ends_a_whole_live_group(
    group: tuple[subprocess.Popen[bytes], int, int],
) -> None:
    proc, _, child = group
    assert end_group(proc.pid, timeout_s=30)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert group_members(proc.pid) == []
    assert not alive(child)


def test_ending_a_group_that_is_gone_is_fine(
    group: tuple[subprocess.Popen[bytes], int, int],
) -> None:
    proc, _, _ = group
    assert end_group(proc.pid, timeout_s=30)
    kill_group(proc.pid)  # no error for an empty group
    assert end_group(proc.pid, timeout_s=30)


def test_a_listening_port_accepts_and_is_not_bindable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_accepts("127.0.0.1", port)
        assert not port_bindable("127.0.0.1", port)


def test_a_closed_port_is_bindable_and_does_not_accept() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
    # Freed: nothing accepts there, and a fresh listener could take it.
    assert not port_accepts("127.0.0.1", port)
    assert port_bindable("127.0.0.1", port)


def test_free_ports_are_bindable_and_outside_the_ephemeral_range() -> None:
    # A port from the ephemeral range could be taken by any socket bound to port 0 (another
    # daemon's actor, a client's source port) before its daemon binds it.
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert all(port_bindable("127.0.0.1", port) for port in ports)
    if low - 10_000 >= 1000:
        assert not any(low <= port <= high for port in ports), (ports, low, high)
