"""The daemon's life: the launcher and the keeper, status, the CLI verbs. The process group,
the logs and loopback-only Thespian live in ``runtime`` (below the actors, which use them);
``daemon.group``, ``daemon.logs`` and ``daemon.loopback`` re-export them."""
