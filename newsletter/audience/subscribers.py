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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from newsletter import addresses
from newsletter.errors import ContentError, NewsletterError
from newsletter.fileio import read_text
from newsletter.ledger.store import Store, SubscriberRow
from newsletter.ledger.tables import ACTIVE, PENDING_CONFIRMATION, UNSUBSCRIBED
from newsletter.ledger.tags import tag_addresses
from newsletter.mail.message import clean_display_name


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    kept_suppressed: int = 0  # known addresses left bounced or complained
    rejected: list[str] = field(default_factory=list)  # "FILE:LINE: reason"
    duplicates: list[str] = field(default_factory=list)  # "FILE:LINE: ... of line N"

    @property
    def imported(self) -> int:
        """Rows that reached the list (added, updated, or known and kept suppressed)."""
        return self.added + self.updated + self.kept_suppressed

    @property
    def partial(self) -> bool:
        """Some rows were not imported as written (rejected, or a duplicate skipped)."""
        return bool(self.rejected or self.duplicates)


@dataclass
class SubscriberList:
    """A subscriber CSV as read: the good rows, the line of each, one message per bad row,
    and one per row that repeats an earlier row's address (in any case)."""

    rows: list[SubscriberRow]
    lines: dict[str, int]  # {email as stored: its line in the file}
    problems: list[str]
    duplicates: list[str] = field(default_factory=list)


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
    duplicates: list[str] = []
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
        key = addresses.key(email)
        if key in rows:
            # Two spellings of one subscriber (RFC 5321 leaves the local part's case to
            # the receiver, and the list treats them as one): the first row stands, the
            # later one is counted and named, never merged into it unseen.
            first = rows[key].email
            same = "the same address" if email == first else f"{first} in another case"
            duplicates.append(
                f"{path}:{line}: {email}: {same} as line {lines[first]}; line {lines[first]} kept"
            )
            continue
        rows[key] = SubscriberRow(email=email, name=name, attributes=values)
        lines[email] = line
    return SubscriberList(list(rows.values()), lines, problems, duplicates)


def import_csv(store: Store, path: Path, tags: Sequence[str] = ()) -> ImportReport:
    read = read_csv(path)
    done = store.upsert_subscribers(read.rows)
    if tags:  # every row that reached the list (an erased address did not)
        tag_addresses(store, (r.email for r in read.rows if r.email not in done.erased), tags)
    refused = sorted(
        (read.lines[email], f"{path}:{read.lines[email]}: {erased_reason(email, when)}")
        for email, when in done.erased.items()
    )
    problems = read.problems + [message for _, message in refused]
    return ImportReport(done.added, done.updated, len(done.suppressed), problems, read.duplicates)


# The address as stored: domain in ASCII, local part as given (ValueError if invalid).
normalize_email = addresses.normalize


@dataclass(frozen=True)
class Added:
    """What `add` did, and the status the address has now."""

    email: str  # as stored when added, else as given
    outcome: str  # ADDED, UPDATED, UNCHANGED, RESUBSCRIBED or KEPT
    status: str = ACTIVE  # KEPT: unsubscribed, pending, bounced or complained
    renamed: bool = False  # a known address's name was changed


ADDED = "added"
UPDATED = "updated"  # known and active; its name changed
UNCHANGED = "unchanged"  # known and active; no name given, or the same
RESUBSCRIBED = "resubscribed"  # unsubscribed (or pending) and made active: --resubscribe
KEPT = "kept"  # known and not active, left so


def add(
    store: Store,
    address: str,
    name: str = "",
    again_after_erasure: bool = False,
    resubscribe: bool = False,
) -> Added:
    """Add a subscriber, or update a known one's name (an empty `name` keeps it).

    A known address keeps its status: an unsubscribed or pending one becomes active
    only with `resubscribe` (the person asked to come back); a bounced or complained
    one stays suppressed whatever is said. An address erased at the person's request
    is refused (one NewsletterError that says when) unless `again_after_erasure`.
    """
    try:
        email = normalize_email(address)
    except ValueError as exc:
        raise NewsletterError(f"{address!r}: {exc}") from None
    name = clean_display_name(name)
    before = store.subscriber(email)
    done = store.upsert_subscribers(
        [SubscriberRow(email, name)], again_after_erasure=again_after_erasure
    )
    if done.erased:
        raise NewsletterError(erased_reason(email, done.erased[email]))
    if done.added or before is None:
        return Added(email, ADDED)
    given = address.strip()
    renamed = bool(name) and name != before["name"]
    status = before["status"]
    if status == ACTIVE:
        return Added(given, UPDATED if renamed else UNCHANGED, renamed=renamed)
    if resubscribe and status in (UNSUBSCRIBED, PENDING_CONFIRMATION):
        store.set_subscriber_status(email, ACTIVE)
        return Added(given, RESUBSCRIBED, status, renamed)
    return Added(given, KEPT, status, renamed)


def remove(store: Store, address: str) -> None:
    """Unsubscribe an address (the row stays, so a re-import does not bring it back; a
    bounced or complained one stays so)."""
    if not store.set_subscriber_status(address, UNSUBSCRIBED):
        raise NewsletterError(f"{address}: not a subscriber")
