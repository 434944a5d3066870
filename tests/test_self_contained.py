"""The repository stands on its own: nothing in it reads outside the checkout, its direct
imports are declared dependencies, and its version is written once."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import newsletter

REPO = Path(__file__).resolve().parents[1]
# What runs from a clone: the package, its tests and benches, the Makefile and CI's entry.
CHECKED = ["newsletter", "tests", "bench", "Makefile", ".ci/run"]


def escapes(path: Path, text: str) -> list[str]:
    """The places in `text` (the file at `path`) that reach outside the repository."""
    depth = len(path.relative_to(REPO).parts) - 1  # parents[depth] of the file is REPO
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line if path.name == "Makefile" else line.split("#", 1)[0]
        for match in re.finditer(r"parents\[(\d+)\]", code):
            if int(match.group(1)) > depth:
                found.append(f"{path.name}:{number}: {match.group(0)}")
        for match in re.finditer(r"__file__\)?(?:\.resolve\(\))?((?:\.parent)+)", code):
            if match.group(1).count(".parent") > depth + 1:  # .parent is parents[0]
                found.append(f"{path.name}:{number}: {match.group(0)}")
        # A relative path that starts by going up (a URL path such as "/a/../b" in the
        # traversal tests is not one), an absolute path to this machine, the seed's folder.
        if re.search(r"(?<![\w/])\.\.[/\\]|/work/|\bshared/seed\b", code):
            found.append(f"{path.name}:{number}: {code.strip()}")
    return found


def checked_files() -> list[Path]:
    files = []
    for name in CHECKED:
        target = REPO / name
        if target.is_dir():
            files += [p for p in target.rglob("*") if p.suffix in {".py", ".sh", ".toml"}]
        elif target.exists():
            files.append(target)
    return sorted(files)


def test_nothing_reads_outside_the_repository() -> None:
    files = checked_files()
    assert any(p.name == "test_cli_build.py" for p in files)
    files.remove(Path(__file__).resolve())  # its examples below are the check's test data
    found = [hit for path in files for hit in escapes(path, path.read_text(encoding="utf-8"))]
    assert found == []


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("tests/test_x.py", 'SEED = Path(__file__).parents[2] / "shared" / "seed" / "a.txt"'),
        ("tests/test_x.py", "ROOT = Path(__file__).resolve().parent.parent.parent"),
        ("bench/x.py", 'open("../shared/seed/article.txt")'),
        ("newsletter/x.py", 'Path("/work/shared/DESIGN.md")'),
        ("Makefile", "\tcp ../shared/seed/article.txt build/"),
    ],
)
def test_the_check_finds_a_path_outside(name: str, line: str) -> None:
    assert escapes(REPO / name, line) != []


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("tests/test_x.py", 'SEED = Path(__file__).resolve().parents[1] / "examples" / "a.txt"'),
        ("tests/test_x.py", "HERE = Path(__file__).parent.parent"),
        ("newsletter/cli/x.py", "ROOT = Path(__file__).parents[1]"),
    ],
)
def test_the_check_lets_paths_inside_pass(name: str, line: str) -> None:
    assert escapes(REPO / name, line) == []


def test_the_sample_article_is_in_the_repository_and_named_in_the_readme() -> None:
    article = REPO / "examples" / "article.txt"
    assert article.is_file()
    assert "examples/article.txt" in (REPO / "README.md").read_text(encoding="utf-8")


# Imported names that are not the distribution's name on the package index.
DISTRIBUTION = {"yaml": "pyyaml", "markdown_it": "markdown-it-py", "email_validator":
                "email-validator", "dns": "dnspython", "psycopg": "psycopg",
                "spf": "pyspf", "argon2": "argon2-cffi",
                "flufl": "flufl.bounce"}  # fmt: skip


def third_party_imports() -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for path in (REPO / "newsletter").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "newsletter":
                    found.add(DISTRIBUTION.get(top, top))
    return found


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]
    return {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_every_direct_import_is_a_declared_dependency() -> None:
    missing = third_party_imports() - declared()
    assert missing == set()
    assert {"lxml", "markupsafe", "tzdata"} <= declared()


def test_the_version_is_written_once() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project and "version" in project["dynamic"]
    proc = subprocess.run(
        [sys.executable, "-m", "newsletter", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    installed = importlib.metadata.version("newsletter")
    assert proc.stdout.strip() == f"newsletter, version {installed}"
    assert newsletter.__version__ == installed
