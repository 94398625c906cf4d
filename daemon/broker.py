"""Moved to ``players.broker`` (a player: it drives the daemon from outside, see
``players/__init__.py``); this name keeps working for code that imports it from here."""

from players.broker import (
    SHIPPED,
    Broker,
    mosquitto_binary,
    running_broker,
)

__all__ = ["SHIPPED", "Broker", "mosquitto_binary", "running_broker"]
