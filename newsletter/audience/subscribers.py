"""The subscriber list: validate addresses, import CSV files, add and remove.

Neither an import nor an add brings back an address the list has lost for a reason:
an unsubscribed one stays unsubscribed, a bounced or complained one stays suppressed
(only a confirmed signup brings it back), and an address erased at the person's
request is refused, row by row, unless `add --again-after-erasure` says otherwise.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass, field
from pathlib import Path

from newsletter import addresses
from newsletter.errors import ContentError, NewsletterError
from newsletter.fileio import read_text
from newsletter.ledger.store import Store, SubscriberRow
from newsletter.ledger.tables import UNSUBSCRIBED
from newsletter.mail.message import clean_display_name


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    kept_suppressed: int = 0  # known addresses left bounced or complained
    rejected: list[str] = field(default_factory=list)  # "FILE:LINE: reason"


@dataclass
class SubscriberList:
    """A subscriber CSV as read: the good rows, the line of each, one message per bad row."""

    rows: list[SubscriberRow]
    lines: dict[str, int]  # {email as stored: its line in the file}
    problems: list[str]


def erased_reason(email: str, erased_at: dt.datetime) -> str:
    """Why an address is not added back: the words of the import, add and export."""
    return (
        f"{email}: erased on {erased_at.date().isoformat()} at the person's request;"
        f" `newsletter subscribers add --again-after-erasure {email}` adds it anyway"
    )


def read_csv(path: Path) -> SubscriberList:
    """Rows of a subscriber CSV (columns email, name, and any extras kept as attributes)."""
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return _read_rows(path, reader)
    except csv.Error as exc:
        # A field over the csv module's limit, a stray quote at the end...: the file as a
        # whole is not what it seems; nothing of it is imported.
        reason = str(exc)
        if "field limit" in reason:
            reason = (
                f"a field is longer than {csv.field_size_limit():,} characters"
                " (is this a CSV file of subscribers?)"
            )
        raise ContentError(f"{path}:{reader.reader.line_num}: {reason}") from None


def _read_rows(path: Path, reader: csv.DictReader[str]) -> SubscriberList:
    if reader.fieldnames is None:
        raise ContentError(f"{path}: the file is empty")
    columns = [c.strip().lower() for c in reader.fieldnames]
    if "email" not in columns:
        raise ContentError(f"{path}:1: no 'email' column (found: {', '.join(columns)})")
    rows: dict[str, SubscriberRow] = {}
    lines: dict[str, int] = {}
    problems: list[str] = []
    line = 1
    for record in reader:
        line = reader.line_num
        if None in record:
            problems.append(f"{path}:{line}: more fields than columns")
            continue
        values = {k.strip().lower(): (v or "").strip() for k, v in record.items()}
        raw = values.pop("email", "")
        if not raw and not any(values.values()):
            continue  # blank line
        try:
            email = addresses.normalize(raw)
        except ValueError as exc:
            problems.append(f"{path}:{line}: {raw!r}: {exc}")
            continue
        name = clean_display_name(values.pop("name", ""))
        rows[addresses.key(email)] = SubscriberRow(email=email, name=name, attributes=values)
        lines[email] = line
    return SubscriberList(list(rows.values()), lines, problems)


def import_csv(store: Store, path: Path) -> ImportReport:
    read = read_csv(path)
    done = store.upsert_subscribers(read.rows)
    refused = sorted(
        (read.lines[email], f"{path}:{read.lines[email]}: {erased_reason(email, when)}")
        for email, when in done.erased.items()
    )
    problems = read.problems + [message for _, message in refused]
    return ImportReport(done.added, done.updated, len(done.suppressed), problems)


# The address as stored: domain in ASCII, local part as given (ValueError if invalid).
normalize_email = addresses.normalize


@dataclass(frozen=True)
class Added:
    """What `add` did: one of added, updated, or kept suppressed (bounced, complained)."""

    email: str  # as stored when added, else as given
    outcome: str  # ADDED, UPDATED or KEPT_SUPPRESSED
    suppressed: str = ""  # kept suppressed: bounced or complained


ADDED = "added"
UPDATED = "updated"
KEPT_SUPPRESSED = "kept suppressed"


def add(store: Store, address: str, name: str = "", again_after_erasure: bool = False) -> Added:
    """Add or update one subscriber. An address erased at the person's request is
    refused (one NewsletterError that says when) unless `again_after_erasure`."""
    try:
        email = normalize_email(address)
    except ValueError as exc:
        raise NewsletterError(f"{address!r}: {exc}") from None
    done = store.upsert_subscribers(
        [SubscriberRow(email, clean_display_name(name))], again_after_erasure=again_after_erasure
    )
    if done.erased:
        raise NewsletterError(erased_reason(email, done.erased[email]))
    if done.added:
        return Added(email, ADDED)
    given = address.strip()
    if done.suppressed:
        return Added(given, KEPT_SUPPRESSED, done.suppressed[email])
    return Added(given, UPDATED)


def remove(store: Store, address: str) -> None:
    """Unsubscribe an address (the row stays, so a re-import does not bring it back; a
    bounced or complained one stays so)."""
    if not store.set_subscriber_status(address, UNSUBSCRIBED):
        raise NewsletterError(f"{address}: not a subscriber")
