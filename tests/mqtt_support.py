"""The MQTT tests' broker: ``players.broker`` (a real Mosquitto on the project's own config,
on a free loopback port). Without a ``mosquitto`` binary the tests skip and say why."""

from __future__ import annotations

import pytest

from players.broker import Broker, mosquitto_binary, running_broker

__all__ = ["NEEDS_BROKER", "Broker", "running_broker"]

NEEDS_BROKER = pytest.mark.skipif(
    mosquitto_binary() is None,
    reason="no mosquitto broker: install Debian's `mosquitto` package (`.ci/run` does)")
