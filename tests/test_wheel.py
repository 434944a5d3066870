"""The tool as people install it: build the wheel, install it into a fresh virtualenv
outside the repository, and run init, doctor, build and a test send from an empty folder.

Slow (it installs the dependencies, from pip's cache when it can): deselect with
`-m "not slow"`. Network: the package index for installing, else 127.0.0.1 only.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from smtp_fixtures import SmtpServer

from newsletter import __version__
from newsletter.ledger.migrations import HEAD
from newsletter.setup import starter

pytestmark = pytest.mark.slow

BUILD_TIMEOUT = 300  # seconds: pip fetches hatchling into an isolated build environment
INSTALL_TIMEOUT = 600  # seconds: the dependencies, on a machine with an empty pip cache
RUN_TIMEOUT = 60


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what could point at the repository or its venv.

    pip's own settings (PIP_INDEX_URL, certificates, proxies) stay: installing needs them.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NEWSLETTER_", "_NEWSLETTER_"))
        and k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "VIRTUAL_ENV")
    }
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def run(args: list[str | Path], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,  # type: ignore[arg-type]
    )
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, REPO_ROOT],
        BUILD_TIMEOUT,
        env=clean_env(),
        cwd=out,
    )
    (built,) = out.glob("newsletter-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed; its bin/ folder."""
    root = tmp_path_factory.mktemp("venv") / "env"
    # No pip of its own: the suite's pip installs into it (--python), which saves ensurepip.
    run([sys.executable, "-m", "venv", "--without-pip", root], RUN_TIMEOUT, env=clean_env())
    python = root / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", wheel],
        INSTALL_TIMEOUT,
        env=clean_env(),
        cwd=root,
    )
    return root / "bin"


def test_the_wheel_carries_the_starter_publication(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        packaged = {
            name.removeprefix(f"newsletter/{starter.PACKAGED_DIR}/"): archive.read(name)
            for name in names
            if name.startswith(f"newsletter/{starter.PACKAGED_DIR}/")
        }
    assert packaged == starter.starter_files()  # the repository's files, byte for byte
    assert "newsletter/__main__.py" in names
    # Alembic finds these beside the installed package: no alembic.ini is needed.
    for name in ("env.py", "script.py.mako", "versions/0001_the_schema_of_version_1.py"):
        assert f"newsletter/ledger/migrations/{name}" in names
    # The web pages' templates and assets, read as package data.
    for name in ("site_pages/layout.html", "preview_page/preview.js"):
        assert f"newsletter/web/{name}" in names
    assert not any(name.startswith(("templates/", "issues/", "tests/")) for name in names)


def test_the_installed_tool_starts_a_publication_and_sends_a_test(
    venv: Path, tmp_path: Path, smtp_server: SmtpServer
) -> None:
    newsletter = venv / "newsletter"
    folder = tmp_path / "my-letter"
    folder.mkdir()
    # Doctor's DNS lookups and its GET of base_url fail at once (tests/offline_site).
    env = clean_env(
        NEWSLETTER_SMTP_PORT=str(smtp_server.port),
        NEWSLETTER_SMTP_TIMEOUT="10",
        PYTHONPATH=str(Path(__file__).resolve().parent / "offline_site"),
    )

    def tool(*args: str) -> subprocess.CompletedProcess[str]:
        return run([newsletter, *args], RUN_TIMEOUT, env=env, cwd=folder)

    located = run(
        [venv / "python", "-c", "from newsletter.setup import starter; print(starter.source())"],
        RUN_TIMEOUT,
        env=env,
        cwd=folder,
    )
    assert Path(located.stdout.strip()).is_relative_to(venv.parent)  # not the repository
    assert tool("--version").stdout.strip() == f"newsletter, version {__version__}"

    init = tool(
        "init",
        "--name",
        "My Letter",
        "--from",
        "My Letter <me@example.org>",
        "--postal-address",
        "1 Test Street, Testville",
    )
    welcome = f"issues/{dt.date.today().isoformat()}-welcome.md"
    assert init.stdout.splitlines()[-3:] == [
        "  newsletter doctor",
        f"  newsletter build {welcome}",
        f"  newsletter send {welcome} --to me@example.org",
    ]

    doctor = tool("doctor")
    # The warnings: no database yet, and no `serve` at base_url for the tracked links.
    assert doctor.stdout.splitlines()[-1] == "doctor: 6 ok, 2 warning(s), 0 failure(s)"
    assert "warn  clicks: " in doctor.stdout
    assert f"ok    smtp: 127.0.0.1:{smtp_server.port}: connected" in doctor.stdout

    # The migrations run from the installed package.
    assert tool("db", "upgrade").stdout.strip() == f"created the tables at {HEAD} (the newest)"
    assert tool("db", "current").stdout.strip() == f"{HEAD} (the newest)"

    built = tool("build", welcome)
    html = Path(built.stdout.splitlines()[0])
    assert (folder / html).read_text(encoding="utf-8").count("1 Test Street, Testville") >= 1

    send = tool("send", welcome, "--to", "someone@example.com")
    assert send.stdout.strip() == "someone@example.com: sent"
    (received,) = smtp_server.received
    assert received.rcpt_tos == ["someone@example.com"]
    message = received.parse()
    assert message["From"] == "My Letter <me@example.org>"
    assert message["Subject"].startswith("[TEST] ")
