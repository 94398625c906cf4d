"""The documentation: every setting documented, nothing documented that does not exist, the
generated pages current, the README the front page, and the site built with ``--strict``."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from config.reference import NOT_SET, REQUIRED, keys, render_markdown
from config.settings import Settings, load_settings
from config.supervision import POLICY_KEYS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def _generate() -> ModuleType:
    """``docs/generate.py``, loaded as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setting_fields(cls: type = Settings, prefix: str = "") -> dict[str, dataclasses.Field[Any]]:
    """Every setting by its dotted key, walked from the dataclasses themselves (not through
    ``config.reference``): nested tables (``storage.couchbase``), the items of an array of
    tables (``features.collections[].id``) and tables of overrides (``supervision.serving``)."""
    out: dict[str, dataclasses.Field[Any]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, dotted = hints[f.name], f"{prefix}{f.name}"
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            out.update(_setting_fields(hint, f"{dotted}."))  # type: ignore[arg-type]
            continue
        out[dotted] = f
        if (typing.get_origin(hint) is tuple and args and isinstance(args[0], type)
                and dataclasses.is_dataclass(args[0])):
            out.update(_setting_fields(args[0], f"{dotted}[]."))
    return out


SETTINGS = _setting_fields()


def _reference_rows(page: str) -> list[str]:
    """The keys of the committed reference's tables (first column of each row)."""
    generate = _generate()
    _, _, rest = page.partition(generate.BEGIN)
    region, _, _ = rest.partition(generate.END)
    return re.findall(r"^\| `([^`]+)` \|", region, flags=re.MULTILINE)


# --- every setting documented, every documented setting real ----------------------------------


def test_every_setting_has_its_documentation_beside_its_definition() -> None:
    undocumented = [key for key, f in SETTINGS.items()
                    if not str(f.metadata.get("doc", "")).strip()]
    assert undocumented == []
    assert len(SETTINGS) > 90  # the walk reached the nested tables


def test_the_reference_lists_every_setting_and_nothing_else() -> None:
    assert [k.dotted for k in keys()] == list(SETTINGS)
    committed = _reference_rows((DOCS / "configuration.md").read_text(encoding="utf-8"))
    assert sorted(committed) == sorted(SETTINGS)
    assert len(committed) == len(set(committed))


def test_the_reference_defaults_load_back_as_the_defaults(tmp_path: Path) -> None:
    """Each default, as the reference writes it in TOML, is a key the loader takes and the
    value it already had: the column is the code's own default, in valid TOML."""
    tables: dict[str, list[str]] = {}
    for key in keys():
        if "[]" in key.dotted or key.default in (REQUIRED, NOT_SET):
            continue  # the items of [[features.collections]]: no table to default
        table, _, name = key.dotted.rpartition(".")
        assert table == key.table
        tables.setdefault(table, []).append(f"{name} = {key.default}")
    text = "\n".join(tables.pop(""))
    for table, lines in tables.items():
        text += f"\n\n[{table}]\n" + "\n".join(lines)
    path = tmp_path / "defaults.toml"
    path.write_text(text + "\n", encoding="utf-8")
    loaded = load_settings(path, {})
    assert dataclasses.replace(loaded, data_dir="") == dataclasses.replace(
        load_settings(None, {}), data_dir="")
    assert loaded.data_dir == str((tmp_path / "rml-data").resolve())


def _env_text(value: Any) -> str:
    """A value as an ``RML_*`` variable writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def test_every_documented_variable_is_read_by_the_loader() -> None:
    """Setting each documented variable to its default is accepted (an unknown key is refused,
    named) and changes nothing."""
    defaults = load_settings(None, {})
    checked = 0
    for key in keys():
        if not key.env:
            continue
        if key.env.endswith("_<KEY>"):  # a table of overrides: each policy key by its own name
            supervisor = key.dotted.rpartition(".")[2]
            policy = defaults.supervision.policy(supervisor)
            environ = {key.env.replace("<KEY>", name.upper()): _env_text(getattr(policy, name))
                       for name in POLICY_KEYS}
            loaded = load_settings(None, environ).supervision
            assert set(dict(getattr(loaded, supervisor))) == set(POLICY_KEYS), key.env
            assert loaded.policy(supervisor) == policy, key.env
        else:
            value: Any = defaults
            for part in key.dotted.split("."):
                value = getattr(value, part)
            environ = {key.env: _env_text(value)}
            assert load_settings(None, environ) == defaults, key.env
        checked += 1
    assert checked > 80


def test_no_page_names_a_setting_that_does_not_exist() -> None:
    """``[section] key`` in the README and the docs names a real key; ``[section]`` a table."""
    tables = {key.table for key in keys()} | {k.dotted for k in keys() if k.env.endswith("<KEY>")}
    unknown = []
    for page in [ROOT / "README.md", *PAGES]:
        text = page.read_text(encoding="utf-8")
        for table, name in re.findall(r"`\[([a-z_.]+)\] ([a-z_]+)(?: = [^`]*)?`", text):
            overrides = table.startswith("supervision.") and name in POLICY_KEYS
            if f"{table}.{name}" not in SETTINGS and not overrides:
                unknown.append(f"{page.name}: [{table}] {name}")
        for table in re.findall(r"`\[([a-z_.]+)\]`", text):
            if table not in tables and table != "job":  # [job]: a job file's table
                unknown.append(f"{page.name}: [{table}]")
    assert unknown == []


def test_the_configuration_example_loads(tmp_path: Path) -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    example = re.search(r"## An example\n\n```toml\n(.*?)```", page, flags=re.DOTALL)
    assert example is not None
    path = tmp_path / "rml.toml"
    path.write_text(example[1], encoding="utf-8")
    settings = load_settings(path, {})
    assert settings.supervision.policy("serving").standby == 2


# --- generated files ---------------------------------------------------------------------------


def test_generated_docs_are_what_the_code_generates() -> None:
    """docs/configuration.md's tables and docs/openapi/*.json: ``python docs/generate.py``
    rewrites them when the settings or the API change."""
    generate = _generate()
    assert [str(p.relative_to(ROOT)) for p in generate.stale()] == []
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert render_markdown().strip() in page


def test_the_openapi_files_are_the_served_documents() -> None:
    import json

    from messages.openapi import INGEST_OPENAPI_JSON, PREDICT_OPENAPI_JSON

    for name, served in (("ingest", INGEST_OPENAPI_JSON), ("predict", PREDICT_OPENAPI_JSON)):
        committed = json.loads((DOCS / "openapi" / f"{name}.json").read_text(encoding="utf-8"))
        assert committed == json.loads(served)


# --- the README is the front page --------------------------------------------------------------


def test_readme_starts_with_the_two_commands_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# Reactive ML\n\n```sh\npython3 dev.py demo ")
    assert "\npython3 dev.py test " in readme.split("```")[1]
    assert len(readme) < 10_000


def test_readme_links_reach_existing_files() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert missing == []
    linked = {t for t in targets if t.startswith("docs/")}
    assert {f"docs/{p.name}" for p in PAGES} <= linked  # every page is reachable from it


# --- the site ------------------------------------------------------------------------------------


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]'); CI builds the site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "configuration" / "index.html").exists()
    assert (tmp_path / "openapi" / "predict.json").exists()
    assert not (tmp_path / "generate.py").exists()
