"""``rml report [--output FILE]``: the model registry as a self-contained HTML page.

Reads the registry read-only, so it works with or without a running daemon; the
rendering is ``learning.report.page``. The page is written to a temporary file beside
the target and renamed over it, so a reader never sees half a report.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from config.settings import Settings
from learning.report.page import RegistrySnapshot, render_report
from storage.backend import StoreBackend
from storage.errors import StoreError, StoreUnavailable
from storage.registry import ModelRegistry

__all__ = ["DEFAULT_REPORT_NAME", "add_report_parser", "read_snapshot", "write_report"]

DEFAULT_REPORT_NAME = "report.html"


def read_snapshot(registry: ModelRegistry, source: str, now_ms: int | None = None
                  ) -> RegistrySnapshot:
    """Every version, the champion log and each version's status log, from ``registry``
    (``source``: where it lives, as the page names it)."""
    records = registry.versions()
    logs = tuple((record.version, registry.status_history(record.version))
                 for record in records)
    return RegistrySnapshot(
        records=records, champion_history=registry.champion_history(), status_logs=logs,
        source=source, generated_at_ms=int(time.time() * 1000) if now_ms is None else now_ms)


def _source(settings: Settings, registry: ModelRegistry) -> str:
    """Where ``registry`` lives: its SQLite file, else its Couchbase bucket and scope."""
    path = getattr(registry, "path", None)  # only a file-backed registry has one
    if path is not None:
        return str(path)
    couchbase = settings.storage.couchbase
    return f"couchbase {couchbase.bucket}.{couchbase.scope}"


def write_report(html: str, output: Path) -> None:
    """Write ``html`` to ``output`` atomically (a temporary file renamed over it)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(html)
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    """Render the registry to ``--output`` (default ``<data_dir>/report.html``)."""
    output = Path(args.output) if args.output else settings.data_path / DEFAULT_REPORT_NAME
    backend = StoreBackend(settings, read_only=True)
    try:
        try:
            registry = backend.registry()
        except StoreUnavailable as exc:
            print(f"rml: no model registry to report on ({exc}); start the daemon and let it "
                  "train a model first", file=sys.stderr)
            return 1
        snapshot = read_snapshot(registry, _source(settings, registry))
    except StoreError as exc:
        print(f"rml: cannot read the model registry: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    try:
        write_report(render_report(snapshot), output)
    except OSError as exc:
        print(f"rml: cannot write the report to {output}: {exc}", file=sys.stderr)
        return 1
    count = len(snapshot.records)
    print(f"wrote {output} ({count} model version{'s' if count != 1 else ''})")
    return 0


def add_report_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``report`` verb on the CLI's subparsers."""
    report = verbs.add_parser("report", help="write a self-contained HTML report of the "
                                             "model registry")
    report.add_argument("--output", metavar="FILE",
                        help=f"where to write it (default <data_dir>/{DEFAULT_REPORT_NAME})")
    report.set_defaults(run=_cmd_report)
