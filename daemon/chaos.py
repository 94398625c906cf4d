"""Moved to ``players.chaos`` (a player: it drives the daemon from outside, see
``players/__init__.py``); this name keeps working for code that imports it from here."""

from players.chaos import (
    ChaosReport,
    answered_by,
    home_replicas,
    replacements,
    run_chaos,
)

__all__ = ["ChaosReport", "answered_by", "home_replicas", "replacements", "run_chaos"]
