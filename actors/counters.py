"""Counters an HTTP edge thread bumps and the actor (or ``/metrics``) reads."""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = ["Counters"]


class Counters:
    """Named integer counters, safe to bump from the edge's threads.

    No lock on the bump (it took half of the bump's time, measured on the prediction path):
    each bumping thread adds to a book of its own, and ``snapshot`` sums the books, copying
    each one whole (a dict's ``copy`` is atomic under the GIL).
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._names = tuple(dict.fromkeys(names))
        self._local = threading.local()
        self._books: list[dict[str, int]] = []
        self._books_lock = threading.Lock()  # taken once per bumping thread, and by snapshot

    def bump(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name`` (one of the names given; else KeyError)."""
        try:
            book: dict[str, int] = self._local.book
        except AttributeError:
            book = self._local.book = dict.fromkeys(self._names, 0)
            with self._books_lock:
                self._books.append(book)
        book[name] += by

    def snapshot(self) -> dict[str, int]:
        """Every counter: what each thread had counted when its book was copied."""
        with self._books_lock:
            books = [book.copy() for book in self._books]
        totals = dict.fromkeys(self._names, 0)
        for book in books:
            for name, value in book.items():
                totals[name] += value
        return totals
