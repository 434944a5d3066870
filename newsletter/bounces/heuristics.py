"""The bounces that are not a proper DSN: what their text says.

Exim's classic bounce, Postfix's before DSNs (or with them turned off), old Exchange
and Gmail text notices: each mail system words its own. flufl.bounce (GNU Mailman's
detectors, maintained) knows many of them and returns the failed addresses, split into
temporary and permanent where the text tells. Most detectors cannot tell, and call
every address permanent; so an address is soft when the detector said temporary or the
notice shows a 4.x.x code (or a 4xx reply) near it, and hard otherwise.
"""

from __future__ import annotations

import logging
import re
from email.message import Message

from flufl.bounce import all_failures

from newsletter.bounces.reports import STATUS_CODE, Failure, status_code, text
from newsletter.ledger.bounces import HARD, SOFT

log = logging.getLogger(__name__)

# How far below the line that names the address its reason may be: Gmail's text notice
# puts the server's reply six lines under it, Exim's three.
NEAR = 10
# An SMTP reply code at the start of a reply text (RFC 5321 section 4.2): 550, 452-...
REPLY_CODE = re.compile(r"(?<![\d.#])([245])\d\d(?=[ -])")


def failures(msg: Message) -> list[Failure]:
    """Each address a non-standard bounce reports, soft or hard; [] when it is none."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a third-party heuristic that trips on odd input is "no bounce"
        log.warning("bounce detectors failed on a message; it is left unclassified")
        log.debug("the detectors' error", exc_info=True)
        return []
    notice = notice_text(msg)
    found = []
    for raw in sorted(temporary | permanent):
        address = raw.decode("ascii", "replace").strip().strip("<>")
        code, diagnostic, reply = _reason(notice, address)
        temporary_now = raw in temporary or code.startswith("4") or (not code and reply == "4")
        found.append(Failure(SOFT if temporary_now else HARD, address, code, diagnostic))
    return found


def notice_text(msg: Message) -> str:
    """The text a mail system wrote: the text/plain parts, but not those of the returned
    message it attaches (whose own words are not the reason)."""
    if msg.get_content_maintype() == "message":
        return ""
    if msg.is_multipart():
        parts = msg.get_payload()
        return "\n".join(notice_text(p) for p in parts if isinstance(p, Message))
    if msg.get_content_type() != "text/plain":
        return ""
    body = msg.get_payload(decode=True)
    if not isinstance(body, bytes):
        return ""
    return body.decode(msg.get_content_charset() or "utf-8", "replace")


def _reason(notice: str, address: str) -> tuple[str, str, str]:
    """(enhanced status code, the line that gives it, class of a plain reply code) for
    `address`: from the lines just below its first mention (an enhanced code first, then
    a plain reply code), else an enhanced code from anywhere in the notice."""
    lines = notice.splitlines()
    start = next((i for i, line in enumerate(lines) if address.lower() in line.lower()), None)
    near = lines[start : start + NEAR] if start is not None else []
    for line in near:
        if STATUS_CODE.search(line):
            return status_code(line), text(line), ""
    for line in near:
        if reply := REPLY_CODE.search(line):
            return "", text(line), reply[1]
    for line in lines:
        if STATUS_CODE.search(line):
            return status_code(line), text(line), ""
    return "", "", ""
