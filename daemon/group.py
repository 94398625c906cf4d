"""Moved to ``runtime.group`` (actors and supervisors use it, and they sit below the daemon);
this name keeps working for code that imports it from here."""

from runtime.group import (
    NODE_ENV,
    children_of,
    descendants,
    end_group,
    free_ports,
    group_members,
    kill_group,
    port_accepts,
    port_bindable,
    process_alive,
    process_name,
    set_process_name,
    wait_until,
)

__all__ = [
    "NODE_ENV", "children_of", "descendants", "end_group", "free_ports", "group_members",
    "kill_group", "port_accepts", "port_bindable", "process_alive", "process_name",
    "set_process_name", "wait_until",
]
