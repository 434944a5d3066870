"""The subscriber list: validate addresses, import CSV files, add and remove."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from newsletter import addresses
from newsletter.errors import ContentError, NewsletterError
from newsletter.fileio import read_text
from newsletter.ledger.store import Store, SubscriberRow
from newsletter.ledger.tables import ACTIVE, UNSUBSCRIBED
from newsletter.mail.message import clean_display_name


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    rejected: list[str] = field(default_factory=list)  # "FILE:LINE: reason"


def read_csv(path: Path) -> tuple[list[SubscriberRow], list[str]]:
    """Rows of a subscriber CSV (columns email, name, and any extras kept as attributes).

    Returns the good rows and one message per bad row, naming its line.
    """
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


def _read_rows(path: Path, reader: csv.DictReader[str]) -> tuple[list[SubscriberRow], list[str]]:
    if reader.fieldnames is None:
        raise ContentError(f"{path}: the file is empty")
    columns = [c.strip().lower() for c in reader.fieldnames]
    if "email" not in columns:
        raise ContentError(f"{path}:1: no 'email' column (found: {', '.join(columns)})")
    rows: dict[str, SubscriberRow] = {}
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
    return list(rows.values()), problems


def import_csv(store: Store, path: Path) -> ImportReport:
    rows, problems = read_csv(path)
    added, updated = store.upsert_subscribers(rows)
    return ImportReport(added=added, updated=updated, rejected=problems)


# The address as stored: domain in ASCII, local part as given (ValueError if invalid).
normalize_email = addresses.normalize


def add(store: Store, address: str, name: str = "") -> str | None:
    """Add or update one subscriber; the address as stored when it is new, else None."""
    try:
        email = normalize_email(address)
    except ValueError as exc:
        raise NewsletterError(f"{address!r}: {exc}") from None
    added, _ = store.upsert_subscribers([SubscriberRow(email, clean_display_name(name))])
    return email if added else None


def remove(store: Store, address: str) -> None:
    """Unsubscribe an address (the row stays, so a re-import does not bring it back)."""
    if not store.set_subscriber_status(address, UNSUBSCRIBED):
        raise NewsletterError(f"{address}: not a subscriber")


def resubscribe(store: Store, address: str) -> None:
    if not store.set_subscriber_status(address, ACTIVE):
        raise NewsletterError(f"{address}: not a subscriber")
