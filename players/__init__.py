"""The players: what drives the daemon from outside, as field gateways and operators would.

The savanna simulator (``simulator``, its hidden regimes ``regime``, the best achievable
AUC on its truth ``ceiling``), the gateway clients (``gateway``), a Mosquitto broker of the
project's own (``broker``), and the scenarios that play them against a real daemon: the demo
(``demo``), chaos (``chaos``) and the regime change (``regime_change``). They sit above the
daemon: they may import any layer; no layered package imports them (``rml demo`` reaches the
demo from ``run_system.py``). Their old names (``daemon.demo``, ``learning.simulator``
...) still import them (``daemon.MOVED``, ``learning.MOVED``).
"""
