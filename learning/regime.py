"""Moved to ``players.regime`` (a player: it drives the daemon from outside, see
``players/__init__.py``); this name keeps working for code that imports it from here."""

from players.regime import (
    MIGRATION,
    Regime,
)

__all__ = ["MIGRATION", "Regime"]
