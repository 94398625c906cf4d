"""``rml start --foreground``: the CLI process is the keeper, as under systemd or in a
container. Real daemons, real signals: it serves, writes JSON lines to stdout, and on
SIGTERM or SIGINT drains and exits 0 leaving no process and no port; a tree that cannot
start (or whose admin dies) exits non-zero and leaves nothing; a closed stdout does not
take it down. Also the shipped unit file (``systemd-analyze verify``), compose file,
Dockerfile and container config.
"""

from __future__ import annotations

import configparser
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from actors.listeners import listeners_path
from config.errors import ConfigError
from config.settings import Settings, load_settings
from daemon.process import DRAIN_TIMEOUT_S, node_ports, read_record
from runtime.group import end_group, group_members, port_accepts
from tests.e2e_support import TOKEN, _env, scrape, total, wait_for, write_config

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
START_S = 180.0  # the deadline for a daemon to start on a loaded machine
STOP_S = 120.0


class Foreground:
    """``rml start --foreground`` as a child of the test, its stdout read as it comes."""

    def __init__(self, config: Path, started_in: str = "session") -> None:
        self.config = config
        self.settings = load_settings(config, environ={})
        # "session": a session of its own, as systemd and a container runtime give their
        # main process; "group": a process group of its own in the test's session, as a
        # shell gives a job; "inherit": the test's group, from which it must move out.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "run_system", "--config", str(config), "start",
             "--foreground"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=_env(), cwd=ROOT,
            start_new_session=started_in == "session",
            process_group=0 if started_in == "group" else None)
        self.raw: list[bytes] = []
        self._partial = b""
        self._eof = False

    def events(self) -> list[dict[str, Any]]:
        """Every line read so far, parsed: each must be a JSON object."""
        parsed = []
        for line in self.raw:
            event = json.loads(line)
            assert isinstance(event, dict), line
            parsed.append(event)
        return parsed

    def read_until(self, what: str, predicate: Callable[[dict[str, Any]], bool],
                   timeout_s: float) -> dict[str, Any]:
        """Read stdout until a line satisfies ``predicate``; that line."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for event in self.events()[seen:]:
                if predicate(event):
                    return event
            seen = len(self.raw)
            if self._eof:
                raise AssertionError(f"stdout ended (exit {self.proc.poll()}) before {what}: "
                                     f"{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: "
                                     f"{self.tail()}")
            self._read(min(0.5, max(0.0, deadline - time.monotonic())))

    def read_to_end(self, timeout_s: float) -> list[dict[str, Any]]:
        """Read stdout until it ends (the keeper exited: no one else holds it); the events."""
        deadline = time.monotonic() + timeout_s
        while not self._eof:
            if time.monotonic() > deadline:
                raise AssertionError(f"stdout still open after {timeout_s} s: {self.tail()}")
            self._read(0.5)
        return self.events()

    def _read(self, timeout_s: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], timeout_s)[0]:
            return
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            self._eof = True
            return
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        self.raw.extend(line for line in lines if line)

    def tail(self) -> str:
        stdout = b"\n".join(self.raw[-15:]).decode(errors="replace")
        return f"\n--- stdout (last lines) ---\n{stdout}\n--- exit {self.proc.poll()}"

    def wait_ready(self) -> dict[str, Any]:
        return self.read_until("the daemon_ready line", lambda e: e.get("event") ==
                               "daemon_ready", START_S)

    def signal_and_wait(self, sig: int) -> tuple[int, list[dict[str, Any]]]:
        """Send ``sig`` to the keeper; its exit code and every line it wrote."""
        os.kill(self.proc.pid, sig)
        events = self.read_to_end(STOP_S)
        return self.proc.wait(STOP_S), events

    def rml(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "run_system", "--config",
                               str(self.config), *args], capture_output=True, text=True,
                              timeout=120, env=_env(), cwd=ROOT)


@contextmanager
def foreground(config: Path, started_in: str = "session") -> Iterator[Foreground]:
    """A foreground daemon; whatever the test did, its process group is ended after."""
    daemon = Foreground(config, started_in)
    try:
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        end_group(daemon.proc.pid)  # the keeper leads its group: whatever it left
        daemon.proc.wait(10)
        for stream in (daemon.proc.stdout, daemon.proc.stderr):
            if stream is not None:
                stream.close()


def assert_nothing_left(daemon: Foreground) -> None:
    """No process of the keeper's group, no bound port, no run record, no lending socket."""
    settings = daemon.settings
    assert not group_members(daemon.proc.pid), group_members(daemon.proc.pid)
    busy = [port for _, _, port in node_ports(settings) if port_accepts(HOST, port, 0.2)]
    assert not busy, f"ports still bound: {busy}"
    assert read_record(settings) is None
    assert not listeners_path(settings).exists()


def post_reading(settings: Settings) -> tuple[int, dict[str, Any]]:
    """One reading to the ingest port: (status, answer)."""
    reading = {"sensor_id": 1, "location_id": 1, "reading_id": "fg-1",
               "timestamp": int(time.time() * 1000), "animals_lower": 2.0,
               "animals_upper": 4.0, "percent_zebras": 0.5}
    conn = http.client.HTTPConnection(HOST, settings.ingest.port, timeout=30)
    try:
        conn.request("POST", "/readings", json.dumps({"readings": [reading]}),
                     {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def get(port: int, path: str = "/health") -> int:
    """The status of ``GET path`` on ``port`` (with the token)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        return conn.getresponse().status
    finally:
        conn.close()


def running_status(daemon: Foreground) -> dict[str, Any]:
    """``rml status --json`` of the foreground daemon, every actor running (or standby)."""
    done = daemon.rml("status", "--json")
    assert done.returncode == 0, done.stderr
    status = dict(json.loads(done.stdout))
    assert status["actors"] and all(a["state"] in ("running", "standby")
                                    for a in status["actors"]), status["actors"]
    return status


# --- a foreground daemon ---------------------------------------------------------------------


@pytest.mark.e2e
def test_foreground_daemon_serves_logs_json_lines_and_drains_on_sigterm(tmp_path: Path) -> None:
    with foreground(write_config(tmp_path)) as daemon:
        ready = daemon.wait_ready()
        assert ready["pid"] == daemon.proc.pid  # the CLI process is the keeper
        record = read_record(daemon.settings)
        assert record is not None and record.keeper_pid == daemon.proc.pid
        assert record.pgid == daemon.proc.pid
        running_status(daemon)
        assert post_reading(daemon.settings) == (200, {"accepted": 1, "duplicates": 0,
                                                       "rejected": []})
        assert get(daemon.settings.predict.port) == 200
        # Served by the keeper itself; the actors' figures are in it (they write where the
        # keeper's scrape reads, though this process imported prometheus-client first).
        wait_for("the accepted reading in the metrics", lambda: total(
            scrape(daemon.settings), "rml_ingest_items_total", outcome="accepted") == 1, 15.0)
        second = daemon.rml("start", "--foreground")
        assert second.returncode == 1 and "already running" in second.stdout, second
        running_status(daemon)  # the second one touched nothing of the first's

        code, events = daemon.signal_and_wait(signal.SIGTERM)

        assert code == 0, daemon.tail()
        names = [e.get("event") for e in events]
        assert names[0] == "foreground_starting"
        assert {"stop_signal", "draining", "drained"} <= set(names)
        assert events[-1]["event"] == "keeper_stopped" and events[-1]["exit_code"] == 0
        drained = next(e for e in events if e.get("event") == "drained")
        assert drained["graceful"] is True and drained["leftover_pids"] == []
        # The daemon's own log lines come through too, not only the keeper's.
        actors = {e.get("actor") for e in events}
        assert {"rml-root", "collector-1", "predictor-1"} <= actors
        assert "actor_stopped" in names  # the actors drained
        assert_nothing_left(daemon)


@pytest.mark.e2e
def test_sigint_drains_a_foreground_daemon_that_made_a_process_group_of_its_own(
        tmp_path: Path) -> None:
    with foreground(write_config(tmp_path), started_in="inherit") as daemon:
        daemon.wait_ready()
        # Started inside the test's process group, it made a session (and group) of its own:
        # a stale daemon is cleared by ending its group, which must not be the test's.
        assert os.getpgid(daemon.proc.pid) == daemon.proc.pid != os.getpgrp()
        assert get(daemon.settings.ingest.port) == 200

        code, events = daemon.signal_and_wait(signal.SIGINT)

        assert code == 0, daemon.tail()
        stop = next(e for e in events if e.get("event") == "stop_signal")
        assert stop["signal"] == "SIGINT"
        assert events[-1]["event"] == "keeper_stopped" and events[-1]["exit_code"] == 0
        assert_nothing_left(daemon)


@pytest.mark.e2e
def test_ctrl_c_in_a_shell_drains_a_foreground_daemon(tmp_path: Path) -> None:
    with foreground(write_config(tmp_path), started_in="group") as daemon:
        daemon.wait_ready()
        # A shell's job: the keeper leads a group of the shell's session, and keeps it (the
        # terminal's Ctrl-C must reach it), so the actors are in it too.
        assert os.getpgid(daemon.proc.pid) == daemon.proc.pid
        assert os.getsid(daemon.proc.pid) == os.getsid(0)
        assert len(group_members(daemon.proc.pid)) > 1

        os.killpg(daemon.proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole group

        events = daemon.read_to_end(STOP_S)
        assert daemon.proc.wait(STOP_S) == 0, daemon.tail()
        assert [e["signal"] for e in events if e.get("event") == "stop_signal"] == ["SIGINT"]
        drained = next(e for e in events if e.get("event") == "drained")
        assert drained["graceful"] is True and drained["killed"] == 0
        assert not [e for e in events if e.get("event") in ("child_failed", "child_replaced")]
        assert_nothing_left(daemon)


@pytest.mark.e2e
def test_a_second_sigterm_cuts_a_hung_drain_short_and_still_leaves_nothing(
        tmp_path: Path) -> None:
    with foreground(write_config(tmp_path)) as daemon:
        daemon.wait_ready()
        hung = next(a for a in running_status(daemon)["actors"] if a["name"] == "predictor-1")
        os.kill(hung["pid"], signal.SIGSTOP)  # it cannot drain: the actor system waits for it
        os.kill(daemon.proc.pid, signal.SIGTERM)
        daemon.read_until("the drain", lambda e: e.get("event") == "draining", STOP_S)

        code, events = daemon.signal_and_wait(signal.SIGTERM)

        assert code == 0, daemon.tail()
        signals = [e for e in events if e.get("event") == "stop_signal"]
        assert [s["cut_drain_short"] for s in signals] == [False, True]
        drained = next(e for e in events if e.get("event") == "drained")
        assert drained["graceful"] is False and drained["killed"] > 0
        assert drained["leftover_pids"] == []
        assert_nothing_left(daemon)


@pytest.mark.e2e
def test_a_closed_stdout_does_not_take_the_daemon_down(tmp_path: Path) -> None:
    with foreground(write_config(tmp_path)) as daemon:
        daemon.wait_ready()
        assert daemon.proc.stdout is not None
        daemon.proc.stdout.close()  # the reader is gone: the next line echoed meets EPIPE
        # Log lines are due: a predictor is killed and replaced.
        victim = next(a for a in running_status(daemon)["actors"]
                      if a["name"] == "predictor-1")
        os.kill(victim["pid"], signal.SIGKILL)
        log = daemon.settings.log_dir / "rml.log"
        wait_for("the keeper to notice its stdout is gone",
                 lambda: '"stdout_lost"' in log.read_text(), 60.0)
        wait_for("predictor-1 to be replaced", lambda: any(
            a["name"] == "predictor-1" and a["state"] == "running" and a["pid"] != victim["pid"]
            for a in running_status(daemon)["actors"]), 60.0, 0.2)
        assert post_reading(daemon.settings)[0] == 200
        assert get(daemon.settings.predict.port) == 200

        os.kill(daemon.proc.pid, signal.SIGTERM)

        assert daemon.proc.wait(STOP_S) == 0, log.read_text()[-3000:]
        assert '"keeper_stopped"' in log.read_text()
        assert_nothing_left(daemon)


@pytest.mark.e2e
def test_rml_stop_stops_a_foreground_daemon_which_exits_0(tmp_path: Path) -> None:
    with foreground(write_config(tmp_path)) as daemon:
        daemon.wait_ready()

        done = daemon.rml("stop")

        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        events = daemon.read_to_end(STOP_S)
        assert daemon.proc.wait(STOP_S) == 0, daemon.tail()
        # `rml stop` signals the keeper too: its line may come after the keeper's last one.
        stopped = [e for e in events if e.get("event") == "keeper_stopped"]
        assert [e["exit_code"] for e in stopped] == [0]
        assert "admin_gone" not in {e.get("event") for e in events}
        assert_nothing_left(daemon)


@pytest.mark.e2e
def test_a_foreground_daemon_whose_admin_dies_exits_non_zero_and_leaves_nothing(
        tmp_path: Path) -> None:
    with foreground(write_config(tmp_path)) as daemon:
        daemon.wait_ready()
        record = read_record(daemon.settings)
        assert record is not None and record.admin_pid

        os.kill(record.admin_pid, signal.SIGKILL)  # its actors run on, holding its port

        events = daemon.read_to_end(STOP_S)
        assert daemon.proc.wait(STOP_S) == 1, daemon.tail()
        names = [e.get("event") for e in events]
        assert "admin_gone" in names and "daemon_died" in names
        assert events[-1]["event"] == "keeper_stopped" and events[-1]["exit_code"] == 1
        assert_nothing_left(daemon)


# --- a tree that cannot start --------------------------------------------------------------


@pytest.mark.e2e
def test_foreground_start_on_an_ingest_port_in_use_exits_non_zero_and_leaves_nothing(
        tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config, environ={})
    with socket.socket() as taken:
        taken.bind((HOST, settings.ingest.port))
        taken.listen()
        with foreground(config) as daemon:
            events = daemon.read_to_end(STOP_S)
            assert daemon.proc.wait(STOP_S) == 1, daemon.tail()
            failed = next(e for e in events if e.get("event") == "start_failed")
            assert (f"ingest.port: {HOST}:{settings.ingest.port} is in use by another process"
                    in failed["error"])
            assert not group_members(daemon.proc.pid)
    assert not any(port_accepts(HOST, port, 0.2) for _, _, port in node_ports(settings))
    assert read_record(settings) is None
    assert not listeners_path(settings).exists()


@pytest.mark.e2e
def test_a_tree_that_does_not_start_in_time_exits_non_zero_and_leaves_nothing(
        tmp_path: Path) -> None:
    # The admin and the first actors start, but the tree cannot answer within 10 ms.
    config = write_config(tmp_path, {"actor_system": {"start_timeout_s": 0.01}})
    with foreground(config) as daemon:
        events = daemon.read_to_end(STOP_S)
        assert daemon.proc.wait(STOP_S) == 1, daemon.tail()
        names = [e.get("event") for e in events]
        assert "start_failed" in names and "daemon_ready" not in names
        assert events[-1]["event"] == "keeper_stopped" and events[-1]["exit_code"] == 1
        assert_nothing_left(daemon)


def test_foreground_start_on_an_invalid_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("[predict]\n", "[predict]\nreplicas = 0\n"))
    done = subprocess.run([sys.executable, "-m", "run_system", "--config", str(config),
                           "start", "--foreground"], capture_output=True, text=True,
                          timeout=STOP_S, env=_env(), cwd=ROOT)
    assert done.returncode == 2, done.stdout
    assert "invalid configuration: predict.replicas" in done.stderr
    # stdout is JSON lines, the failure too (`rml start --foreground | jq` reads it).
    [failed] = [json.loads(line) for line in done.stdout.splitlines()]
    assert failed["event"] == "start_failed" and failed["key"] == "predict.replicas"
    assert failed["error"].startswith("invalid configuration: predict.replicas")


# --- what ships: the unit file, the container ------------------------------------------------


def unit_file() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "deploy" / "rml.service")
    return parser


def test_unit_file_runs_the_foreground_keeper_with_a_stop_policy_that_lets_it_drain() -> None:
    service = unit_file()["Service"]
    assert service["Type"] == "simple"
    assert re.search(r"\brml --config \S+ start --foreground$", service["ExecStart"])
    assert service["KillMode"] == "mixed"  # SIGTERM to the keeper alone
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > DRAIN_TIMEOUT_S + 10  # + ending, port checks
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service["Environment"] == f"RML_DATA_DIR=%S/{service['StateDirectory']}"


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit file was not verified")
    # verify checks that ExecStart's program exists: this checkout's rml stands in for the
    # installed one (/opt/rml/venv/bin/rml).
    rml = shutil.which("rml", path=str(Path(sys.executable).parent))
    if rml is None:
        pytest.skip("no rml console script beside this Python: the unit file was not verified")
    text = (ROOT / "deploy" / "rml.service").read_text()
    unit = tmp_path / "rml.service"
    unit.write_text(text.replace("/opt/rml/venv/bin/rml", rml))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if "rml.service" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


CONTAINER_TOKENS = {"RML_INGEST_TOKENS": "ingest-token-1234",
                    "RML_PREDICT_TOKENS": "predict-token-1234"}


def test_container_config_serves_the_edges_outside_and_keeps_thespian_on_loopback() -> None:
    settings = load_settings(ROOT / "deploy" / "rml-container.toml", environ=CONTAINER_TOKENS)
    assert settings.actor_system.bind == HOST and not settings.actor_system.allow_non_loopback
    assert settings.ingest.host == settings.predict.host == "0.0.0.0"
    assert settings.ingest.tokens == ("ingest-token-1234",)
    assert settings.data_dir == "/var/lib/rml"
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M)
               for p in line.split()}
    assert {port for _, host, port in node_ports(settings) if host == "0.0.0.0"} == exposed
    assert settings.actor_system.admin_port not in exposed


def test_container_config_refuses_to_start_without_tokens() -> None:
    with pytest.raises(ConfigError, match="ingest.tokens"):
        load_settings(ROOT / "deploy" / "rml-container.toml", environ={})


def test_dockerfile_runs_the_foreground_keeper_as_a_user_from_the_projects_own_files() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.findall(r"^CMD (.+)$", dockerfile, re.M)[-1]
    assert json.loads(cmd) == ["rml", "start", "--foreground"]
    assert re.search(r"^USER rml$", dockerfile, re.M)
    assert "pip wheel --no-cache-dir --wheel-dir /wheels ." in dockerfile
    for source in re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.M):
        assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("pyproject.toml", "README.md", "run_system.py", "deploy"):
        assert needed not in ignored


def test_compose_runs_the_daemon_with_a_mosquitto_broker_on_the_shipped_configs() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose.yaml unparsed")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    rml, broker = compose["services"]["rml"], compose["services"]["mosquitto"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in rml["volumes"]}
    config = mounts["/etc/rml/rml.toml"]
    assert (ROOT / config).is_file()
    assert "mosquitto" in rml["depends_on"]
    environment = rml["environment"]
    settings = load_settings(ROOT / config, environ={
        **CONTAINER_TOKENS, "RML_MQTT_URL": environment["RML_MQTT_URL"]})
    assert settings.mqtt.address() == ("mosquitto", 1883, False)
    assert mounts["/var/lib/rml"] in compose["volumes"]
    assert {f"{port}:{port}" for _, host, port in node_ports(settings)
            if host == "0.0.0.0"} == set(rml["ports"])
    grace = re.fullmatch(r"(\d+)s", rml["stop_grace_period"])
    assert grace and int(grace.group(1)) > DRAIN_TIMEOUT_S + 10
    broker_mounts = {v.split(":")[1]: v.split(":")[0] for v in broker["volumes"]}
    assert (ROOT / broker_mounts["/mosquitto/config/mosquitto.conf"]).resolve() == \
        (ROOT / "deploy" / "mosquitto.conf")
    persistence = re.search(r"^persistence_location (\S+)$",
                            (ROOT / "deploy" / "mosquitto.conf").read_text(), re.M)
    assert persistence and persistence.group(1).rstrip("/") in broker_mounts
    assert all(p.startswith("127.0.0.1:") for p in broker["ports"])  # anonymous: loopback
