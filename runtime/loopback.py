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
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["bind_thespian_to"]

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


if os.environ.get(_ENV):
    bind_thespian_to(os.environ[_ENV])
