"""``rml migrate --to couchbase``: copy this data directory's SQLite stores into the cluster.

The daemon must be stopped (its writers would race the copy). The destination is
``[storage.couchbase]``; its scope and collections are created if missing. The copy
is idempotent (``storage.migrate``): run it again after an interruption, or twice,
and nothing doubles. Afterwards set ``[storage] backend = "couchbase"``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any, TextIO

from config.settings import Settings
from daemon.process import DaemonError, read_record

__all__ = ["add_migrate_parser"]

_BAR = 30


class _ProgressBar:
    """One line per store: a bar redrawn in place on a terminal, the final count elsewhere."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.current: str | None = None

    def __call__(self, store: str, done: int, total: int) -> None:
        if self.tty:
            filled = _BAR if total == 0 else _BAR * done // total
            self.out.write(f"\r  {store:<24} [{'#' * filled}{'.' * (_BAR - filled)}] "
                           f"{done:,}/{total:,}")
            if done >= total:
                self.out.write("\n")
            self.out.flush()
        elif done >= total and store != self.current:
            print(f"  {store:<24} {total:,} copied", file=self.out, flush=True)
        self.current = store if done < total else None


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from storage.backend import StoreBackend
    from storage.errors import StoreError
    from storage.migrate import migrate

    if read_record(settings) is not None:
        raise DaemonError("the daemon is running: stop it first (rml stop), then migrate")
    if not settings.data_path.is_dir():
        raise DaemonError(f"no data directory at {settings.data_path}")
    sqlite = replace(settings, storage=replace(settings.storage, backend="sqlite"))
    target = replace(settings, storage=replace(settings.storage, backend=args.to))
    cb = settings.storage.couchbase
    print(f"migrating {settings.data_path} -> couchbase {cb.connection_string} "
          f"bucket {cb.bucket!r} scope {cb.scope!r}", flush=True)
    source = StoreBackend(sqlite, read_only=True)
    dest = StoreBackend(target, writer="migrate")
    try:
        dest.connection().ensure_collections()
        counts = migrate(source, dest, _ProgressBar(sys.stderr))
    except StoreError as exc:
        raise DaemonError(f"migrate: {exc}") from exc
    finally:
        source.close()
        dest.close()
    print(f"{'store':<24} {'read':>10} {'new':>10}")
    for store, read in counts.read.items():
        print(f"{store:<24} {read:>10,} {counts.new.get(store, 0):>10,}")
    print("done: set [storage] backend = \"couchbase\" to run the daemon on the cluster")
    return 0


def add_migrate_parser(verbs: Any) -> None:
    """Add ``migrate`` to the CLI's verbs."""
    parser = verbs.add_parser("migrate", help="copy this data directory into Couchbase "
                              "(daemon stopped; idempotent)")
    parser.add_argument("--to", choices=("couchbase",), required=True)
    parser.set_defaults(run=_cmd_migrate)
