"""Actors for ``bench/transmit_window.py`` (importable by module path, as Thespian needs)."""

from __future__ import annotations

import time
from typing import Any

from thespian.actors import Actor, WakeupMessage

from actors.hints import HintWindow
from messages.protocol import FactsNoted, FactsRecorded


class Busy(Actor):
    """Stands for the learner: one handler that works for seconds; notes every hint."""

    def receiveMessage(self, msg: Any, sender: Any) -> None:  # noqa: N802
        if isinstance(msg, tuple) and msg[0] == "work":
            time.sleep(msg[1])
        elif isinstance(msg, FactsRecorded):
            self.send(sender, FactsNoted(msg.sequence))


class Hinter(Actor):
    """Stands for a collector: a hint every 0.25 s, always or only when the last was noted."""

    def __init__(self) -> None:
        super().__init__()
        self.target: Any = None
        self.windowed = False
        self.window = HintWindow()
        self.sent = 0

    def receiveMessage(self, msg: Any, sender: Any) -> None:  # noqa: N802
        if isinstance(msg, tuple) and msg[0] == "target":
            self.target, self.windowed = msg[1], msg[2]
            self.wakeupAfter(0.25)
        elif isinstance(msg, WakeupMessage):
            now = time.monotonic()
            if not self.windowed or self.window.ready([self.target], now):
                sequence = self.window.sent([self.target], now)
                self.send(self.target, FactsRecorded("bench", 1, 0, sequence))
                self.sent += 1
            self.wakeupAfter(0.25)
        elif isinstance(msg, FactsNoted):
            self.window.noted(sender, msg.sequence)
        elif msg == "ping":
            self.send(sender, ("pong", self.sent))
