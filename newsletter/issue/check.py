"""Lint a built issue: what would get it clipped, rejected, or fall foul of the law."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import lxml.html

HTML_MAX_BYTES = 102 * 1024  # Gmail clips messages whose HTML is larger
STYLE_MAX_BYTES = 16 * 1024  # Gmail drops a <style> block over 16 KB
LINE_MAX = 998  # RFC 5322 2.1.1
SUBJECT_WARN = 78


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
        if img.get("alt") is None:
            error("img-no-alt", f"image without alt text: {src}", f"html line {img.sourceline}")
        if not img.get("width"):
            warn("img-no-width", f"image without width: {src}", f"html line {img.sourceline}")
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

    out.sort(key=lambda f: f.level != "error")
    return out


def has_errors(findings: list[Finding]) -> bool:
    return any(f.level == "error" for f in findings)
