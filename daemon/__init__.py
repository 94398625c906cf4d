"""The daemon's life: the launcher and the keeper, status, the CLI verbs. The process group,
the logs and loopback-only Thespian live in ``runtime`` (below the actors, which use them);
``daemon.group``, ``daemon.logs`` and ``daemon.loopback`` re-export them. The demo, chaos, the
regime change, the gateway clients and the broker are players (``players``, above the daemon);
``daemon.demo``, ``daemon.chaos``, ``daemon.regime_change``, ``daemon.gateway`` and
``daemon.broker`` re-export them."""
