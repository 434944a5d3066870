"""The public archive: every sent issue as a web page, an index of them and an Atom feed.

An issue is in the archive once a campaign of it is done; what is shown is the HTML
snapshot of its latest done campaign (what readers got), with the personal slots
filled with neutral values: no name, no address, no unsubscribe token. That page is
the "View in browser" link of every message (tokens.view_online_url).

`newsletter serve` answers these paths and `newsletter archive export DIR` writes the
same bytes as files, for any static host (paths below [publication] base_url):

    /                  index.html
    /issues/<slug>     issues/<slug>/index.html   (static hosts answer the folder's name)
    /feed.xml          feed.xml
    /site.css          site.css

The links between the pages are root-relative (base_url's path, then the path
above), so the same files work wherever base_url points, served or static.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
import lxml.html
from feedgen.feed import FeedGenerator
from lxml.etree import ParserError

from newsletter import __version__, tokens
from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.fileio import write_files
from newsletter.issue import fields, render
from newsletter.ledger import published
from newsletter.ledger.store import Store

PAGES_PACKAGE = "site_pages"
STYLESHEET = "site.css"
FEED_ENTRIES = 20
SUMMARY_CHARS = 200
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# An empty archive's feed still needs an <updated>; a fixed one keeps export == served.
_NOTHING_YET = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_INVISIBLE = dict.fromkeys(map(ord, "\u200c\u034f\u00ad\u200b\u2007\ufeff"), None)


# --- the site's page templates (shared with site.py) ---------------------------------------


class Pages:
    """The web pages' templates and style sheet (newsletter/site_pages), not the email look."""

    def __init__(self, config: Config) -> None:
        folder = resources.files("newsletter.web").joinpath(PAGES_PACKAGE)
        sources = {
            entry.name: entry.read_text("utf-8")
            for entry in folder.iterdir()
            if entry.name.endswith(".html")
        }
        self._env = jinja2.Environment(
            loader=jinja2.DictLoader(sources),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.stylesheet = folder.joinpath(STYLESHEET).read_bytes()
        pub = config.publication
        self.base_url = pub.base_url.rstrip("/")
        self.root = urlsplit(self.base_url).path.rstrip("/")
        self.context: dict[str, Any] = {
            "publication": pub,
            "root": self.root,
            "signup": config.signup.enabled,
        }

    def render(self, template: str, **context: Any) -> bytes:
        page = self._env.get_template(template).render(**self.context, **context)
        return page.encode("utf-8")


def require_base_url(config: Config) -> None:
    if not config.publication.base_url:
        raise NewsletterError(
            f"{config.path}: [publication] base_url is empty: set it to the public address"
            " of the site (the links in every message point there)"
        )


# --- what was sent ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SentIssue:
    slug: str
    subject: str
    campaign_id: int  # its latest done campaign: the snapshot shown
    published: dt.datetime  # when it first went out
    updated: dt.datetime  # when its latest send finished


def sent_issues(store: Store) -> list[SentIssue]:
    """One entry per issue that a done campaign sent, newest first."""
    rows = published.sent_issues(store)
    issues = [
        SentIssue(
            slug=row.issue_slug,
            subject=row.subject,
            campaign_id=int(row.latest),
            published=row.published or row.updated or _NOTHING_YET,
            updated=row.updated or row.published or _NOTHING_YET,
        )
        for row in rows
        if _SLUG.match(row.issue_slug)  # it becomes a file name in an export
    ]
    issues.sort(key=lambda i: (i.published, i.campaign_id), reverse=True)
    return issues


def neutral_values(config: Config, slug: str) -> dict[str, str]:
    """The slot values of the web version: the same for everyone, so nothing personal."""
    return {
        "name": "there",  # "Hi there,", as for a subscriber without a name
        "email": "your email address",  # "You are receiving this at your email address..."
        # Without a token the link leads to a page that says how to unsubscribe.
        "unsubscribe_url": f"{config.publication.base_url.rstrip('/')}/unsubscribe",
        "view_online_url": tokens.view_online_url(config, slug),
    }


def summary(html: str, limit: int = SUMMARY_CHARS) -> str:
    """A line about the issue: its preheader, else the start of its text."""
    try:
        doc = lxml.html.document_fromstring(html)
    except (ParserError, ValueError):
        return ""
    found = doc.xpath("//*[contains(concat(' ', normalize-space(@class), ' '), ' preheader ')]")
    text = _words(found[0].text_content()) if found else ""
    if not text:
        for element in doc.xpath("//head|//style|//script|//title"):
            element.drop_tree()
        text = _words(doc.text_content())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _words(text: str) -> str:
    return " ".join(text.translate(_INVISIBLE).split())


# --- the pages --------------------------------------------------------------------------------


class Archive:
    """The archive's pages, made from the store on every call (a served page is current).

    Snapshots of done campaigns never change, so the summaries are kept once made.
    """

    def __init__(self, store: Store, config: Config, pages: Pages | None = None) -> None:
        require_base_url(config)
        self.store = store
        self.config = config
        self.pages = pages or Pages(config)
        self._zone = zoneinfo.ZoneInfo(config.publication.timezone)
        self._summaries: dict[int, str] = {}
        self._lock = threading.Lock()

    def issues(self) -> list[SentIssue]:
        return sent_issues(self.store)

    def web_version(self, slug: str) -> bytes | None:
        """The issue's page, or None when no done campaign sent it."""
        if not _SLUG.match(slug):
            return None
        row = published.latest_snapshot(self.store, slug)
        if row is None:
            return None
        return self._fill(row.id, slug, row.html_template).encode("utf-8")

    def _fill(self, campaign_id: int, slug: str, source: str) -> str:
        template = render.html_slots(source)
        values = neutral_values(self.config, slug)
        # Merge fields are filled for nobody: their defaults, else empty.
        fields.Values(fields.in_slots(template.slots)).fill(values, "", "", "")
        other = template.slots - values.keys()
        if other:
            # Tracked links (link0, link1, ...) lead straight to where they go: a click on
            # the web version is nobody's. A slot this page knows nothing of stays empty.
            tracked = published.tracked_links(self.store, campaign_id)
            links = {f"link{idx}": url for idx, url in tracked.items()}
            values.update({name: links.get(name, "") for name in other})
        return template.fill(values)

    def index(self, issues: list[SentIssue] | None = None) -> bytes:
        issues = self.issues() if issues is None else issues
        summaries = self._summaries_of(issues)
        entries = [
            {
                "slug": i.slug,
                "subject": i.subject,
                "date": self._date(i.published),
                "iso_date": i.published.astimezone(self._zone).date().isoformat(),
                "summary": summaries[i.campaign_id],
            }
            for i in issues
        ]
        return self.pages.render("index.html", issues=entries)

    def feed(self, issues: list[SentIssue] | None = None) -> bytes:
        """The Atom feed of the latest FEED_ENTRIES issues."""
        issues = (self.issues() if issues is None else issues)[:FEED_ENTRIES]
        summaries = self._summaries_of(issues)
        pub = self.config.publication
        base = self.pages.base_url
        fg = FeedGenerator()
        fg.id(f"{base}/")
        fg.title(pub.name)
        fg.author({"name": pub.name})
        fg.link(href=f"{base}/", rel="alternate", type="text/html")
        fg.link(href=f"{base}/feed.xml", rel="self", type="application/atom+xml")
        fg.language(pub.language)
        fg.generator("newsletter", version=__version__)
        fg.updated(max((i.updated for i in issues), default=_NOTHING_YET))
        for issue in issues:
            url = tokens.view_online_url(self.config, issue.slug)
            entry = fg.add_entry(order="append")
            entry.id(url)
            entry.title(issue.subject)
            entry.link(href=url, rel="alternate", type="text/html")
            entry.published(issue.published)
            entry.updated(issue.updated)
            if summaries[issue.campaign_id]:
                entry.summary(summaries[issue.campaign_id])
        return bytes(fg.atom_str(pretty=True))

    def files(self) -> dict[str, bytes]:
        """Every page of the archive: relative file path -> bytes, as `export` writes them."""
        issues = self.issues()
        files = {
            "index.html": self.index(issues),
            "feed.xml": self.feed(issues),
            STYLESHEET: self.pages.stylesheet,
        }
        for issue in issues:
            page = self.web_version(issue.slug)
            if page is not None:  # a campaign may have been deleted in between
                files[f"issues/{issue.slug}/index.html"] = page
        return files

    def _summaries_of(self, issues: list[SentIssue]) -> Mapping[int, str]:
        with self._lock:
            missing = [i.campaign_id for i in issues if i.campaign_id not in self._summaries]
        if missing:
            rows = published.snapshots(self.store, missing)
            made = {
                row.id: summary(self._fill(row.id, row.issue_slug, row.html_template))
                for row in rows
            }
            with self._lock:
                self._summaries.update(made)
        with self._lock:
            return {i.campaign_id: self._summaries.get(i.campaign_id, "") for i in issues}

    def _date(self, when: dt.datetime) -> str:
        local = when.astimezone(self._zone)
        return f"{local:%B} {local.day}, {local.year}"


def export(store: Store, config: Config, folder: Path) -> list[Path]:
    """Write the archive into `folder`, every file or none; returns the paths written."""
    if folder.exists() and not folder.is_dir():
        raise NewsletterError(f"{folder}: exists and is not a folder")
    files = {folder / name: data for name, data in Archive(store, config).files().items()}
    for path in files:
        _refuse_symlinks(folder, path)
    write_files(files)
    return sorted(files)


def _refuse_symlinks(folder: Path, path: Path) -> None:
    """A symbolic link already in `folder` (the file, or a folder on the way to it) would
    send the export's bytes elsewhere, or be replaced: refuse to write through it. The
    folder named on the command line may itself be a link."""
    current = folder
    for part in path.relative_to(folder).parts:
        current = current / part
        if current.is_symlink():
            raise NewsletterError(
                f"{current}: is a symbolic link; archive export writes nothing through one"
                " (remove it, or export into another folder)"
            )
