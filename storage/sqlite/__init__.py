"""The embedded default backend: every store on SQLite files in the data directory.

One file per hot writer (``facts.sqlite``, ``features.sqlite``, ``models.sqlite``,
``system.sqlite``, ``drift.sqlite``), WAL and durable commits; ``connection`` holds what
every store shares (connection settings, transactions, error mapping), and each other
module implements one protocol of ``storage``.
"""
