"""The storage errors callers handle: no backend exception escapes a store raw.

A caller (the collector answering a gateway, a supervisor deciding to restart)
needs only two questions answered: is the store gone (``StoreUnavailable``:
cannot open, disk I/O, corrupt, read-only) or merely busy past its deadline
(``StoreTimeout``: retry later, answer 503)? Everything else is a ``StoreError``.
"""

from __future__ import annotations

__all__ = ["StoreError", "StoreTimeout", "StoreUnavailable"]


class StoreError(Exception):
    """A store could not do what was asked; nothing was half done."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or used: cannot open, I/O error, corrupt, read-only."""


class StoreTimeout(StoreError):
    """The store stayed busy (locked by another writer) past the configured timeout."""
