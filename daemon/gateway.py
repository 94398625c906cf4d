"""Moved to ``players.gateway`` (a player: it drives the daemon from outside, see
``players/__init__.py``); this name keeps working for code that imports it from here."""

from players.gateway import (
    HttpClient,
    IngestTally,
    publish_items,
    send_items,
    talk_item,
)

__all__ = ["HttpClient", "IngestTally", "publish_items", "send_items", "talk_item"]
