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
    """Which receivers may get a hint now (those with none unacknowledged), and what each
    was last told (a hint carries what is new to *its* receiver).

    Thespian's addresses compare equal but are not hashable: a short list, searched.
    """

    def __init__(self, resend_after_s: float = RESEND_AFTER_S) -> None:
        # Per receiver: [address, what it was last told, unacknowledged sequence or 0, sent]
        self._receivers: list[list[Any]] = []
        self._sequence = 0
        self._resend_after_s = resend_after_s

    def _find(self, address: Any) -> list[Any] | None:
        return next((entry for entry in self._receivers if entry[0] == address), None)

    def ready(self, receivers: Iterable[Any], now: float) -> list[Any]:
        """The receivers a hint may go to now."""
        out = []
        for address in receivers:
            entry = self._find(address)
            if entry is None or not entry[2] or now - entry[3] >= self._resend_after_s:
                out.append(address)
        return out

    def told(self, address: Any, default: Any = None) -> Any:
        """What ``address`` was last told (``default`` if nothing yet)."""
        entry = self._find(address)
        return default if entry is None else entry[1]

    def sent(self, receivers: Iterable[Any], now: float, told: Any = None) -> int:
        """Record a hint telling ``told`` sent to ``receivers``; returns its sequence number
        (to put in it)."""
        self._sequence += 1
        for address in receivers:
            entry = self._find(address)
            if entry is None:
                self._receivers.append([address, told, self._sequence, now])
            else:
                entry[1:] = [told, self._sequence, now]
        return self._sequence

    def noted(self, receiver: Any, sequence: int) -> None:
        """``receiver`` acknowledged hint ``sequence`` (an older one leaves a newer pending)."""
        entry = self._find(receiver)
        if entry is not None and entry[2] and sequence >= entry[2]:
            entry[2] = 0

    def forget_except(self, live: Iterable[Any]) -> None:
        """Drop receivers that are gone (their replacements have new addresses)."""
        keep = list(live)
        self._receivers = [entry for entry in self._receivers if entry[0] in keep]

    def waiting(self) -> int:
        """How many receivers have a hint unacknowledged."""
        return sum(1 for entry in self._receivers if entry[2])
