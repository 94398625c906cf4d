"""What every process of the daemon shares, in the lowest layer: the process group and process
names (``group``), the JSON log (``logs``), Thespian kept on loopback (``loopback``). It imports
nothing of the project, so actors and supervisors can use it (``daemon`` re-exports it)."""
