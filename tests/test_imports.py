"""Every module imports on its own (no import cycles), and only cli.py knows about click."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import newsletter

PACKAGE = Path(newsletter.__file__).parent
# __main__ runs the CLI when imported; it is covered by running `python -m newsletter`.
MODULES = sorted(
    f"newsletter.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE)]) if m.name != "__main__"
)


def test_the_package_has_its_modules():
    for name in ("config", "content", "render", "inline", "message", "check", "publish", "cli"):
        assert f"newsletter.{name}" in MODULES


@pytest.fixture(scope="module")
def fresh_imports() -> dict[str, tuple[int, str]]:
    """Import each module in a fresh interpreter, all at once: {module: (exit code, stderr)}."""
    procs = {
        module: subprocess.Popen(
            [sys.executable, "-c", f"import {module}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in ["newsletter", *MODULES]
    }
    results = {}
    for module, proc in procs.items():
        _, stderr = proc.communicate(timeout=60)
        results[module] = (proc.returncode, stderr)
    return results


@pytest.mark.parametrize("module", ["newsletter", *MODULES])
def test_module_imports_on_its_own(fresh_imports, module):
    code, stderr = fresh_imports[module]
    assert code == 0, stderr


def test_python_m_newsletter_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "newsletter", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"newsletter, version {newsletter.__version__}"


@pytest.mark.parametrize("module", [m for m in MODULES if m != "newsletter.cli"])
def test_only_the_cli_imports_click(module):
    name = module.rpartition(".")[2]
    path = PACKAGE / f"{name}.py"
    # A subpackage (migrations/) is checked file by file.
    paths = [path] if path.exists() else sorted((PACKAGE / name).rglob("*.py"))
    assert paths, module
    imported = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert "click" not in imported


def test_only_the_migrations_import_alembic():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "migrations"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] == "alembic"], path
