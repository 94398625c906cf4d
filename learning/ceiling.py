"""Moved to ``players.ceiling`` (a player: it drives the daemon from outside, see
``players/__init__.py``); this name keeps working for code that imports it from here, and
``python -m learning.ceiling`` still prints the report."""

from players.ceiling import (
    holdout_best_auc,
    holdout_ceiling,
    main,
)

__all__ = ["holdout_best_auc", "holdout_ceiling", "main"]

if __name__ == "__main__":
    main()
