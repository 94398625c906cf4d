"""Import a subtree's actor modules once, in the supervisor that forks its actors.

Thespian forks each actor from its parent's process, so a module imported there is
inherited already loaded: a restart pays no import. Each supervisor imports only what
its own children run, so each process maps only what its subtree needs: the serving
supervisor and its predictors map numpy, not scikit-learn or SciPy (predictors serve
compiled forms, ``learning.serving.compiled``; only a version without one makes a predictor
import scikit-learn), a third of the memory, and the kernel tears a SIGKILLed predictor
down 3-4x faster (``bench/teardown.py``).
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Iterable

__all__ = ["module_of", "preload"]


def preload(modules: Iterable[str]) -> None:
    """Import ``modules``, then keep everything loaded so far out of the cyclic GC: a
    collection in a forked child would otherwise walk (and so copy, page by page) the
    inherited heap."""
    for module in sorted(set(modules)):
        importlib.import_module(module)
    gc.freeze()


def module_of(actor_class: str) -> str:
    """``package.module`` of ``package.module.Class``."""
    return actor_class.rpartition(".")[0]
