"""Logs: structlog JSON lines, one file per daemon, never a pipe.

Every process of the daemon (admin, supervisors, actors) appends to
``<data_dir>/logs/rml.log``; lines are written whole with O_APPEND, so
processes do not interleave within a line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, TextIO

import structlog

from daemon.group import NODE_ENV

__all__ = ["NODE_ENV", "configure_logging", "get_logger", "thespian_log_defs"]

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
