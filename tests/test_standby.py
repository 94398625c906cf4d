"""Warm standbys: a killed predictor is replaced by promoting a spare that is already up.

The serving supervisor keeps ``[supervision.serving] standby`` spare predictors
(started, stores open, champion loaded, no port). A dead predictor's place is taken
by one of them in one message; a new spare is warmed afterwards. A spare serves
nothing until promoted, and a dead spare is simply warmed again.
"""

from __future__ import annotations

import functools
import http.client
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_support import RunningDaemon, running_daemon, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    with running_daemon(tmp_path_factory.mktemp("standby")) as d:
        yield d


def _actors(daemon: RunningDaemon) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in daemon.status()["actors"]}


def _standby(daemon: RunningDaemon, not_pid: int = 0) -> dict[str, Any] | None:
    spare = _actors(daemon).get("predictor-standby-1")
    if spare and spare["state"] == "standby" and spare["pid"] != not_pid:
        return spare
    return None


def _replaced(daemon: RunningDaemon, name: str, old_pid: int) -> dict[str, Any] | None:
    now = _actors(daemon)[name]
    return now if now["state"] == "running" and now["pid"] != old_pid else None


def test_the_serving_supervisor_keeps_a_warm_standby_that_serves_nothing(
        daemon: RunningDaemon) -> None:
    spare = wait_for("a warm standby", lambda: _standby(daemon), 30.0)
    assert spare["supervisor"] == "serving" and spare["role"] == "predictor"
    assert not any(a["name"].startswith("collector-standby") for a in _actors(daemon).values())
    # Not listening: the predict port is served by predictor-1 and -2 alone.
    with open(f"/proc/{spare['pid']}/net/tcp") as table:
        listening = [line for line in table.read().splitlines()[1:]
                     if line.split()[3] == "0A"
                     and int(line.split()[1].rsplit(":", 1)[1], 16)
                     == daemon.settings.predict.port]
    inodes = {line.split()[9] for line in listening}
    fds = {os.readlink(f"/proc/{spare['pid']}/fd/{fd}")
           for fd in os.listdir(f"/proc/{spare['pid']}/fd")}
    assert not {f"socket:[{inode}]" for inode in inodes} & fds


def test_a_killed_predictor_is_replaced_by_promoting_the_standby(
        daemon: RunningDaemon) -> None:
    for name in ("predictor-1", "predictor-2"):
        spare = wait_for("a warm standby", lambda: _standby(daemon), 30.0)
        before = _actors(daemon)[name]
        os.kill(before["pid"], signal.SIGKILL)
        after = wait_for(f"{name} promoted",
                         functools.partial(_replaced, daemon, name, before["pid"]), 30.0)
        assert after["pid"] == spare["pid"], "the standby's process took the dead one's place"
        assert after["restarts"] == before["restarts"] + 1
        # A new standby is warmed in the freed slot.
        wait_for("a new standby", functools.partial(_standby, daemon, spare["pid"]), 30.0)
    # Both original predictors are dead: only promoted standbys can be answering now.
    for _ in range(20):
        connection = http.client.HTTPConnection("127.0.0.1", daemon.settings.predict.port,
                                                timeout=5)
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200
        connection.close()


def test_a_killed_standby_is_warmed_again_and_nothing_else_restarts(
        daemon: RunningDaemon) -> None:
    spare = wait_for("a warm standby", lambda: _standby(daemon), 30.0)
    restarts = {n: a["restarts"] for n, a in _actors(daemon).items()
                if n.startswith("predictor-") and "standby" not in n}
    os.kill(spare["pid"], signal.SIGKILL)
    again = wait_for("the standby warmed again",
                     lambda: _standby(daemon, not_pid=spare["pid"]), 30.0)
    assert again["restarts"] == spare["restarts"] + 1
    assert restarts == {n: a["restarts"] for n, a in _actors(daemon).items()
                        if n.startswith("predictor-") and "standby" not in n}


def test_standby_zero_means_a_cold_restart(tmp_path: Path) -> None:
    with running_daemon(tmp_path, sections={"supervision": {"serving.standby": 0}}) as d:
        assert "predictor-standby-1" not in _actors(d)
        before = _actors(d)["predictor-1"]
        os.kill(before["pid"], signal.SIGKILL)
        wait_for("predictor-1 restarted cold", lambda: _replaced(d, "predictor-1", before["pid"]),
                 30.0)
