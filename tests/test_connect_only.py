"""A client never starts a Thespian admin of its own (``runtime.loopback.connect_only``).

Both clients probe the admin's port before they connect, but a daemon stopping between
the probe and the connection used to leave the client's process running an admin: Thespian
starts one wherever ``ActorSystem(...)`` finds none. Each case runs in a process of its own,
with the probe made to see a daemon on a port where none is: it must fail with a clear
error and leave the port unbound (an admin started by mistake is shut down by the script).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PROBE_LIES = textwrap.dedent("""
    import os, socket, sys
    from runtime.group import free_ports
    port = free_ports(1)[0]
    which = sys.argv[1]
    started = None
    try:
        if which == "rml":
            from daemon import process
            from config.settings import load_settings
            process.port_accepts = lambda host, port: True  # the daemon stopped since
            settings = load_settings(environ={"RML_ACTOR_SYSTEM_ADMIN_PORT": str(port)})
            started = process.connect(settings)
        else:
            from rml_client import over_thespian
            class Probed:  # the probe's connection, made before the daemon stopped
                def close(self): pass
            over_thespian.socket.create_connection = lambda *a, **k: Probed()
            started = over_thespian.ThespianPredictionClient(admin_port=port,
                                                             timeout_s=2.0)._asys
        print("CONNECTED")
    except Exception as exc:
        print(type(exc).__name__, exc)
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", port))
        print("port free")
    except OSError:
        print("port taken")
    finally:
        probe.close()
    sys.stdout.flush()
    if started is not None:  # an admin of our own: stop it, leave nothing behind
        started.shutdown()
""")


@pytest.mark.parametrize(("which", "error"), [
    ("rml", "DaemonError no daemon answers on 127.0.0.1:"),
    ("client", "ConnectionFailed Thespian admin 127.0.0.1:"),
])
def test_a_daemon_gone_between_the_probe_and_the_connection_starts_no_admin(
        which: str, error: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RML_")}
    process = subprocess.Popen([sys.executable, "-c", _PROBE_LIES, which], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    lines = out.splitlines()
    assert len(lines) == 2, out + err
    assert lines[0].startswith(error), lines[0]
    assert lines[1] == "port free"

