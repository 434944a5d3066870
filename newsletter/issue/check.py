"""Lint a built issue: what would get it clipped, rejected, or fall foul of the law."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import lxml.html

from newsletter.issue import markdown
from newsletter.issue.content import Issue

HTML_MAX_BYTES = 102 * 1024  # Gmail clips messages whose HTML is larger
STYLE_MAX_BYTES = 16 * 1024  # Gmail drops a <style> block over 16 KB
LINE_MAX = 998  # RFC 5322 2.1.1
SUBJECT_WARN = 78

# Alt text that names the file or says only "image" tells a reader who cannot see it
# nothing: screen readers read it out, and clients show it when images are blocked.
_FILE_NAME = re.compile(
    r"^\S*\.(?:png|jpe?g|gif|webp|svg|bmp|tiff?|heic|avif|ico)$", re.IGNORECASE
)
_PLACEHOLDER_ALT = frozenset(
    "image img picture pic photo photograph graphic icon screenshot untitled alt".split()
)
# How HTML marks an image as decorative (WAI-ARIA): alt="" is meant, not forgotten.
_DECORATIVE_ROLES = ("presentation", "none")


@dataclass(frozen=True)
class Finding:
    level: str  # "error", "warning", or "info" (what `check --spam` saw that does no harm)
    code: str
    message: str
    where: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Subject:
    """What `check` looks at: one issue filled for the sample subscriber."""

    subject: str
    preheader: str
    html: str
    text: str
    unsubscribe_url: str
    postal_address: str
    sponsor_name: str | None  # None when the issue has no sponsor block
    sponsor_label: str
    sponsor_html: str
    sponsor_text: str
    message: bytes = b""


def check(s: Subject) -> list[Finding]:
    """All findings, errors first."""
    out: list[Finding] = []

    def error(code: str, message: str, where: str = "") -> None:
        out.append(Finding("error", code, message, where))

    def warn(code: str, message: str, where: str = "") -> None:
        out.append(Finding("warning", code, message, where))

    if not s.subject.strip():
        error("subject-empty", "the subject is empty", "subject")
    if "\r" in s.subject or "\n" in s.subject:
        error("subject-line-break", "the subject contains a line break", "subject")
    if len(s.subject) > SUBJECT_WARN:
        warn(
            "subject-long",
            f"the subject is {len(s.subject)} characters; over {SUBJECT_WARN} gets cut off",
            "subject",
        )
    if not s.preheader.strip():
        warn("no-preheader", "no preheader: clients show the first text of the body instead")

    doc = lxml.html.document_fromstring(s.html)
    hrefs = [a.get("href", "") for a in doc.iter("a")]
    if not any(s.unsubscribe_url and h == s.unsubscribe_url for h in hrefs):
        error("no-unsubscribe", "the HTML part has no unsubscribe link", "html")
    if not s.unsubscribe_url or s.unsubscribe_url not in s.text:
        error("no-unsubscribe", "the text part has no unsubscribe link", "text")
    address = " ".join(s.postal_address.split())
    if not address:
        error("no-postal-address", "no postal address configured ([publication] postal_address)")
    else:
        if address not in " ".join(doc.text_content().split()):
            error("no-postal-address", "the HTML part does not show the postal address", "html")
        if address not in " ".join(s.text.split()):
            error("no-postal-address", "the text part does not show the postal address", "text")

    if s.sponsor_name is not None:
        label = s.sponsor_label.strip().lower()
        blocks = doc.xpath('//*[@data-block="sponsor"]')
        if not blocks:
            error("sponsor-missing", "the HTML part has no sponsor block", "html")
        elif not label or label not in " ".join(blocks[0].text_content().split()).lower():
            error("sponsor-unlabelled", "the HTML sponsor block does not show its label", "html")
        if not s.sponsor_text.strip() or s.sponsor_text.strip() not in s.text:
            error("sponsor-missing", "the text part has no sponsor block", "text")
        elif not label or label not in s.sponsor_text.lower():
            error("sponsor-unlabelled", "the text sponsor block does not show its label", "text")

    size = len(s.html.encode("utf-8"))
    if size > HTML_MAX_BYTES:
        error(
            "html-too-large",
            f"the HTML is {size / 1024:.1f} KB; Gmail clips messages over 102 KB",
            "html",
        )
    style = sum(len((el.text or "").encode("utf-8")) for el in doc.iter("style"))
    if style > STYLE_MAX_BYTES:
        error(
            "style-too-large",
            f"<style> holds {style / 1024:.1f} KB; Gmail drops it over 16 KB",
            "html",
        )
    for img in doc.iter("img"):
        src = img.get("src", "")
        where = f"html line {img.sourceline}"
        alt = img.get("alt")
        if alt is None:
            error("img-no-alt", f"image without alt text: {src}", where)
        elif not alt.strip():
            if not _decorative(img):
                warn(
                    "img-alt-empty",
                    f"image without alt text: {src} (describe it, or mark it decorative:"
                    f" ![{markdown.DECORATIVE}](...))",
                    where,
                )
        elif _meaningless_alt(alt, src):
            warn("img-alt-meaningless", f"alt text {alt!r} says nothing: {src}", where)
        if src.startswith("http://"):
            warn("img-not-https", f"image is not https: {src}", where)
        if not img.get("width"):
            warn("img-no-width", f"image without width: {src}", where)
    # The limit is on the message as sent. The HTML and text parts are quoted-printable
    # there, so a long paragraph on one source line is fine and must not block a build.
    for n, line in enumerate(s.message.split(b"\r\n"), start=1):
        if len(line) > LINE_MAX:
            error("line-too-long", f"line over {LINE_MAX} characters", f"message line {n}")

    seen: set[str] = set()
    for href in hrefs:
        if href.startswith("http://") and href not in seen:
            seen.add(href)
            warn("link-not-https", f"link is not https: {href}", "html")
        # Without the country code a tel: link dials only from inside the country (RFC
        # 3966 global numbers start with "+"), and a reader abroad gets a wrong number.
        if href.startswith("tel:") and not href.startswith("tel:+") and href not in seen:
            seen.add(href)
            warn(
                "tel-no-country",
                f"phone link without the country code: {href} (write it as +1 ...,"
                " or set the sponsor's phone_country_code)",
                "html",
            )

    out.sort(key=lambda f: f.level != "error")
    return out


def source_findings(issue: Issue) -> list[Finding]:
    """What the issue file says that will not show as written, at its line in the file."""
    return [
        Finding(
            "warning",
            "raw-html",
            f"raw HTML shows as text, not markup: {tag}",
            f"{issue.path}:{issue.body_line + n}",
        )
        for n, tag in markdown.raw_html_lines(issue.body)
    ]


def _decorative(img: Any) -> bool:
    return (
        img.get("role", "").strip().lower() in _DECORATIVE_ROLES
        or img.get("aria-hidden", "").strip().lower() == "true"
    )


def _meaningless_alt(alt: str, src: str) -> bool:
    text = alt.strip()
    name = unquote(urlsplit(src).path.rsplit("/", 1)[-1])
    return (
        bool(_FILE_NAME.match(text))
        or text.lower() in _PLACEHOLDER_ALT
        or (bool(name) and text in (name, name.rsplit(".", 1)[0]))
    )


def has_errors(findings: list[Finding]) -> bool:
    return any(f.level == "error" for f in findings)
