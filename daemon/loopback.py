"""Moved to ``runtime.loopback`` (actor processes import it, and they sit below the daemon);
this name keeps working for code that imports it from here. Importing it applies the patch,
as importing ``runtime.loopback`` does: both are one module's state."""

from runtime.loopback import bind_thespian_to

__all__ = ["bind_thespian_to"]
