"""`Waker`: how any thread tells an actor "look again" without an actor message.

The cut is here because a waker is not HTTP: it is the one hand-off between a thread outside
the actor system (an edge's loop or worker) and the actor that watches it with
`ThespianWatch`. The edge re-exports it, since the edge is where actors first meet it.
"""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["Waker"]


class Waker:
    """A socketpair an actor watches (`ThespianWatch([waker.fileno()])`) and any thread pokes.

    Coalescing: however many `notify` calls arrive before `drain`, at most one byte is pending.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._lock = threading.Lock()
        self._pending = False
        self._closed = False

    def fileno(self) -> int:
        """The read end, to pass to `ThespianWatch`."""
        return self._reader.fileno()

    def notify(self) -> None:
        """Make the read end readable; never blocks, never raises."""
        with self._lock:
            if self._pending or self._closed:
                return
            self._pending = True
            with contextlib.suppress(OSError):  # a full buffer still leaves it readable
                self._writer.send(b"\0")

    def drain(self) -> None:
        """Consume every pending byte; call before looking at what changed."""
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while self._reader.recv(4096):
                    pass
            self._pending = False

    def close(self) -> None:
        """Close both ends; later `notify` calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._reader.close()
            self._writer.close()

    def __enter__(self) -> Waker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
