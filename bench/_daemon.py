"""A real daemon for a bench: temporary directory, free ports on 127.0.0.1, always stopped.

Imported by the benches as a sibling (``from _daemon import bench_daemon``): a bench puts
the repository root and its own directory on ``sys.path`` first, as
``bench/transmit_window.py`` does. Not a bench itself.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from config.settings import Settings, load_settings
from daemon.process import start, stop
from runtime.group import free_ports

__all__ = ["bench_daemon"]


@contextlib.contextmanager
def bench_daemon(extra_toml: str = "", *, prefix: str = "rml-bench-",
                 tokens: Sequence[str] = (), ingest_toml: str = "", keep: bool = False,
                 keep_note: str = "data kept in", start_daemon: bool = True,
                 warn_leftovers: bool = False) -> Iterator[tuple[Settings, Path]]:
    """Yield ``(settings, rml.toml path)`` for a daemon in a new temporary directory.

    The ``rml.toml`` there holds ``data_dir`` (``<tmp>/data``), ``[actor_system]
    admin_port``, ``[ingest] port`` and ``[predict] port`` (three free ports), a
    ``tokens = [...]`` line in both ``[ingest]`` and ``[predict]`` if ``tokens`` are
    given, ``ingest_toml`` (more ``[ingest]`` lines), then ``extra_toml`` (whole
    sections). With ``keep`` the directory is not removed and ``"<keep_note> <tmp>"`` is
    printed first. With ``start_daemon`` the daemon is started before the yield and
    stopped after it, whatever happens (with ``warn_leftovers``, a stop that leaves
    processes or ports behind is printed);
    otherwise the caller starts and stops it (``players.chaos.run_chaos`` does).
    """
    where: contextlib.AbstractContextManager[str] = (
        contextlib.nullcontext(tempfile.mkdtemp(prefix=prefix)) if keep
        else tempfile.TemporaryDirectory(prefix=prefix))
    with where as tmp:
        if keep:
            print(f"{keep_note} {tmp}")
        admin, ingest, predict, metrics = free_ports(4)
        token_line = ("tokens = [" + ", ".join(f'"{t}"' for t in tokens) + "]\n"
                      if tokens else "")
        config = Path(tmp) / "rml.toml"
        config.write_text(
            f'data_dir = "{tmp}/data"\n[actor_system]\nadmin_port = {admin}\n'
            f"[ingest]\nport = {ingest}\n{token_line}{ingest_toml}"
            f"[predict]\nport = {predict}\n{token_line}"
            f"[metrics]\nport = {metrics}\n"
            f"{extra_toml}"
        )
        settings = load_settings(config, environ={})
        if not start_daemon:
            yield settings, config
            return
        start(settings, str(config))
        try:
            yield settings, config
        finally:
            report = stop(settings)
            if warn_leftovers and (report.leftover_pids or report.busy_ports):
                print(f"LEFT BEHIND: {report.leftover_pids} {report.busy_ports}")
