"""The subscriber list: validate addresses, import the files other tools export (read by
exports.py), add and remove.

Neither an import nor an add brings back an address the list has lost for a reason:
an unsubscribed one stays unsubscribed, a bounced or complained one stays suppressed
(only a confirmed signup brings it back), and an address erased at the person's
request is refused, row by row, unless `add --again-after-erasure` says otherwise.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from newsletter import addresses
from newsletter.audience import exports
from newsletter.errors import NewsletterError, UsageError
from newsletter.ledger.store import Store, SubscriberRow
from newsletter.ledger.tables import ACTIVE, PENDING_CONFIRMATION, UNSUBSCRIBED
from newsletter.ledger.tags import tag_addresses
from newsletter.mail.message import clean_display_name

SHOWN = 100  # lines kept of each kind of report line; the rest are counted
DRY_RUN_SHOWN = 5  # lines a dry run prints of each outcome
BATCH_ROWS = 1000  # rows written in one transaction


@dataclass
class Outcome:
    """Rows of one kind (rejected, duplicate, added...): how many, and the first lines."""

    count: int = 0
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.count += 1
        if len(self.lines) < SHOWN:
            self.lines.append(line)


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    kept_suppressed: int = 0  # known addresses left bounced or complained
    rejected: Outcome = field(default_factory=Outcome)  # "FILE:LINE: reason"
    duplicates: Outcome = field(default_factory=Outcome)  # "FILE:LINE: ... of line N"
    # Rows the file's status columns gave another status than active: new addresses, and
    # known ones moved away from active. {status: their lines}.
    statuses: dict[str, Outcome] = field(default_factory=dict)
    # What a dry run shows besides: the first rows that would be added, updated, kept.
    examples: dict[str, Outcome] = field(default_factory=dict)
    dry_run: bool = False
    source: str = ""  # how the file was read (ExportFile.describe)

    @property
    def imported(self) -> int:
        """Rows that reached the list (added, updated, or known and kept suppressed)."""
        return self.added + self.updated + self.kept_suppressed

    @property
    def partial(self) -> bool:
        """Some rows were not imported as written (rejected, or a duplicate skipped)."""
        return bool(self.rejected.count or self.duplicates.count)

    def _example(self, kind: str, line: str) -> None:
        if self.dry_run:
            self.examples.setdefault(kind, Outcome()).add(line)


def erased_reason(email: str, erased_at: dt.datetime) -> str:
    """Why an address is not added back: the words of the import, add and export."""
    return (
        f"{email}: erased on {erased_at.date().isoformat()} at the person's request;"
        f" `newsletter subscribers add --again-after-erasure {email}` adds it anyway"
    )


def parse_mapping(values: Iterable[str]) -> dict[str, str]:
    """`--map FIELD=COLUMN` values (the console's "map" field too) as {field: column}:
    read FIELD (email, name, status) from COLUMN. A UsageError for one without "="."""
    mapping: dict[str, str] = {}
    for value in values:
        key, eq, column = value.partition("=")
        if not eq:
            raise UsageError(f"--map {value}: expected FIELD=COLUMN, e.g. email='E-Mail'")
        mapping[key.strip().lower()] = column
    return mapping


def import_csv(
    store: Store,
    path: Path,
    *,
    mapping: Mapping[str, str] | None = None,
    encoding: str = "utf-8",
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    tags: Sequence[str] = (),
) -> ImportReport:
    """Import a subscriber file (exports.py says which), BATCH_ROWS rows a transaction.

    The file is streamed and checked whole before the first write: a file that cannot
    be read is refused with nothing imported. Bad rows are reported with their line and
    skipped; a row whose address an earlier row has (in any case) is a duplicate: the
    first row stands. `dry_run` reports the same and writes nothing. `progress(done,
    total)` is called after each batch. `tags` are added to every row that reaches the
    list (an erased address does not).
    """
    source = exports.ExportFile.open(path, encoding=encoding, mapping=mapping)
    report = ImportReport(dry_run=dry_run, source=source.describe())
    done = 0
    figures = _PlannerFigures(store, dry_run)
    with SeenAddresses() as seen:
        batch: list[exports.Record] = []
        for item in source.records():
            done += 1
            if isinstance(item, exports.Rejected):
                report.rejected.add(item.reason)
            else:
                batch.append(item)
            if len(batch) >= BATCH_ROWS:
                _import_batch(store, path, seen, batch, report, tags)
                batch = []
                figures.added(report.added)
                if progress is not None:
                    progress(done, source.rows)
        _import_batch(store, path, seen, batch, report, tags)
        figures.added(report.added, last=True)
    if progress is not None:
        progress(source.rows, source.rows)
    return report


class _PlannerFigures:
    """Refreshes the database's planner figures for the list as an import grows it:
    after the first batch, whenever the rows added since the last refresh reach the
    number added before it (at 1,000, 2,000, 4,000, ... rows: 11 times for a
    million), and once at the end of an import that added a batch or more (a few rows
    added to a large list leave its figures as good as they were, and an ANALYZE of a
    million rows costs a fraction of a second). Store.refresh_planner_figures says why."""

    def __init__(self, store: Store, dry_run: bool) -> None:
        self._store = store
        self._dry_run = dry_run
        self._at = 0  # rows added when the figures were last refreshed

    def added(self, rows: int, *, last: bool = False) -> None:
        if self._dry_run or rows == self._at:
            return
        if rows >= BATCH_ROWS and (last or rows >= 2 * self._at):
            self._store.refresh_planner_figures()
            self._at = rows


def _import_batch(
    store: Store,
    path: Path,
    seen: SeenAddresses,
    batch: list[exports.Record],
    report: ImportReport,
    tags: Sequence[str] = (),
) -> None:
    if not batch:
        return
    first = seen.first_of(batch)
    kept: list[exports.Record] = []
    for record in batch:
        email = record.row.email
        earlier = first.get(addresses.key(email))
        if earlier is not None and earlier[1] != record.line:
            # Two spellings of one subscriber (RFC 5321 leaves the local part's case to
            # the receiver, and the list treats them as one): the first row stands, the
            # later one is counted and named, never merged into it unseen.
            was, line = earlier
            same = "the same address" if email == was else f"{was} in another case"
            report.duplicates.add(
                f"{path}:{record.line}: {email}: {same} as line {line}; line {line} kept"
            )
            continue
        kept.append(record)
    lines = {r.row.email: r.line for r in kept}
    done = store.upsert_subscribers([r.row for r in kept], dry_run=report.dry_run)
    if tags and not report.dry_run:
        tag_addresses(store, (r.row.email for r in kept if r.row.email not in done.erased), tags)
    report.added += done.added
    report.updated += done.updated
    report.kept_suppressed += len(done.suppressed)
    for email, when in sorted(done.erased.items(), key=lambda item: lines[item[0]]):
        report.rejected.add(f"{path}:{lines[email]}: {erased_reason(email, when)}")
    for email, status in {**done.new_statuses, **done.restatus}.items():
        report.statuses.setdefault(status, Outcome()).add(f"{path}:{lines[email]}: {email}")
    if report.dry_run:
        for record in kept:
            email = record.row.email
            if email in done.erased:
                continue
            kind = "add" if email in done.added_emails else "update"
            if email in done.suppressed:
                kind = f"keep {done.suppressed[email]}"
            report._example(kind, f"{path}:{record.line}: {email}")


class SeenAddresses:
    """The addresses of the rows read so far, with the line of each, kept in a SQLite
    file of its own (a temporary one): a file of a million rows is checked for
    duplicates in the memory of one batch, and the publication's database is not
    touched (a dry run changes nothing)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="newsletter-import-")
        self._db = sqlite3.connect(Path(self._dir.name) / "seen.db")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE seen (key TEXT PRIMARY KEY, email TEXT, line INTEGER) WITHOUT ROWID"
        )

    def __enter__(self) -> SeenAddresses:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._db.close()
        self._dir.cleanup()

    def first_of(self, batch: list[exports.Record]) -> dict[str, tuple[str, int]]:
        """{key: (address, line)} of the first row with each address of `batch`, this
        batch's own rows included (recorded now when they are the first)."""
        keys = list({addresses.key(r.row.email) for r in batch})
        found: dict[str, tuple[str, int]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, email, line in self._db.execute(
                f"SELECT key, email, line FROM seen WHERE key IN ({marks})", chunk
            ):
                found[key] = (email, line)
        firsts: list[tuple[str, str, int]] = []
        for record in batch:
            key = addresses.key(record.row.email)
            if key not in found:
                found[key] = (record.row.email, record.line)
                firsts.append((key, record.row.email, record.line))
        self._db.executemany("INSERT INTO seen VALUES (?, ?, ?)", firsts)
        return found


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
