"""Keep Thespian's unauthenticated pickle transport on loopback.

Thespian 4.0.1 binds the admin and every actor on all interfaces, whatever
``THESPIAN_BASE_IPADDR`` says (that variable only changes the address it
advertises). Anyone who reaches one of those ports can make the process
unpickle what they send. This module patches ``IPActorAddress`` so that the
bind address is the advertised one. Actor processes are forked from the
process that applied the patch, so they inherit it; importing this module
applies it again where that is not so (``actors.base`` imports it, so every
actor and supervisor process has it). The launcher and ``rml_client``'s Thespian
client call ``bind_thespian_to``. Its old name ``daemon.loopback`` still imports it
(``daemon.MOVED``).

``connect_only`` is the other patch clients need: when no admin answers on its port,
``ActorSystem(...)`` starts one in the calling process. A client probes the port first,
but a daemon stopping between the probe and the connection would leave the client's
process running an admin of its own; within ``connect_only`` that is ``NoAdmin`` instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["NoAdmin", "bind_thespian_to", "connect_only"]

_ENV = "RML_THESPIAN_BIND"
_patched = False


def bind_thespian_to(host: str = "127.0.0.1") -> None:
    """Make every Thespian socket in this process (and its forks) bind ``host``."""
    global _patched
    os.environ[_ENV] = host
    os.environ["THESPIAN_BASE_IPADDR"] = host
    if _patched:
        return
    from thespian.system.transport import IPBase

    original_init = IPBase.IPActorAddress.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        wanted = os.environ.get(_ENV)
        if wanted and self.bindname[0] in ("", "0.0.0.0"):
            # Upstream binds ('', port) for "external" addresses: narrow it.
            self.bindname = (wanted, self.bindname[1])

    IPBase.IPActorAddress.__init__ = init
    _patched = True


class NoAdmin(ConnectionError):
    """No Thespian admin answered where a client expected one (``connect_only``)."""


_connecting = threading.local()
_start_patched = False


@contextlib.contextmanager
def connect_only() -> Iterator[None]:
    """Within: an ``ActorSystem(...)`` made by this thread connects to a running admin or
    raises ``NoAdmin``; it never starts an admin of its own."""
    global _start_patched
    if not _start_patched:
        from thespian.system.multiprocCommon import multiprocessCommon

        original = multiprocessCommon._startAdmin  # noqa: SLF001

        def start_admin(self: Any, admin_address: Any, *args: Any, **kwargs: Any) -> None:
            if getattr(_connecting, "on", False):
                raise NoAdmin(f"no Thespian admin at {admin_address}")
            original(self, admin_address, *args, **kwargs)

        multiprocessCommon._startAdmin = start_admin  # noqa: SLF001
        _start_patched = True
    _connecting.on = True
    try:
        yield
    finally:
        _connecting.on = False


if os.environ.get(_ENV):
    bind_thespian_to(os.environ[_ENV])
