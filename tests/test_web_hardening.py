"""What the public site and the preview hold against a hostile network (issue 18, items
6-7 and the headers): security headers on every response, the 400 for a bad Host
included; slash redirects built from base_url, never the request's Host; a preview on
an address other machines reach answers only the names given with --allow-host;
`archive export` writes nothing through a symbolic link; a new SQLite file is 0600.
Through the whole ASGI stack the server runs (httpx.ASGITransport on `Server.app`: the
headers, the host check, the app), real SQLite files, and the CLI for its errors."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from campaign_support import Publication, make_publication
from click.testing import Result
from site_support import BASE_URL
from smtp_fixtures import SmtpServer

from newsletter.errors import UsageError
from newsletter.ledger.store import Store
from newsletter.web import archive, preview, serving
from newsletter.web import site as site_mod

PUBLIC_HOST = "news.helloshuttle.com"


def fetch(srv: serving.Server, host: str, path: str = "/", method: str = "GET") -> httpx.Response:
    """One request through the server's whole stack (what uvicorn runs), Host as given."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=srv.app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            return await client.request(method, path)

    return asyncio.run(go())


def assert_secured(response: httpx.Response, framing: str = "DENY") -> None:
    headers = response.headers
    where = (response.request.url, response.status_code)
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("referrer-policy") == "no-referrer", where
    assert headers.get("x-frame-options") == framing, where
    csp = headers.get("content-security-policy", "")
    assert "default-src" in csp and "frame-ancestors" in csp, where


# --- the public site ---------------------------------------------------------------------


@pytest.fixture
def pub(tmp_path: Path, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, f"sqlite:///{tmp_path / 'newsletter.db'}", smtp_server.port)


@pytest.fixture
def public(pub: Publication) -> Iterator[serving.Server]:
    """The site's server, bound to a free port of 127.0.0.1 and not started: requests go
    through `app`, the stack uvicorn would run."""
    site = site_mod.Site(pub.config())
    srv = site_mod.server(site, "127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.stop()
        site.close()


def test_a_bad_host_gets_400_with_the_security_headers(public: serving.Server) -> None:
    refused = fetch(public, "attacker.example")
    assert refused.status_code == 400
    assert_secured(refused)
    assert "default-src 'none'" in refused.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/", 200),
        ("/feed.xml", 200),
        ("/site.css", 200),
        ("/unsubscribe", 200),
        ("/no-such-page", 404),
        ("/issues/no-such-issue", 404),
        ("/c/forged.token", 404),
        ("/unsubscribe/forged", 400),
        ("/webhooks/nobody", 405),
    ],
)
def test_every_site_response_carries_the_security_headers(
    public: serving.Server, path: str, status: int
) -> None:
    response = fetch(public, PUBLIC_HOST, path)
    assert response.status_code == status
    assert_secured(response)


def test_slash_redirects_go_to_base_url_whatever_the_host(public: serving.Server) -> None:
    for host in ("127.0.0.1", PUBLIC_HOST):
        moved = fetch(public, host, "/feed.xml/?x=1")
        assert moved.status_code == 307
        assert moved.headers["location"] == f"{BASE_URL}/feed.xml?x=1"
        assert_secured(moved)
    assert fetch(public, "127.0.0.1", "/unsubscribe/").headers["location"] == (
        f"{BASE_URL}/unsubscribe"
    )
    assert fetch(public, "127.0.0.1", "/nothing/").status_code == 404


# --- the preview -------------------------------------------------------------------------


@pytest.fixture
def shown(publication: Path, sample_issue: Path) -> Iterator[preview.Preview]:
    shown = preview.issue_preview(publication, sample_issue)
    yield shown
    shown.close()


def test_a_preview_on_a_reachable_address_needs_allow_host(shown: preview.Preview) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.10", ""):
        with pytest.raises(UsageError, match="--allow-host"):
            preview.server(shown, host, 0)
    with pytest.raises(UsageError, match="expected a host name"):
        preview.server(shown, "0.0.0.0", 0, ["*"])


def test_allow_host_names_are_the_only_hosts_answered(shown: preview.Preview) -> None:
    srv = preview.server(shown, "0.0.0.0", 0, ["preview.lan", "192.0.2.10"])
    try:
        for host in ("preview.lan", "192.0.2.10", "localhost", "127.0.0.1"):
            page = fetch(srv, f"{host}:{srv.port}")
            assert page.status_code == 200, host
            assert shown.token in page.text  # what a rebinding page must not read
            assert_secured(page, framing="SAMEORIGIN")
        for host in ("attacker.example", "preview.lan.attacker.example", "0.0.0.0"):
            refused = fetch(srv, host)
            assert refused.status_code == 400, host
            assert shown.token not in refused.text
            assert_secured(refused, framing="SAMEORIGIN")
        missing = fetch(srv, "preview.lan", "/no-such-page")
        assert missing.status_code == 404
        assert_secured(missing, framing="SAMEORIGIN")
    finally:
        srv.stop()


def test_a_loopback_preview_needs_no_allow_host(shown: preview.Preview) -> None:
    srv = preview.server(shown, "127.0.0.1", 0)
    try:
        assert fetch(srv, "localhost").status_code == 200
        assert fetch(srv, "attacker.example").status_code == 400
    finally:
        srv.stop()


def test_the_command_refuses_a_reachable_host_without_allow_host(
    run_cli: Callable[..., Result],
    assert_user_error: Callable[..., str],
    sample_issue: Path,
) -> None:
    result = run_cli("preview", sample_issue, "--host", "0.0.0.0", "--port", "0", "--no-open")
    assert_user_error(result, "--host 0.0.0.0", "--allow-host NAME")
    assert result.exit_code == 2
    star = run_cli("preview", sample_issue, "--host", "0.0.0.0", "--allow-host", "*")
    assert_user_error(star, "--allow-host '*'")
    assert star.exit_code == 2


# --- files -------------------------------------------------------------------------------


def test_archive_export_writes_nothing_through_a_symlink(pub: Publication, tmp_path: Path) -> None:
    store = pub.store()
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.html"
    victim.write_text("keep me")
    target = tmp_path / "public"
    target.mkdir()
    for link, points_at in (("index.html", victim), ("feed.xml", outside)):
        (target / link).symlink_to(points_at)
        with pytest.raises(archive.NewsletterError, match=f"{link}: is a symbolic link"):
            archive.export(store, pub.config(), target)
        assert victim.read_text() == "keep me"
        assert sorted(p.name for p in outside.iterdir()) == ["victim.html"]
        assert sorted(p.name for p in target.iterdir()) == [link]  # nothing else written
        (target / link).unlink()
    assert target / "index.html" in archive.export(store, pub.config(), target)
    # The folder named may itself be a link: the user chose where it points.
    linked = tmp_path / "linked"
    linked.symlink_to(outside)
    archive.export(store, pub.config(), linked)
    assert (outside / "index.html").is_file()


def test_the_command_reports_a_symlink_in_one_line(
    run_cli: Callable[..., Result],
    assert_user_error: Callable[..., str],
    tmp_path: Path,
) -> None:
    target = tmp_path / "public"
    target.mkdir()
    (target / "site.css").symlink_to(tmp_path / "elsewhere.css")
    result = run_cli("archive", "export", target)
    assert_user_error(result, "site.css: is a symbolic link")
    assert not (tmp_path / "elsewhere.css").exists()


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which SQLite alone makes a 0644 file."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_new_sqlite_file_is_made_0600(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "newsletter.db"
    Store.open(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    existing = tmp_path / "shared.db"
    Store.open(f"sqlite:///{existing}").close()
    existing.chmod(0o640)  # the owner's choice for a file that exists is kept
    Store.open(f"sqlite:///{existing}").close()
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640
