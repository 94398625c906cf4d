"""The layers: no import runs up from a lower layer to a higher one, and no import cycle.

    players                       5   the simulator, gateways, broker, demo, chaos, regime change
    daemon                        4   the launcher, the keeper, status, the CLI verbs
    rml_client                    3.5 the client library (the players use it; see below)
    actors, supervision           3   supervision may import actors, never the other way
    learning                      2   pure ML code
    storage                       1   the stores and the values they keep (storage.records)
    messages, config, runtime     0   none imports another

Every import counts for the layers: at module level, inside functions, under
``TYPE_CHECKING``. Cycles are between modules, through the imports that run when a module
is imported (module level, ``TYPE_CHECKING`` ones included: they are cycles to a type
checker, and a ``TYPE_CHECKING`` import is one edit away from a real one). ``rml_client``
must import alone: nothing of the project at import time; inside functions, only the
messages and the loopback patch its Thespian client needs. ``tests/``, ``bench/``,
``run_system.py`` and ``dev.py`` are outside the layers: they may import anything, and
nothing inside the layers imports them.

The players drive the daemon from outside, as gateways and operators would: they may import
every layer, and nothing in the layers imports them. The CLI reaches the demo from
``run_system.py`` (outside the layers), never from a ``daemon`` module.

A module that moved keeps its old name through its package's ``MOVED`` table
(``runtime.moved``): importing ``daemon.demo`` gives ``players.demo``. A table is strings,
not imports, so it runs no layer up; no file of the project imports an old name.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.moved import moved_names

REPO = Path(__file__).resolve().parent.parent

#: Top-level package -> layer. A module may import its own package, any lower layer, and a
#: package of its own layer only as ``SIDEWAYS`` allows.
LAYERS: dict[str, float] = {
    "messages": 0, "config": 0, "runtime": 0,
    "storage": 1,
    "learning": 2,
    "actors": 3, "supervision": 3,
    # Only the players use the client (the demo, chaos, gateways); it reaches below lazily.
    "rml_client": 3.5,
    "daemon": 4,
    # The simulator, the gateways and the scenarios that play them against a real daemon.
    "players": 5,
}
#: Outside the layers: they may import anything; nothing in the layers may import them.
OUTSIDE = ("tests", "bench", "run_system", "dev", "docs")
#: Same-layer imports allowed, (importer's package, imported package): supervisors start
#: actors and are ``ReactiveActor``s themselves; an actor never knows its supervisor's code.
SIDEWAYS = {("supervision", "actors")}
#: Known exceptions, (importer module, imported module) -> why. Keep it empty.
ALLOWED: dict[tuple[str, str], str] = {}
#: What ``rml_client`` may import inside functions (its Thespian client, made on demand).
CLIENT_LAZY = ("messages.codec", "messages.protocol", "runtime.loopback")


@dataclass(frozen=True, slots=True)
class Imported:
    """One import statement's target, as a module name, and where it is."""

    importer: str
    target: str
    line: int
    module_level: bool  # runs when the importer is imported (TYPE_CHECKING ones included)


def project_modules() -> dict[str, Path]:
    """Every module of the layered packages, by dotted name."""
    found = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             known: set[str]) -> Iterator[str]:
    """The modules ``node`` imports: ``from pkg import sub`` names the submodule ``pkg.sub``
    when there is one, else ``pkg``; relative imports are resolved against ``module``."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        anchor = module.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join([*anchor, *([base] if base else [])])
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield sub if sub in known else base


def imports_of(module: str, path: Path, known: set[str]) -> list[Imported]:
    """Every import in ``path``, each marked whether it runs at import time."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[Imported] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                targets = dict.fromkeys(_targets(child, module, is_package, known))
                found.extend(Imported(module, target, child.lineno, module_level)
                             for target in targets)
            inner = module_level and not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, inner)

    visit(tree, True)
    return found


def all_imports() -> list[Imported]:
    """Every import of every layered module."""
    modules = project_modules()
    known = set(modules)
    return [found for module, path in modules.items()
            for found in imports_of(module, path, known)]


def _top(module: str) -> str:
    return module.partition(".")[0]


def layer_violations(imports: list[Imported]) -> list[str]:
    """Imports that run up the layers, or sideways where ``SIDEWAYS`` does not allow it."""
    bad = []
    for found in imports:
        source, target = _top(found.importer), _top(found.target)
        if source == target or (found.importer, found.target) in ALLOWED:
            continue
        where = f"{found.importer} (line {found.line}) imports {found.target}"
        if target in OUTSIDE:
            bad.append(f"{where}: {target} is outside the layers")
        elif target not in LAYERS:
            continue  # the standard library or a dependency
        elif LAYERS[target] > LAYERS[source]:
            bad.append(f"{where}: layer {LAYERS[source]:g} imports layer {LAYERS[target]:g}")
        elif LAYERS[target] == LAYERS[source] and (source, target) not in SIDEWAYS:
            bad.append(f"{where}: {source} and {target} share layer {LAYERS[source]:g}, "
                       f"and {source} may not import {target}")
    return bad


def import_cycles(imports: list[Imported]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected group of modules, through
    the imports that run at import time."""
    known = set(project_modules())
    graph: dict[str, set[str]] = {module: set() for module in known}
    for found in imports:
        if found.module_level and found.target in known and found.target != found.importer:
            graph[found.importer].add(found.target)
    # Tarjan's strongly connected components, iteratively (no recursion limit to meet).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(group)
            elif step not in index:
                index[step] = low[step] = len(index)
                stack.append(step)
                on_stack.add(step)
                work.append((step, iter(sorted(graph[step]))))
            elif step in on_stack:
                low[node] = min(low[node], index[step])
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {target: [start, target] for target in sorted(graph[start] & group)}
    todo = list(paths)
    while start not in paths:
        node = todo.pop(0)
        for target in sorted(graph[node] & group):
            if target not in paths:
                paths[target] = [*paths[node], target]
                todo.append(target)
    return paths[start]


def test_every_layered_module_is_parsed_and_its_imports_resolved() -> None:
    imports = all_imports()
    targets = {found.target for found in imports}
    # Sanity: the walk sees module-level, function-level and TYPE_CHECKING imports.
    assert "storage.records" in targets
    assert any(not found.module_level for found in imports)
    assert ("storage.backend", "storage") in {(f.importer, f.target) for f in imports}


def test_no_import_runs_up_the_layers() -> None:
    bad = layer_violations(all_imports())
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_no_allowance_is_stale() -> None:
    pairs = {(found.importer, found.target) for found in all_imports()}
    assert not [pair for pair in ALLOWED if pair not in pairs]


def test_no_import_cycle() -> None:
    cycles = import_cycles(all_imports())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_client_imports_nothing_of_the_project_until_its_thespian_client_is_made() -> None:
    bad = []
    for found in all_imports():
        if _top(found.importer) != "rml_client" or _top(found.target) == "rml_client":
            continue
        if _top(found.target) not in (*LAYERS, *OUTSIDE):
            continue
        if found.module_level or found.target not in CLIENT_LAZY:
            bad.append(f"{found.importer} (line {found.line}) imports {found.target}")
    assert not bad, "rml_client must import alone:\n" + "\n".join(bad)


def test_importing_the_client_loads_no_module_of_the_project() -> None:
    project = sorted({*LAYERS, *OUTSIDE} - {"rml_client"})
    code = ("import sys, rml_client; print(sorted({m.split('.')[0] for m in sys.modules} & "
            f"{set(project)!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_checker_sees_an_import_up_the_layers_and_a_cycle() -> None:
    up = Imported("storage.features", "learning.features.collections", 1, True)
    assert layer_violations([up])
    assert layer_violations([Imported("actors.base", "supervision.spec", 1, False)])
    assert not layer_violations([Imported("supervision.root", "actors.base", 1, True)])
    loop = [Imported("actors.edge", "actors._http_connection", 1, True),
            Imported("actors._http_connection", "actors.edge", 2, True)]
    assert import_cycles(loop) == [["actors._http_connection", "actors.edge",
                                    "actors._http_connection"]]


def test_nothing_in_the_layers_imports_a_player() -> None:
    bad = [f"{found.importer} (line {found.line}) imports {found.target}"
           for found in all_imports()
           if _top(found.target) == "players" and _top(found.importer) != "players"]
    assert not bad, "players are imported from outside the layers only:\n" + "\n".join(bad)
    # The checker itself: a daemon module importing a player is an import up the layers.
    assert layer_violations([Imported("daemon.status", "players.demo", 1, False)])
    assert not layer_violations([Imported("players.demo", "daemon.status", 1, True)])


@pytest.mark.parametrize(("old", "new", "names"), [
    ("learning.features.collections", "storage.records", ("FeatureCollection", "FeatureRow")),
    ("learning.training.triggers", "storage.records",
     ("Trigger", "DriftCheck", "KINDS", "NEW_OUTCOMES", "SCHEDULE", "DRIFT", "COLLECTION",
      "REQUEST")),
])
def test_a_value_the_stores_keep_is_still_found_where_learning_had_it(
        old: str, new: str, names: tuple[str, ...]) -> None:
    before, after = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(before, name) is getattr(after, name), name
        assert name in before.__all__


@pytest.mark.parametrize(("package", "module"), [
    ("learning.features", "learning.features.compute"),
    ("learning.training", "learning.training.sets"),
    ("learning.serving", "learning.serving.answer"),
    ("learning.drift", "learning.drift.psi"),
    ("learning.report", "learning.report.page"),
])
def test_a_module_that_became_a_package_keeps_every_name(package: str, module: str) -> None:
    """``learning.features`` is the feature plugins' interface; it and the other modules that
    became packages keep every name they had (now defined in ``module``)."""
    before, after = importlib.import_module(package), importlib.import_module(module)
    assert sorted(before.__all__) == sorted(after.__all__)
    for name in after.__all__:
        assert getattr(before, name) is getattr(after, name), name


def _moved() -> dict[str, str]:
    """Every old module name the packages keep (``MOVED`` in their ``__init__``)."""
    for package in LAYERS:
        importlib.import_module(package)
    return moved_names()


def test_no_file_imports_a_moved_name() -> None:
    """The project, its tests and benches use the new names; the old ones are for others."""
    moved = _moved()
    assert moved, "no package registered a moved name"
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    modules = project_modules()
    known = set(modules) | set(moved)
    bad = []
    for name in files:
        path = REPO / name
        parts = Path(name).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for found in imports_of(module, path, known):
            if found.target in moved:
                bad.append(f"{name} (line {found.line}) imports {found.target}: "
                           f"now {moved[found.target]}")
    assert not bad, "\n".join(bad)


def test_every_import_of_the_project_names_a_module_that_exists() -> None:
    modules = set(project_modules())
    bad = [f"{found.importer} (line {found.line}) imports {found.target}"
           for found in all_imports()
           if _top(found.target) in LAYERS and found.target not in modules
           and found.target.rpartition(".")[0] not in modules]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("old", "new"), sorted(_moved().items()))
def test_a_moved_module_answers_to_its_old_name(old: str, new: str) -> None:
    before, after = importlib.import_module(old), importlib.import_module(new)
    assert before is after
    assert before.__name__ == new and before.__spec__ is not None
    assert before.__spec__.name == new  # the import of the old name left the spec alone
    parent, _, leaf = old.rpartition(".")
    assert getattr(importlib.import_module(parent), leaf) is after  # ``from pkg import old``


def test_an_old_name_runs_as_a_script_and_an_unknown_one_is_not_found() -> None:
    """``python -m old.name`` runs the new module (the documented trainer service command
    used to be ``python -m learning.trainer_service``)."""
    out = subprocess.run([sys.executable, "-m", "learning.trainer_service", "--help"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: ") and "--port" in out
    # In a fresh process, the old name imported first (as a plugin written for the old
    # layout would) brings in the new module once.
    code = ("import sys, learning.collections as old, daemon.demo as demo; "
            "import learning.features.collections as new, players.demo as player; "
            "print(old is new, demo is player, old.__spec__.name, "
            "sum(m.__name__ == new.__name__ for m in set(sys.modules.values())))")
    words = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    assert words == ["True", "True", "learning.features.collections", "1"]
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("learning.no_such_module")


@pytest.mark.parametrize(("old", "new", "name"), [
    ("storage.deadletters", "storage.sqlite.deadletters", "SQLiteDeadLetters"),
    ("storage.drift_log", "storage.sqlite.drift_log", "SQLiteDriftLog"),
    ("storage.training_runs", "storage.sqlite.training_runs", "SQLiteTrainingRuns"),
])
def test_a_backend_class_moved_out_of_its_protocol_module_keeps_its_old_name(
        old: str, new: str, name: str) -> None:
    """The SQLite stores moved to ``storage/sqlite/``, beside the protocols; the protocol
    modules no longer import a backend, yet their old names still give the class."""
    before = importlib.import_module(old)
    assert getattr(before, name) is getattr(importlib.import_module(new), name)
    assert name not in before.__all__
    with pytest.raises(AttributeError):
        before.NoSuchName  # noqa: B018
    assert not [found for found in all_imports()
                if found.importer == old and found.module_level and found.target == new]


def test_every_module_says_what_it_owns_and_every_actor_keeps_its_header() -> None:
    """A module's docstring says what it owns; an actor's (a module of ``actors/``, beside
    ``actors.base``, defining a ``Worker`` or an ``EdgeWorker``) also says what it Owns,
    Receives and Sends."""
    missing, headless = [], []
    for module, path in project_modules().items():
        tree = ast.parse(path.read_text(), str(path))
        doc = ast.get_docstring(tree)
        if not doc:
            missing.append(module)
            continue
        is_actor = _top(module) == "actors" and module != "actors.base" and any(
            isinstance(node, ast.ClassDef)
            and any(getattr(base, "id", None) in ("Worker", "EdgeWorker")
                    for base in node.bases)
            for node in tree.body)
        if is_actor and not all(f"\n{word}:" in f"\n{doc}" for word in
                                ("Owns", "Receives", "Sends")):
            headless.append(module)
    assert not missing, f"modules without a docstring: {missing}"
    assert not headless, f"actors without Owns/Receives/Sends: {headless}"
    actors = [m for m, path in project_modules().items()
              if _top(m) == "actors" and m != "actors.base" and "Worker):" in path.read_text()]
    assert len(actors) >= 5, actors  # the collector, generator, learner, publisher, predictor


def test_every_package_is_in_the_wheel() -> None:
    """``pyproject.toml`` lists packages by name: a new folder missing there would be left
    out of the wheel (and the container) while every test here still passed."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(path.relative_to(REPO).parent.parts)
             for package in LAYERS for path in (REPO / package).rglob("__init__.py")}
    assert found == listed
