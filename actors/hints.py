"""Flow control for hints: at most one unacknowledged hint per receiver.

Why: Thespian lets a process have 20 transmits in flight (``THESPIAN_MAX_PENDING_TRANSMITS``),
across all its receivers, and a transmit stays in flight until the receiver's process
reads it, which it does only between two handlers. Hints sent a few times a second to
an actor that works for seconds in one handler (the learner training) fill that window,
and every later send of the process waits behind them, a supervisor's ``Pong`` included:
the sender misses its heartbeat and is killed although it is healthy
(``bench/transmit_window.py`` shows it). Hints are coalescable (the store is the log),
so a receiver that has not noted the last one needs no new one yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["HintWindow"]

#: A hint unacknowledged this long is assumed lost (its receiver may have been replaced
#: under the same address): one more may go. Longer than a long handler's usual run.
RESEND_AFTER_S = 30.0


class HintWindow:
    """Which receivers may get a hint now: those with none unacknowledged.

    Thespian's addresses compare equal but are not hashable: a short list, searched.
    """

    def __init__(self, resend_after_s: float = RESEND_AFTER_S) -> None:
        self._outstanding: list[tuple[Any, int, float]] = []  # (address, sequence, sent)
        self._sequence = 0
        self._resend_after_s = resend_after_s

    def _find(self, address: Any) -> int:
        for i, (other, _, _) in enumerate(self._outstanding):
            if other == address:
                return i
        return -1

    def ready(self, receivers: Iterable[Any], now: float) -> list[Any]:
        """The receivers a hint may go to now."""
        out = []
        for address in receivers:
            i = self._find(address)
            if i < 0 or now - self._outstanding[i][2] >= self._resend_after_s:
                out.append(address)
        return out

    def sent(self, receivers: Iterable[Any], now: float) -> int:
        """Record a hint sent to ``receivers``; returns its sequence number (to put in it)."""
        self._sequence += 1
        for address in receivers:
            i = self._find(address)
            if i >= 0:
                del self._outstanding[i]
            self._outstanding.append((address, self._sequence, now))
        return self._sequence

    def noted(self, receiver: Any, sequence: int) -> None:
        """``receiver`` acknowledged hint ``sequence`` (an older one leaves a newer pending)."""
        i = self._find(receiver)
        if i >= 0 and sequence >= self._outstanding[i][1]:
            del self._outstanding[i]

    def forget_except(self, live: Iterable[Any]) -> None:
        """Drop receivers that are gone (their replacements have new addresses)."""
        keep = list(live)
        self._outstanding = [entry for entry in self._outstanding if entry[0] in keep]

    def waiting(self) -> int:
        """How many receivers have a hint unacknowledged."""
        return len(self._outstanding)
