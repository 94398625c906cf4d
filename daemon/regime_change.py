"""Moved to ``players.regime_change`` (a player: it drives the daemon from outside, see
``players/__init__.py``); this name keeps working for code that imports it from here."""

from players.regime_change import (
    RegimeChange,
    holdout_auc,
)

__all__ = ["RegimeChange", "holdout_auc"]
