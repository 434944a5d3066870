"""The package's shape holds: every module imports on its own (no import cycles), each
framework stays in its layer, and no module is too long to find one's way in."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import newsletter

PACKAGE = Path(newsletter.__file__).parent
# __main__ runs the CLI when imported (covered by running `python -m newsletter`); the
# migrations' env.py runs only inside Alembic.
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages([str(PACKAGE)], "newsletter.")
    if m.name.rpartition(".")[2] not in ("__main__", "env")
)
PACKAGES = (
    "issue", "mail", "ledger", "send", "schedule", "web", "cli", "setup", "audience", "bounces",
)  # fmt: skip


def source_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "versions" not in p.parts)


def imported(path: Path) -> set[str]:
    """The top-level names of what `path` imports (absolute imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_has_its_packages() -> None:
    for name in PACKAGES:
        assert f"newsletter.{name}" in MODULES, name
    for name in ("issue.content", "issue.render", "issue.inline", "mail.message", "cli"):
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


# Each framework in its own layer (DESIGN.md): the place it may be imported from.
LAYERS = {
    "click": PACKAGE / "cli",
    "sqlalchemy": PACKAGE / "ledger",
    "alembic": PACKAGE / "ledger" / "migrations",
    "starlette": PACKAGE / "web",
    "uvicorn": PACKAGE / "web",
    "apscheduler": PACKAGE / "schedule",
    "celery": PACKAGE / "send",
    "premailer": PACKAGE / "issue",
    "aiosmtpd": PACKAGE / "mail",
    "imapclient": PACKAGE / "bounces",
    "flufl": PACKAGE / "bounces",
}


@pytest.mark.parametrize("framework", sorted(LAYERS))
def test_each_framework_is_imported_in_its_layer_only(framework: str) -> None:
    home = LAYERS[framework]
    outside = [
        str(path.relative_to(PACKAGE))
        for path in source_files()
        if framework in imported(path) and not path.is_relative_to(home)
    ]
    assert outside == []
    assert any(framework in imported(path) for path in source_files())


def test_the_layer_check_finds_an_import_out_of_place(tmp_path: Path) -> None:
    stray = tmp_path / "stray.py"
    stray.write_text("import click\nfrom sqlalchemy.orm import Session\n", encoding="utf-8")
    assert imported(stray) == {"click", "sqlalchemy"}


def private_uses(path: Path) -> list[str]:
    """Where `path` reaches into another newsletter module's private names: an import of
    `_name` from it, or `module._name` on a module imported from the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules: set[str] = set()  # local names bound to newsletter modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("newsletter"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.name}:{node.lineno}: imports {alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("newsletter"):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names() -> None:
    assert [hit for path in source_files() for hit in private_uses(path)] == []


def test_the_private_name_check_finds_one(tmp_path: Path) -> None:
    stray = tmp_path / "stray.py"
    stray.write_text(
        "from newsletter.ledger import lifecycle\n"
        "from newsletter.send.runner import _Made\n"
        "lifecycle._owner_alive(None, None, None)\n",
        encoding="utf-8",
    )
    assert private_uses(stray) == [
        "stray.py:2: imports _Made",
        "stray.py:3: lifecycle._owner_alive",
    ]


# A module a newcomer reads in one sitting (the issue asks for ~500 lines; 600 at most).
MAX_LINES = 600


def test_no_module_is_too_long() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in source_files()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
