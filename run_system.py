"""The launcher: ``rml [--config FILE] VERB`` (also ``python run_system.py ...``).

Verbs: ``start``, ``stop``, ``status [--json]``, ``deadletters [--json]``, ``demo``;
``train``, ``models``, ``rollback`` (``daemon.registry_cli``); ``report``
(``daemon.report_cli``); ``migrate --to couchbase`` (``daemon.migrate_cli``);
``backup DIR``, ``restore DIR [--force]`` (``daemon.backup``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from config.settings import Settings, load_settings
from daemon.process import DaemonError, read_record, start, stop, wait_joined

__all__ = ["main"]


def _cmd_start(settings: Settings, args: argparse.Namespace) -> int:
    if args.foreground:  # this process becomes the keeper (systemd, containers)
        from daemon.keeper import run_foreground

        return run_foreground(settings)
    record = start(settings, args.config)
    print(f"started: process group {record.pgid}; ingest on "
          f"http://{settings.ingest.host}:{record.ingest_port}, predictions on "
          f"http://{settings.predict.host}:{record.predict_port}; logs in {settings.log_dir}")
    if not settings.cluster.leads:
        try:
            placed = wait_joined(settings)
        except DaemonError:
            stop(settings)  # refused: nothing is left running for it
            raise
        if placed is None:
            print(f"the leader at {settings.cluster.join} does not answer yet: node "
                  f"{settings.node_name} joins when it does")
        else:
            print(f"node {settings.node_name} joined the leader at {settings.cluster.join}: "
                  f"{placed} replicas running here")
    return 0


def _cmd_stop(settings: Settings, args: argparse.Namespace) -> int:
    report = stop(settings)
    if not report.was_running:
        print("not running")
        return 0
    how = "drained and stopped" if report.graceful else "stopped (forced)"
    if report.leftover_pids or report.busy_ports:
        print(f"{how}, but processes {list(report.leftover_pids)} / ports "
              f"{list(report.busy_ports)} remain", file=sys.stderr)
        return 1
    print(f"{how}: no process and no port left")
    return 0


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.status import collect_status, render_status

    if read_record(settings) is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("not running")
        return 3
    status = collect_status(settings)
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return 0


def _cmd_deadletters(settings: Settings, args: argparse.Namespace) -> int:
    """Poison messages recorded by supervisors (read from the store; no daemon needed)."""
    from dataclasses import asdict

    from storage.backend import StoreBackend
    from storage.errors import StoreUnavailable

    backend = StoreBackend(settings, read_only=True)
    try:
        try:
            store = backend.deadletters()
        except StoreUnavailable:  # no dead-letter store yet: none recorded
            letters: tuple[Any, ...] = ()
        else:
            letters = store.list(args.limit)
    finally:
        backend.close()
    if args.json:
        print(json.dumps([asdict(letter) for letter in letters], indent=2))
        return 0
    if not letters:
        print("no dead letters")
    from daemon.status import utc_text

    for letter in letters:
        last = (letter.error.strip().splitlines() or [""])[-1]
        print(f"{utc_text(letter.at_ms)}  {letter.actor:<18} {letter.message_type:<16} {last}")
    return 0


def _cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    """Copy every store into DIR while the daemon runs (``daemon.backup``)."""
    from daemon.backup import backup

    manifest = backup(settings, args.dir)
    facts = ("" if manifest.readings is None else
             f"; {manifest.readings:,} readings, {manifest.outcomes:,} outcomes")
    champion = "" if manifest.champion is None else f", champion v{manifest.champion}"
    print(f"backed up {len(manifest.files)} stores of {manifest.source} to {args.dir}: "
          f"{manifest.size:,} bytes in {manifest.seconds:.2f} s{facts}{champion}; "
          "every copy passed PRAGMA integrity_check")
    return 0


def _cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    """Install a backup as the (stopped) data directory's stores (``daemon.backup``)."""
    from daemon.backup import restore

    report = restore(settings, args.dir, force=args.force)
    manifest = report.manifest
    print(f"restored {len(manifest.files)} stores ({manifest.size:,} bytes, backed up "
          f"{manifest.created_at} from {manifest.source}) into {report.data_dir} in "
          f"{report.seconds:.2f} s; checksums and PRAGMA integrity_check passed")
    if report.replaced is not None:
        print(f"the stores it replaced are in {report.replaced}")
    return 0


def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from players.demo import run_demo

    return run_demo(settings, args.config)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments: global ``--config`` before the verb."""
    parser = argparse.ArgumentParser(prog="rml", description="Reactive ML daemon")
    parser.add_argument("--config", help="TOML settings file (else $RML_CONFIG, else defaults)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    start_verb = verbs.add_parser("start", help="start the daemon (detached)")
    start_verb.add_argument("--foreground", action="store_true",
                            help="run the daemon in this process until SIGTERM/SIGINT, JSON "
                            "log lines on stdout (for systemd and containers)")
    start_verb.set_defaults(run=_cmd_start)
    verbs.add_parser("stop", help="drain and stop the daemon").set_defaults(run=_cmd_stop)
    status = verbs.add_parser("status", help="supervision tree, model, counters")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_cmd_status)
    dead = verbs.add_parser("deadletters", help="poison messages, newest first")
    dead.add_argument("--json", action="store_true")
    dead.add_argument("--limit", type=int, default=100)
    dead.set_defaults(run=_cmd_deadletters)
    verbs.add_parser("demo", help="start, play field gateways, predict, crash, stop"
                     ).set_defaults(run=_cmd_demo)
    from daemon.report_cli import add_report_parser

    add_report_parser(verbs)
    from daemon.registry_cli import add_registry_parsers

    add_registry_parsers(verbs)  # train, models, rollback
    from daemon.migrate_cli import add_migrate_parser

    add_migrate_parser(verbs)
    backup = verbs.add_parser("backup", help="copy every store into DIR (a consistent, "
                              "checked copy, while the daemon runs)")
    backup.add_argument("dir", type=Path, metavar="DIR", help="a new or empty directory")
    backup.set_defaults(run=_cmd_backup)
    restore = verbs.add_parser("restore", help="install a backup as this data directory's "
                               "stores (daemon stopped)")
    restore.add_argument("dir", type=Path, metavar="DIR", help="a directory `rml backup` wrote")
    restore.add_argument("--force", action="store_true",
                         help="replace the stores already there (moved to replaced-<time>/)")
    restore.set_defaults(run=_cmd_restore)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rml`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        return int(args.run(settings, args))
    except ConfigError as exc:
        print(f"rml: invalid configuration: {exc}", file=sys.stderr)
        if getattr(args, "foreground", False):  # stdout carries JSON lines: the failure too
            print(json.dumps({"event": "start_failed", "error": f"invalid configuration: {exc}",
                              "key": exc.key, "level": "error"}), flush=True)
        return 2
    except DaemonError as exc:
        print(f"rml: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
