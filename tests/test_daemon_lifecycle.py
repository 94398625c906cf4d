"""A daemon that died badly is detected and cleared by the next ``rml start``.

Two ways to die: the whole process group SIGKILLed at once, and only the keeper and
Thespian's admin SIGKILLed while the actor processes live on as orphans still holding
the HTTP ports. In both the next ``start`` must clear what is left and start promptly;
the time it takes is printed (a figure, not an assertion).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from config.settings import load_settings
from runtime.group import end_group, free_ports, group_members, port_accepts
from tests.e2e_support import RunningDaemon, _env, running_daemon, wait_for, write_config

pytestmark = pytest.mark.e2e


def health(port: int) -> int:
    """``GET /health`` on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def record(daemon: RunningDaemon) -> dict[str, int]:
    return dict(json.loads((daemon.settings.run_dir / "daemon.json").read_text()))


@contextmanager
def restartable_daemon(tmp: Path) -> Iterator[tuple[RunningDaemon, list[int]]]:
    """A daemon whose test starts it again; every process group it had is checked empty
    at the end (``running_daemon`` checks only the first)."""
    groups: list[int] = []
    try:
        with running_daemon(tmp) as daemon:
            groups.append(daemon.pgid)
            yield daemon, groups
    finally:
        leftover = {pgid: group_members(pgid) for pgid in groups if group_members(pgid)}
        for pgid in leftover:
            end_group(pgid)
        assert not leftover, f"processes left after stop: {leftover}"


def start_again(daemon: RunningDaemon, groups: list[int], what: str) -> float:
    """``rml start``; assert it started and serves every port; the seconds it took."""
    started = time.monotonic()
    done = daemon.rml("start")
    took = time.monotonic() - started
    groups.append(record(daemon)["pgid"])
    assert done.returncode == 0, f"start failed:\n{done.stdout}\n{done.stderr}"
    assert "clearing a stale daemon" in done.stdout or what == "whole group"
    admin, ingest, predict = daemon.ports()
    assert health(ingest) == 200
    assert health(predict) == 200
    actors = daemon.status()["actors"]
    assert all(a["state"] in ("running", "standby") for a in actors), actors
    assert all(a["pid"] in group_members(groups[-1]) for a in actors)
    print(f"\n`rml start` after SIGKILL of {what}: {took:.2f} s")
    return took


def test_start_after_the_whole_group_was_killed_clears_it_and_starts(tmp_path: Path) -> None:
    with restartable_daemon(tmp_path) as (daemon, groups):
        os.killpg(daemon.pgid, signal.SIGKILL)
        wait_for("the old group to be gone", lambda: not group_members(daemon.pgid), 10.0)
        assert (daemon.settings.run_dir / "daemon.json").exists(), "a stale record is left"

        start_again(daemon, groups, "whole group")

        assert record(daemon)["pgid"] != daemon.pgid


def test_start_clears_orphans_that_still_hold_the_ports(tmp_path: Path) -> None:
    with restartable_daemon(tmp_path) as (daemon, groups):
        actors = {a["name"]: a["pid"] for a in daemon.status()["actors"]}
        keeper = record(daemon)["keeper_pid"]
        admin = parent_of(actors["rml-root"])  # the admin creates the globally named root
        assert admin != keeper and admin in group_members(daemon.pgid)
        os.kill(keeper, signal.SIGKILL)
        os.kill(admin, signal.SIGKILL)
        wait_for("the keeper and the admin to be gone",
                 lambda: not {keeper, admin} & set(group_members(daemon.pgid)), 10.0)
        orphans = set(actors.values()) & set(group_members(daemon.pgid))
        assert orphans, "the actors outlive their admin (the case under test)"
        _, ingest, predict = daemon.ports()
        assert port_accepts("127.0.0.1", ingest) and port_accepts("127.0.0.1", predict)

        start_again(daemon, groups, "the keeper and the admin")

        assert not orphans & set(group_members(daemon.pgid))


def test_stop_ends_orphans_whose_admin_was_killed(tmp_path: Path) -> None:
    with restartable_daemon(tmp_path) as (daemon, _):
        actors = {a["name"]: a["pid"] for a in daemon.status()["actors"]}
        os.kill(record(daemon)["keeper_pid"], signal.SIGKILL)
        os.kill(parent_of(actors["rml-root"]), signal.SIGKILL)

        started = time.monotonic()
        done = daemon.rml("stop")
        took = time.monotonic() - started

        print(f"\n`rml stop` of orphans without keeper or admin: {took:.2f} s")
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        assert not group_members(daemon.pgid)
        assert not any(port_accepts("127.0.0.1", p, 0.2) for p in daemon.ports())


def test_start_on_an_unreachable_couchbase_names_the_setting_and_leaves_nothing(
        tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    config = write_config(tmp_path, {"storage": {"backend": "couchbase", "couchbase": {
        "connection_string": f"couchbase://127.0.0.1:{port}", "password": "not-a-secret",
        "bootstrap_timeout_s": 3.0}}})
    settings = load_settings(config, environ={})
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "run_system", "--config", str(config),
                           "start"], capture_output=True, text=True, timeout=120, env=_env())
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout
    assert "connection_string" in done.stderr and f"127.0.0.1:{port}" in done.stderr
    assert "bootstrap_timeout_s" in done.stderr
    assert "password is in the configuration file" in done.stdout
    assert not (settings.run_dir / "daemon.json").exists()  # nothing was started
    assert not any(port_accepts("127.0.0.1", p, 0.2) for p in (
        settings.actor_system.admin_port, settings.ingest.port, settings.predict.port))
    print(f"\n`rml start` on an unreachable cluster refused in {took:.1f} s")
