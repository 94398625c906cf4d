"""Old module names that keep working after a module moved: one table per package.

A package whose modules moved into subfolders calls ``keep_old_names`` from its
``__init__`` with a table {old dotted name: new dotted name}. Importing an old name then
gives the very module object of the new one (``import learning.compiled`` is
``learning.serving.compiled``), so code, configurations and plugins written against the
old layout keep working, and ``python -m old.name`` runs the new module. Nothing in the
project imports an old name (``tests/test_layers.py`` checks it); the tables are the one
place that says what moved where.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from types import CodeType, ModuleType

__all__ = ["keep_old_names", "moved_names"]

_TABLE: dict[str, str] = {}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module of its new one."""

    def __init__(self, new: str) -> None:
        self.new = new
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the new module ran when it was imported); only give the module
        back the spec the import machinery replaced with the old name's."""
        if self._spec is not None:
            module.__spec__ = self._spec

    def get_code(self, fullname: str) -> CodeType | None:
        """The new module's code, for ``python -m old.name``."""
        spec = importlib.util.find_spec(self.new)
        loader = spec.loader if spec is not None else None
        get_code = getattr(loader, "get_code", None)
        return get_code(self.new) if get_code is not None else None


class _OldNames(importlib.abc.MetaPathFinder):
    """Finds the old names of ``_TABLE``; last on ``sys.meta_path``, so a module that
    exists under its own name always wins."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        new = _TABLE.get(fullname)
        if new is None:
            return None
        real = importlib.util.find_spec(new)
        return importlib.machinery.ModuleSpec(fullname, _Alias(new),
                                              origin=real.origin if real is not None else None)


_FINDER = _OldNames()


def keep_old_names(table: Mapping[str, str]) -> None:
    """Make every old name in ``table`` import as its new module (idempotent)."""
    _TABLE.update(table)
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)


def moved_names() -> dict[str, str]:
    """Every old name registered so far, with its new name."""
    return dict(_TABLE)
