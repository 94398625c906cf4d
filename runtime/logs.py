"""Logs: structlog JSON lines, one file per daemon, never a pipe.

Every process of the daemon (admin, supervisors, actors) appends to
``<data_dir>/logs/rml.log``; lines are written whole with O_APPEND, so
processes do not interleave within a line. A foreground keeper echoes the file
to its own stdout (``LogEcho``); no actor ever writes to that pipe.

Every process configures it (keeper, supervisors, actors), so it sits below them; its old
name ``daemon.logs`` still imports it (``daemon.MOVED``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from pathlib import Path
from typing import Any, TextIO

import orjson
import structlog

from runtime.group import NODE_ENV

__all__ = ["NODE_ENV", "LogEcho", "configure_logging", "get_logger", "thespian_log_defs"]

_configured_pid: int | None = None
_stream: TextIO | None = None


def configure_logging(log_dir: Path, level: str = "info", **context: Any) -> None:
    """Send this process's structlog output to the daemon's JSON log file.

    Called again after a fork (a new pid) it reopens the file for this process.
    ``context`` is bound to every line (e.g. ``actor="collector-1"``).
    """
    global _configured_pid, _stream
    if _configured_pid != os.getpid():
        log_dir.mkdir(parents=True, exist_ok=True)
        _stream = open(log_dir / "rml.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        _configured_pid = os.getpid()
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(sort_keys=False, default=str),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(
                logging.getLevelNamesMapping()[level.upper()]
            ),
            logger_factory=structlog.PrintLoggerFactory(file=_stream),
            cache_logger_on_first_use=False,
        )
    structlog.contextvars.clear_contextvars()
    node = os.environ.get(NODE_ENV)  # set by the node's keeper, inherited by its processes
    structlog.contextvars.bind_contextvars(pid=os.getpid(), **({"node": node} if node else {}),
                                           **context)


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` values on every line."""
    return structlog.get_logger().bind(**bound)


def thespian_log_defs(log_dir: Path, level: str = "info") -> dict[str, Any]:
    """Thespian's own logging (its logger process) to a file, not the launcher's stdout."""
    log_dir.mkdir(parents=True, exist_ok=True)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": str(log_dir / "thespian.log"),
                "formatter": "plain",
                "level": "WARNING" if level != "debug" else "DEBUG",
            },
        },
        "root": {"handlers": ["file"], "level": "WARNING" if level != "debug" else "DEBUG"},
    }


class LogEcho:
    """Copies the lines every process of the daemon appends to its log file to a descriptor:
    the foreground keeper's real stdout (the journal under systemd, ``docker logs``).

    It follows the file, as ``tail -f`` would, in a thread of its own: a reader that is slow
    or stuck blocks only that thread. A reader that went away (EPIPE) or any other error
    writing ends the echo, never the daemon. Processes forked from the keeper close their
    copy of the descriptor, so the reader sees the end of the output when the keeper exits.
    """

    def __init__(self, path: Path, fd: int, offset: int = 0, interval_s: float = 0.1) -> None:
        self._path = path
        self._fd = fd
        self._offset = offset  # where this run's lines start (earlier runs' are not echoed)
        self._interval_s = interval_s
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.broken = False

    def start(self) -> None:
        """Start following the file (it must exist: ``configure_logging`` creates it)."""
        _ECHOES.add(self)
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._follow,), name="rml-log-echo",
                                        daemon=True)
        self._thread.start()

    def write(self, line: dict[str, Any]) -> None:
        """Write one JSON line of the caller's own (only before ``start`` or after
        ``close``: the thread writes alone while it runs)."""
        self._write(orjson.dumps(line) + b"\n")

    def close(self, timeout_s: float = 2.0) -> None:
        """Echo what the file holds by now, then stop; a reader that does not take it
        within ``timeout_s`` loses it (the thread is left blocked, and dies with the
        process)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        _ECHOES.discard(self)

    def _follow(self) -> None:
        with open(self._path, "rb") as log:
            log.seek(self._offset)
            partial = b""
            while not self.broken:
                last_pass = self._closing.is_set()  # then read to the end once more
                chunk = log.read(_CHUNK)
                if chunk:
                    lines, newline, partial = (partial + chunk).rpartition(b"\n")
                    if newline:
                        echoed = (_json_line(line) for line in lines.split(b"\n") if line)
                        self._write(b"".join(echoed))
                    continue
                if os.fstat(log.fileno()).st_size < log.tell():  # truncated: start over
                    log.seek(0)
                    partial = b""
                    continue
                if last_pass:
                    return
                self._closing.wait(self._interval_s)

    def _write(self, data: bytes) -> None:
        if self.broken or self._fd < 0:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:  # EPIPE: the reader is gone; the daemon runs on without it
            self.broken = True
            get_logger().warning("stdout_lost", error=str(exc))

    def _forget_in_child(self) -> None:
        """In a fork of the keeper: close the inherited descriptor, echo nothing."""
        self.broken = True
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1


_CHUNK = 1 << 16


def _json_line(line: bytes) -> bytes:
    """``line`` with its newline; a line that is not a JSON object (a partial write of a
    killed process) is wrapped in one, so that every line echoed parses."""
    try:
        if isinstance(orjson.loads(line), dict):
            return line + b"\n"
    except orjson.JSONDecodeError:
        pass
    return orjson.dumps({"event": "log_line", "line": line.decode(errors="replace")}) + b"\n"


_ECHOES: set[LogEcho] = set()


def _forget_all_in_child() -> None:
    for echo in list(_ECHOES):
        echo._forget_in_child()
    _ECHOES.clear()


os.register_at_fork(after_in_child=_forget_all_in_child)
