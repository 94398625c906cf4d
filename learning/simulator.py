"""Moved to ``players.simulator`` (a player: it drives the daemon from outside, see
``players/__init__.py``); this name keeps working for code that imports it from here."""

from players.simulator import (
    MALFORMED_KINDS,
    MIGRATION,
    GatewayTraffic,
    Regime,
    Savanna,
    outcome_item,
    reading_item,
)

__all__ = [
    "MALFORMED_KINDS", "MIGRATION", "GatewayTraffic", "Regime", "Savanna", "outcome_item",
    "reading_item",
]
