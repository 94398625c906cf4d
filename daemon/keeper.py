"""The daemon's keeper: ``python -m daemon.keeper`` (spawned detached by ``rml start``), or
the ``rml start --foreground`` process itself (``run_foreground``: systemd, containers).

A foreground keeper is what a service manager expects of a service's main process. It
stays in the foreground and writes JSON lines to stdout: its own events and every line the
daemon logs (``runtime.logs.LogEcho`` follows ``logs/rml.log``). On SIGTERM or SIGINT it
drains as ``rml stop`` does and exits 0 with no process and no port left; a tree that
cannot start, or that dies on its own, exits non-zero (the cue to restart it). The
actors' stdout and stderr stay on ``logs/daemon.out``: a pipe closing under them would
break their logging, and a closed stdout only ends the echo, never the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from actors.listeners import (
    ListenerUnavailable,
    borrow_listener,
    edge_ports,
    listeners_path,
)
from config.settings import Settings, load_settings
from daemon.process import (
    DRAIN_TIMEOUT_S,
    DaemonError,
    clear_record,
    drain_system,
    keeper_environment,
    node_ports,
    prepare_start,
    read_record,
    reap_children,
    serve,
)
from runtime.group import descendants, port_accepts, process_alive, wait_until
from runtime.logs import LogEcho, configure_logging, get_logger

__all__ = ["main", "run_foreground"]


def main() -> int:
    """Load the same settings the CLI did and run the keeper."""
    parser = argparse.ArgumentParser(prog="rml-keeper")
    parser.add_argument("--config")
    args = parser.parse_args()
    return serve(load_settings(args.config))


def run_foreground(settings: Settings) -> int:
    """``rml start --foreground``: this process becomes the daemon's keeper, as the detached
    one would run (same settings, environment and preparation), until SIGTERM or SIGINT.
    0 when it started and then drained and stopped leaving nothing; else 1."""
    signals = _StopSignals()  # first: as a container's PID 1 it ignores SIGTERM without one
    _lead_a_process_group()
    os.environ.update(keeper_environment(settings, os.environ))
    log_file = settings.log_dir / "rml.log"
    try:
        stdout = _stdio_off_the_pipe(settings)
    except OSError as exc:  # no log directory of ours: say so where the operator looks
        return _failed_before_logging(_still_stdout(), exc)
    try:
        offset = log_file.stat().st_size if log_file.exists() else 0
        configure_logging(settings.log_dir, settings.log_level, actor="keeper")
    except OSError as exc:
        return _failed_before_logging(stdout, exc)
    echo = LogEcho(log_file, stdout, offset)
    echo.start()
    log = get_logger()
    try:
        code = _keep_in_foreground(settings, signals, log)
        log.info("keeper_stopped", exit_code=code)
        return code
    finally:
        echo.close()


def _failed_before_logging(stdout: int, exc: OSError) -> int:
    LogEcho(Path(os.devnull), stdout).write(
        {"event": "start_failed", "error": f"logs: {exc}", "level": "error"})
    return 1


def _keep_in_foreground(settings: Settings, signals: _StopSignals, log: Any) -> int:
    log.info("foreground_starting", pgid=os.getpgrp(), data_dir=settings.data_dir)
    try:
        prepare_start(settings, _LogLines(log))
    except DaemonError as exc:  # nothing started: nothing to end
        log.error("start_failed", error=str(exc))
        return 1
    if signals.stop.is_set():
        return 0  # stopped before anything started
    os.chdir(settings.data_path)
    admin_lost = threading.Event()
    threading.Thread(target=contextvars.copy_context().run,
                     args=(_watch_admin, settings, signals.stop, admin_lost, log),
                     name="rml-admin-watch", daemon=True).start()
    try:
        code = serve(settings, signals.stop)
    except Exception as exc:  # e.g. Thespian could not start its admin
        log.exception("start_failed", error=str(exc))
        code = 1
    asked = signals.stop.is_set() and not admin_lost.is_set()
    if code == 0 and not asked:
        log.error("daemon_died", reason="the actor system's admin is gone")
    clean = _drain(settings, signals, log)
    return 0 if code == 0 and asked and clean else 1


def _watch_admin(settings: Settings, stop: threading.Event, lost: threading.Event,
                 log: Any) -> None:
    """Stop the keeper once Thespian's admin is gone: shut down by ``rml stop``, or dead
    (then ``lost``: exit 1, and a restart policy starts a whole daemon again). The keeper
    would not see a dead admin by its port: the actors, forked from the admin, hold its
    listening socket open and go on running without it."""
    me = os.getpid()
    while not stop.wait(0.5):
        record = read_record(settings)
        if record is None or record.keeper_pid != me or not record.admin_pid:
            continue  # not started yet
        if not process_alive(record.admin_pid):
            if not _edges_released(settings):
                log.error("admin_gone", admin_pid=record.admin_pid)
                lost.set()
            stop.set()
            return


def _edges_released(settings: Settings) -> bool:
    """Whether the keeper's edge listeners were released, as ``rml stop`` does before it
    shuts the admin down: asked of the keeper's own lending thread."""
    ports = edge_ports(settings)
    if not ports:
        return False  # nothing to tell by
    _, host, port = ports[0]
    try:
        borrow_listener(listeners_path(settings), host, port).close()
    except ListenerUnavailable:  # "the keeper holds no listener" any more
        return True
    except OSError:
        return False
    return False


def _drain(settings: Settings, signals: _StopSignals, log: Any) -> bool:
    """What ``rml stop`` does, from inside: the edge ports are released already (``serve``
    closed them), the actors drain, then every process left below the keeper (a subreaper:
    the daemon's orphans are its children) is ended. True when no process and no port of
    the daemon is left."""
    me = os.getpid()
    log.info("draining", timeout_s=DRAIN_TIMEOUT_S)
    graceful = drain_system(settings, DRAIN_TIMEOUT_S, cut_short=signals.hurry)
    if graceful:  # otherwise nothing below is about to exit on its own
        wait_until(lambda: _tree_gone(me), 5.0)
    leftover = descendants(me)
    if leftover:
        _end_tree(me)
    remaining = descendants(me)
    reap_children()  # the zombies of the last ones: the keeper is their parent now
    ports = [(_reachable(host), port) for _, host, port in node_ports(settings)]
    wait_until(lambda: not any(port_accepts(host, port, 0.2) for host, port in ports), 5.0)
    busy = [port for host, port in ports if port_accepts(host, port, 0.2)]
    record = read_record(settings)
    if not remaining and record is not None and record.keeper_pid == me:
        clear_record(settings)
    log.info("drained", graceful=graceful, killed=len(leftover), leftover_pids=remaining,
             busy_ports=busy)
    return not remaining and not busy


def _tree_gone(keeper: int) -> bool:
    reap_children()
    return not descendants(keeper)


def _end_tree(keeper: int, timeout_s: float = 10.0) -> None:
    """SIGKILL every process below the keeper until none is left (one forking meanwhile
    can leave a child that missed the first round). By pid, not by group: the keeper is in
    the group too, and a shell pipeline's other commands may be."""
    deadline = time.monotonic() + timeout_s
    while (pids := descendants(keeper)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
        reap_children()


def _reachable(host: str) -> str:
    """Where to check that a port bound on ``host`` is closed."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


class _StopSignals:
    """SIGTERM and SIGINT: the first asks the keeper to drain and stop, another one cuts the
    drain short (the rest is killed)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._received = 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a fork of the keeper (Thespian's admin) inherits this handler
        # Event.set() takes a lock the interrupted main thread may hold (inside
        # Event.wait()): it is set from a thread of its own, never from the handler.
        with contextlib.suppress(RuntimeError):  # the interpreter is exiting: stopped already
            threading.Thread(target=contextvars.copy_context().run, args=(self._note, signum),
                             name="rml-stop-signal", daemon=True).start()

    def _note(self, signum: int) -> None:
        with self._lock:
            self._received += 1
            again = self._received > 1
        get_logger().info("stop_signal", signal=signal.Signals(signum).name,
                          cut_drain_short=again)
        if again:
            self.hurry.set()
        self.stop.set()


def _lead_a_process_group() -> None:
    """The daemon's processes are one process group (a stale daemon is cleared by ending
    its group), so the keeper must lead one. Under systemd and in a container it leads a
    session already; run from a shell it leads its job's group (and Ctrl-C reaches it);
    otherwise (a child of another program) it starts a session of its own."""
    if os.getpgrp() != os.getpid():
        os.setsid()


def _stdio_off_the_pipe(settings: Settings) -> int:
    """Point fds 0, 1 and 2 at /dev/null and ``logs/daemon.out`` (what every process forked
    from here inherits, as under the detached keeper) and return a duplicate of the real
    stdout (-1 when there was none), for the keeper's echo alone."""
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    stdout = _still_stdout()
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(settings.log_dir / "daemon.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                  0o644)
    for fd, target in ((null, 0), (out, 1), (out, 2)):
        if fd != target:
            os.dup2(fd, target)
    for fd in (null, out):
        if fd > 2:
            os.close(fd)
    return stdout


def _still_stdout() -> int:
    """A non-inheritable duplicate of fd 1, or -1 when the process was started without one."""
    try:
        return os.dup(1)
    except OSError:
        return -1


class _LogLines:
    """A text stream for ``prepare_start``'s notes (a stale daemon cleared, a store
    migrated): each line becomes a log event, so stdout stays JSON lines."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self._pending = ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            if line.strip():
                self._log.info("start_note", message=line.strip())
        return len(text)

    def flush(self) -> None:
        """Nothing is held but a line not ended yet."""


if __name__ == "__main__":
    sys.exit(main())
