"""Moved to ``players.demo`` (a player: it drives the daemon from outside, see
``players/__init__.py``); this name keeps working for code that imports it from here."""

from players.demo import (
    last_midnight_ms,
    run_demo,
)

__all__ = ["last_midnight_ms", "run_demo"]
