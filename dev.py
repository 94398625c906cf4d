#!/usr/bin/env python3
"""Set up the project's virtual environment and run the demo or the tests.

Usage: python3 dev.py demo | test [pytest args] | lint | docs [mkdocs build args] | rml [args]

Needs only Python 3.11+: it creates ``.venv`` beside this file, installs the
project with its dev extras there (again whenever ``pyproject.toml`` changes)
and then runs the command inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".rml-installed"


def _pyproject_digest() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> None:
    """Create the venv and install the project when missing or out of date."""
    if sys.version_info < (3, 11):  # noqa: UP036 (dev.py runs on whatever python3 is)
        sys.exit("Reactive ML needs Python 3.11 or newer")
    if not (BIN / "python").exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = _pyproject_digest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("installing reactive-ml and its dependencies into .venv ...", flush=True)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        check=True,
    )
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]"],
        check=True,
    )
    STAMP.write_text(digest)


def run_tests(args: list[str]) -> int:
    """Run pytest; 'no tests collected' (exit 5) is a failure, never a pass."""
    rc = subprocess.call([str(BIN / "python"), "-m", "pytest", *args], cwd=ROOT)
    if rc == 5:
        print("pytest collected no tests: failing on purpose", file=sys.stderr)
        return 1
    return rc


def run_lint() -> int:
    """ruff and mypy over the project."""
    rc = subprocess.call([str(BIN / "ruff"), "check", "."], cwd=ROOT)
    rc |= subprocess.call([str(BIN / "mypy"), "."], cwd=ROOT)
    return rc


def build_docs(args: list[str]) -> int:
    """``mkdocs build --strict`` (into ``site/``, never committed): a broken link or anchor,
    or a page missing from the nav, fails the build."""
    return subprocess.call([str(BIN / "python"), "-m", "mkdocs", "build", "--strict", *args],
                           cwd=ROOT)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    ensure_venv()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if verb == "test":
        return run_tests(rest)
    if verb == "lint":
        return run_lint()
    if verb == "docs":
        return build_docs(rest)
    if verb == "demo":
        return subprocess.call([str(BIN / "rml"), *rest, "demo"], cwd=ROOT, env=env)
    if verb == "rml":
        return subprocess.call([str(BIN / "rml"), *rest], cwd=ROOT, env=env)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
