"""Counters an HTTP edge thread bumps and the actor (or ``/metrics``) reads."""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = ["Counters"]


class Counters:
    """Named integer counters, safe to bump from the edge's threads."""

    def __init__(self, names: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def bump(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name``."""
        with self._lock:
            self._values[name] += by

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter, taken at one moment."""
        with self._lock:
            return dict(self._values)
