"""Reading the subscriber files other tools export, a row at a time.

What a file is like is found out from the file: its encoding is UTF-8 (a BOM, as Excel
and LibreOffice write, is dropped) unless `encoding` says; its delimiter is a comma, a
semicolon or a tab (csv.Sniffer on its first lines, restricted to those three); its
address, name and status columns are recognised by the headers the exports of
Mailchimp, Substack, Buttondown, Kit (ConvertKit), Beehiiv and Ghost use, in any case,
or named with `mapping` ({"email": COLUMN, "name": COLUMN, "status": COLUMN or ""}).

The file is streamed: `ExportFile.records` yields one record per line, so a file of a
million rows is read in the memory of one. `ExportFile.open` reads it once through
first (decoding and splitting, no more), so that a file that is not what it seems (a
wrong encoding on line 900,000, a stray quote) is refused before anything is imported,
and so that the number of rows is known for a progress bar.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from newsletter import addresses
from newsletter.errors import ContentError, UsageError
from newsletter.ledger.store import SubscriberRow
from newsletter.ledger.tables import (
    ACTIVE,
    BOUNCED,
    COMPLAINED,
    PENDING_CONFIRMATION,
    UNSUBSCRIBED,
)
from newsletter.mail.message import clean_display_name

DELIMITERS = ",;\t"
_CHUNK = 1 << 20  # bytes read and decoded at a time
_SAMPLE_LINES = 20  # lines csv.Sniffer looks at

MAP_KEYS = ("email", "name", "status")

# Headers, compared with case, spaces, "_" and "-" left out ("Email Address",
# "email_address" and "E-mail" are one). The exports' layouts are in README.md.
_EMAIL = ("email", "emailaddress", "subscriberemail", "mail")
_NAME = ("name", "fullname", "displayname", "subscribername")
_FIRST = ("firstname", "fname", "givenname")
_LAST = ("lastname", "lname", "surname", "familyname")
# A column holding a status word: Beehiiv, Kit and Ghost "status" (Kit's API says
# "state"), Buttondown "subscriber_type".
_STATUS = ("status", "state", "subscribertype", "subscriptionstatus", "memberstatus")
# Yes/no columns: what "yes" means (Ghost "subscribed_to_emails", Substack
# "email_disabled"); "no" means the opposite for the first kind, nothing for the other.
_SUBSCRIBED_FLAGS = ("subscribedtoemails", "subscribed", "emailsubscribed")
_UNSUBSCRIBED_FLAGS = ("unsubscribed", "emaildisabled", "optedout", "optout")
# Mailchimp exports each status as its own file; the kind shows in its columns.
_WHEN_COLUMNS = {"unsubtime": UNSUBSCRIBED, "cleantime": BOUNCED}

_STATUS_WORDS: dict[str, str] = {}
for _status, _words in {
    # Free, paid, gifted, trial...: the subscriber gets the letter, as a reader.
    ACTIVE: "active subscribed confirmed regular premium free paid comped complimentary"
    " gifted gift trial trialed trialing churning past_due founding cold enabled",
    PENDING_CONFIRMATION: "pending unconfirmed unactivated validating",
    # Never opted in (Mailchimp "transactional") or left: not sent to.
    UNSUBSCRIBED: "unsubscribed cancelled canceled inactive removed deleted archived paused"
    " disabled opted_out optout transactional nonsubscribed non_subscribed",
    BOUNCED: "cleaned bounced hard_bounce undeliverable invalid spammy",
    COMPLAINED: "complained spam spam_complaint abuse marked_as_spam",
}.items():
    _STATUS_WORDS.update(dict.fromkeys(_words.split(), _status))
_TRUE = ("true", "yes", "y", "1", "t")
_FALSE = ("false", "no", "n", "0", "f")


def _squash(header: str) -> str:
    return re.sub(r"[\s_\-]", "", header.lower())


def _word(value: str) -> str:
    return re.sub(r"[\s\-]+", "_", value.strip().lower())


@dataclass(frozen=True)
class Record:
    """A good row: the subscriber, and the line it ends on."""

    line: int
    row: SubscriberRow


@dataclass(frozen=True)
class Rejected:
    """A row not imported, and why ("FILE:LINE: reason")."""

    line: int
    reason: str


@dataclass(frozen=True)
class Columns:
    """Which column holds what (indexes into a row); None: the file has none."""

    email: int
    name: int | None
    first: int | None
    last: int | None
    status: int | None
    subscribed_flag: int | None
    unsubscribed_flag: int | None
    when: tuple[tuple[int, str], ...]  # (column, the status a value there means)
    attributes: tuple[tuple[int, str], ...]  # (column, attribute name) of the others


@dataclass(frozen=True)
class ExportFile:
    """A subscriber file, checked through once: how to read it and how many rows it has."""

    path: Path
    encoding: str
    delimiter: str
    header: list[str]
    columns: Columns
    rows: int  # data lines, blank ones included

    @classmethod
    def open(
        cls, path: Path, *, encoding: str = "utf-8", mapping: Mapping[str, str] | None = None
    ) -> ExportFile:
        """The file at `path`, read through once; a file that cannot be read as a whole
        (encoding, a broken quote, no address column) is one ContentError naming it."""
        codec = _codec(encoding)
        sample: list[str] = []
        for line in _lines(path, codec):
            sample.append(line)
            if len(sample) >= _SAMPLE_LINES:
                break
        if not sample or not "".join(sample).strip():
            raise ContentError(f"{path}: the file is empty")
        delimiter = sniff_delimiter(sample)
        reader = csv.reader(_lines(path, codec), delimiter=delimiter)
        header: list[str] = []
        rows = 0
        with _csv_errors(path, reader):
            header = next(reader)
            for _ in reader:
                rows += 1
        columns = recognise(path, header, mapping or {})
        return cls(path, codec, delimiter, header, columns, rows)

    def describe(self) -> str:
        """How the file is read, in one line: what a dry run says first."""
        c, h = self.columns, self.header
        delimiter = {",": "comma", ";": "semicolon", "\t": "tab"}[self.delimiter]
        parts = [f"email={h[c.email].strip()!r}"]
        if c.name is not None:
            parts.append(f"name={h[c.name].strip()!r}")
        elif c.first is not None or c.last is not None:
            joined = " + ".join(repr(h[i].strip()) for i in (c.first, c.last) if i is not None)
            parts.append(f"name={joined}")
        flags = (c.status, c.subscribed_flag, c.unsubscribed_flag)
        status = [h[i].strip() for i in flags if i is not None]
        status += [h[i].strip() for i, _ in c.when]
        if any(status):
            parts.append("status=" + " + ".join(repr(x) for x in status if x))
        encoding = "UTF-8" if self.encoding == "utf-8-sig" else self.encoding
        return (
            f"{self.path}: {self.rows} row(s), {delimiter}-separated, {encoding};"
            f" {', '.join(parts)}; {len(c.attributes)} other column(s) kept as attributes"
        )

    def records(self) -> Iterator[Record | Rejected]:
        """Each data row in file order, lazily: a Record, or Rejected with the reason.
        Blank lines are left out."""
        reader = csv.reader(_lines(self.path, self.encoding), delimiter=self.delimiter)
        width = len(self.header)
        with _csv_errors(self.path, reader):
            next(reader)
            for fields in reader:
                line = reader.line_num
                if len(fields) > width and any(f.strip() for f in fields[width:]):
                    yield Rejected(line, f"{self.path}:{line}: more fields than columns")
                    continue
                if not any(f.strip() for f in fields):
                    continue  # a blank line, or one of empty fields
                yield self._record(line, fields + [""] * (width - len(fields)))

    def _record(self, line: int, fields: list[str]) -> Record | Rejected:
        c = self.columns
        raw = fields[c.email].strip()
        try:
            email = addresses.normalize(raw)
        except ValueError as exc:
            return Rejected(line, f"{self.path}:{line}: {raw!r}: {exc}")
        try:
            status = self._status(fields)
        except ValueError as exc:
            return Rejected(line, f"{self.path}:{line}: {email}: {exc}")
        if c.name is not None:
            name = fields[c.name]
        else:
            parts = [fields[i].strip() for i in (c.first, c.last) if i is not None]
            name = " ".join(p for p in parts if p)
        attributes = {key: fields[i].strip() for i, key in c.attributes}
        return Record(line, SubscriberRow(email, clean_display_name(name), attributes, status))

    def _status(self, fields: list[str]) -> str:
        """The farthest from being sent to of what the row's status columns say; ""
        when they say nothing. A word not known is a ValueError (the row is rejected:
        guessing could mail someone who left)."""
        c = self.columns
        said: list[str] = []
        if c.status is not None and fields[c.status].strip():
            value = fields[c.status]
            status = _STATUS_WORDS.get(_word(value))
            if status is None:
                raise ValueError(
                    f"status {value.strip()!r} in column {self.header[c.status]!r} is not one"
                    " this tool knows (README: the import's statuses);"
                    " --map status= imports the file without it"
                )
            said.append(status)
        for index, yes in ((c.subscribed_flag, ACTIVE), (c.unsubscribed_flag, UNSUBSCRIBED)):
            if index is None or not fields[index].strip():
                continue
            flag = fields[index].strip().lower()
            if flag in _TRUE:
                said.append(yes)
            elif flag in _FALSE:
                said.append(UNSUBSCRIBED if yes == ACTIVE else ACTIVE)
            else:
                raise ValueError(
                    f"{fields[index].strip()!r} in column {self.header[index]!r}:"
                    " expected true or false"
                )
        said += [status for index, status in c.when if fields[index].strip()]
        if not said:
            return ""
        return max(said, key=_farness)


def _farness(status: str) -> int:
    return {ACTIVE: 0, PENDING_CONFIRMATION: 1, UNSUBSCRIBED: 2, BOUNCED: 3, COMPLAINED: 4}[status]


def recognise(path: Path, header: list[str], mapping: Mapping[str, str]) -> Columns:
    """Which column is which: `mapping` first, then the known headers."""
    squashed = [_squash(h) for h in header]

    def named(key: str) -> int | None:
        column = mapping[key]
        if column == "" and key != "email":
            return None  # --map status= : the file's status columns are left out
        for i, h in enumerate(header):
            if h.strip().lower() == column.strip().lower():
                return i
        raise UsageError(
            f"--map {key}={column}: {path} has no column {column!r}"
            f" (its columns: {', '.join(h.strip() for h in header)})"
        )

    def first_of(names: tuple[str, ...]) -> int | None:
        for candidate in names:
            if candidate in squashed:
                return squashed.index(candidate)
        return None

    for key in mapping:
        if key not in MAP_KEYS:
            raise UsageError(f"--map {key}=...: not a field to map (one of {', '.join(MAP_KEYS)})")
    email = named("email") if "email" in mapping else first_of(_EMAIL)
    if email is None:
        found = ", ".join(h.strip() for h in header)
        raise ContentError(
            f"{path}:1: no 'email' column (found: {found}); name it with --map email=COLUMN"
        )
    name = named("name") if "name" in mapping else first_of(_NAME)
    first = last = None
    if name is None and "name" not in mapping:
        first, last = first_of(_FIRST), first_of(_LAST)
    ignore_status = mapping.get("status") == ""
    if "status" in mapping:
        status = named("status")
        subscribed = unsubscribed = None
        when: tuple[tuple[int, str], ...] = ()
    else:
        status = first_of(_STATUS)
        subscribed, unsubscribed = first_of(_SUBSCRIBED_FLAGS), first_of(_UNSUBSCRIBED_FLAGS)
        when = tuple((i, s) for i, h in enumerate(squashed) if (s := _WHEN_COLUMNS.get(h)))
    used = {email, name, first, last}
    if not ignore_status:
        used |= {status, subscribed, unsubscribed}
    attributes = tuple(
        (i, h.strip().lower()) for i, h in enumerate(header) if i not in used and h.strip()
    )
    return Columns(email, name, first, last, status, subscribed, unsubscribed, when, attributes)


def sniff_delimiter(sample: list[str]) -> str:
    """Comma, semicolon or tab, as the first lines show; a comma when they cannot say
    (a file of one column)."""
    text = "".join(sample)
    try:
        found = csv.Sniffer().sniff(text, delimiters=DELIMITERS).delimiter
    except csv.Error:
        found = ""
    header = sample[0]
    if found and found in header:
        return found
    # The Sniffer goes by consistency over the lines; a header with none of its choice
    # (or no choice) is settled by the header: column names rarely hold a delimiter.
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _codec(encoding: str) -> str:
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise UsageError(
            f"--encoding {encoding}: not an encoding Python knows (e.g. utf-8, latin-1, cp1252)"
        ) from None
    # Excel's "CSV UTF-8" starts with a byte order mark; utf-8-sig drops it.
    return "utf-8-sig" if name == "utf-8" else name


def _lines(path: Path, codec: str) -> Iterator[str]:
    """The file's lines, each with its ending, decoded a chunk at a time. Split at "\\n"
    only (csv reads "\\r\\n" itself; str.splitlines would also split at characters a
    quoted field may hold). A byte the codec cannot decode is one ContentError naming
    the line and `--encoding`."""
    decoder = codecs.getincrementaldecoder(codec)()
    line_no = 1
    carry = ""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ContentError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        while True:
            chunk = handle.read(_CHUNK)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                line = line_no + carry.count("\n") + exc.object[: exc.start].count(b"\n")
                shown = "UTF-8" if codec == "utf-8-sig" else codec
                raise ContentError(
                    f"{path}:{line}: not {shown} (byte 0x{exc.object[exc.start]:02x});"
                    " say which encoding the file is in with --encoding (e.g. --encoding cp1252)"
                ) from None
            parts = (carry + text).split("\n")
            carry = parts.pop()
            for part in parts:
                yield part + "\n"
            line_no += len(parts)
            if not chunk:
                break
    if carry:
        yield carry


class _csv_errors:  # noqa: N801 - used as a context manager, like contextlib's
    """A csv.Error (a field over the module's limit, a stray quote...) as one line naming
    the file and line: the file as a whole is not what it seems."""

    def __init__(self, path: Path, reader: Iterator[list[str]]) -> None:
        self.path, self.reader = path, reader

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, _tb: object) -> None:
        if isinstance(exc, StopIteration):
            raise ContentError(f"{self.path}: the file is empty") from None
        if not isinstance(exc, csv.Error):
            return  # not ours: it goes on
        reason = str(exc)
        if "field limit" in reason:
            reason = (
                f"a field is longer than {csv.field_size_limit():,} characters"
                " (is this a CSV file of subscribers?)"
            )
        line = getattr(self.reader, "line_num", 0)
        raise ContentError(f"{self.path}:{line}: {reason}") from None
