"""Shared setup for the public site's tests: `newsletter serve`'s app on a free port of
127.0.0.1, a publication on a real database, and the aiosmtpd fixture for its mail."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from newsletter import config as config_mod
from newsletter.web import serving
from newsletter.web import site as site_mod

BASE_URL = "https://news.helloshuttle.com"


@dataclass
class Running:
    """A site being served; `get`/`post` take the path of a public URL or the URL itself."""

    site: site_mod.Site
    server: serving.Server

    @property
    def url(self) -> str:
        return self.server.url.rstrip("/")

    def local(self, url_or_path: str) -> str:
        """The address on this server of a public URL (base_url + path)."""
        parts = urlsplit(url_or_path)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return self.url + path

    def get(self, url_or_path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.local(url_or_path), timeout=10, **kwargs)  # type: ignore[arg-type]

    def post(self, url_or_path: str, **kwargs: object) -> httpx.Response:
        return httpx.post(self.local(url_or_path), timeout=10, **kwargs)  # type: ignore[arg-type]

    def wait_for_mail(self) -> None:
        """Wait until the confirmations asked for so far have been handed to SMTP."""
        assert self.site.outbox is not None
        assert self.site.outbox.wait_idle(10), "confirmation messages still queued after 10 s"


@contextlib.contextmanager
def running(config: config_mod.Config, **site_options: Any) -> Iterator[Running]:
    """The site served on a free port of 127.0.0.1 (`site_options` go to Site: the
    webhooks' https fetch, say)."""
    site = site_mod.Site(config, **site_options)
    try:
        server = site_mod.server(site, "127.0.0.1", 0)
    except BaseException:
        site.close()
        raise
    server.start()
    try:
        yield Running(site, server)
    finally:
        server.stop()
        site.close()


LINK = re.compile(r"https?://\S+/confirm/[A-Za-z0-9_\-.]+")


def confirm_link(text: str) -> str:
    found = LINK.findall(text)
    assert found, f"no confirmation link in:\n{text}"
    return found[0]
