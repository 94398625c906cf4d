"""Moved to ``runtime.logs`` (every process configures it, actors and supervisors included,
and they sit below the daemon); this name keeps working for code that imports it from here."""

from runtime.logs import NODE_ENV, LogEcho, configure_logging, get_logger, thespian_log_defs

__all__ = ["NODE_ENV", "LogEcho", "configure_logging", "get_logger", "thespian_log_defs"]
