"""Layers import downward only: the core knows no driver, a backend knows no CLI
or HTTP. Checked at run time (sys.modules in a fresh interpreter) and statically
(the import statements of src/stoic/stores)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import stoic

DRIVERS = ("sqlite3", "_sqlite3", "psycopg", "psycopg_pool", "psycopg_binary")
SHELLS = ("stoic.cli", "stoic.api", "typer", "fastapi", "uvicorn")
STORES_DIR = Path(stoic.__file__).parent / "stores"


def modules_loaded_by(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def roots(modules: set[str], wanted: tuple[str, ...]) -> set[str]:
    return {m for m in modules if any(m == w or m.startswith(w + ".") for w in wanted)}


@pytest.mark.parametrize(
    "module", ["stoic", "stoic.store", "stoic.projection", "stoic.runner", "stoic.events", "stoic.errors"]
)
def test_the_core_does_not_import_a_driver(module: str) -> None:
    loaded = modules_loaded_by(f"import {module}")
    assert module in loaded
    assert roots(loaded, DRIVERS) == set()


@pytest.mark.parametrize("module", ["stoic.stores.sqlite", "stoic.stores.postgres"])
def test_a_backend_does_not_import_the_cli_or_the_api(module: str) -> None:
    loaded = modules_loaded_by(f"import {module}")
    assert module in loaded
    assert roots(loaded, SHELLS) == set()


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_under_stores_imports_the_cli_or_the_api() -> None:
    files = sorted(STORES_DIR.rglob("*.py"))
    assert len(files) >= 4
    for path in files:
        shells = {n for n in imports_of(path) if n.split(".")[:2] in (["stoic", "cli"], ["stoic", "api"])}
        assert shells == set(), path
    # the check itself can see an offending import
    assert "stoic.cli" in imports_of(Path(__file__).parent.parent.parent / "src" / "stoic" / "__main__.py")
