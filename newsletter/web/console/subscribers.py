"""/subscribers: counts by status, growth week by week, and an import with a dry run.

    GET  /subscribers                   the counts, the growth chart, the import form
    POST /subscribers/import            with the token: a file (multipart), its tags, map
                                        and encoding; the dry run of the import, shown
                                        (a body over MAX_UPLOAD_BYTES is refused)
    POST /subscribers/import/confirm    with the token and the dry run's id: the import
    POST /subscribers/import/cancel     with the token and the id: the file is dropped

The counts are `subscribers count --json`'s (ledger/privacy.status_counts), the growth
ledger/growth's, the import `subscribers import FILE [--dry-run]`'s (audience/
subscribers.import_csv, with parse_mapping for --map). The uploaded file waits for the
confirmation in a folder only this user reads (0700), as a 0600 file under a random id:
the confirmation names the id, never a path, and imports that very file, with the same
options, then deletes it. An upload not confirmed within PENDING_FOR is deleted.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter import segments
from newsletter.audience import subscribers as subscriber_ops
from newsletter.errors import NewsletterError
from newsletter.ledger import growth, privacy
from newsletter.schedule.timing import zone
from newsletter.web.console import charts
from newsletter.web.console.context import Console

WEEKS = 12
PENDING_FOR = 3600.0  # seconds an upload waits for its confirmation
MAX_PENDING = 20  # uploads waiting at once; the oldest goes first
SHOWN = 10  # lines of each kind the dry run shows
COPY_CHUNK = 1 << 20
# The largest file the page takes (over a million rows of a typical export); a larger
# one is refused before it is stored, and `newsletter subscribers import FILE` takes it.
MAX_UPLOAD_BYTES = 256 * 2**20


class _TooLarge(Exception):
    """The request's body went past MAX_UPLOAD_BYTES."""


def _limited(request: Request, limit: int) -> Request:
    """The request, with a body that stops being read past `limit` bytes (_TooLarge):
    for a body sent without a Content-Length (chunked), which the header check misses."""
    seen = 0
    receive = request.receive

    async def counted() -> Any:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return Request(request.scope, counted)


@dataclass(frozen=True)
class Options:
    """The import's options, the same for the dry run and the confirmation."""

    tags: tuple[str, ...] = ()
    mapping: tuple[tuple[str, str], ...] = ()
    encoding: str = "utf-8"


@dataclass
class Upload:
    id: str
    path: Path  # in its own 0700 folder, 0600
    name: str  # the file's name as uploaded (made safe), what the page calls it
    options: Options
    made: float = field(default_factory=time.monotonic)


class Uploads:
    """The files waiting for a confirmation, in a private temporary folder."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._waiting: dict[str, Upload] = {}
        self._lock = threading.Lock()

    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="newsletter-console-import-"))
            os.chmod(self._folder, 0o700)
            # Deleted with everything in it when the console stops.
            weakref.finalize(self, shutil.rmtree, self._folder, True)
        return self._folder

    def keep(self, upload: UploadFile, options: Options) -> Upload:
        """The uploaded file copied into a new 0600 file under a random id."""
        self.expire()
        upload_id = secrets.token_urlsafe(18)
        name = _safe_name(upload.filename or "subscribers.csv")
        folder = self.folder() / upload_id
        folder.mkdir(mode=0o700)
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            upload.file.seek(0)
            shutil.copyfileobj(upload.file, out, COPY_CHUNK)
        kept = Upload(upload_id, path, name, options)
        with self._lock:
            self._waiting[upload_id] = kept
        return kept

    def take(self, upload_id: str) -> Upload | None:
        """The upload with this id, no longer waiting (the caller drops it after)."""
        self.expire()
        with self._lock:
            return self._waiting.pop(upload_id, None)

    def drop(self, upload: Upload) -> None:
        shutil.rmtree(upload.path.parent, ignore_errors=True)

    def expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            ordered = sorted(self._waiting.values(), key=lambda u: u.made)
            old = [u for u in ordered if now - u.made > PENDING_FOR]
            old += [u for u in ordered[: max(len(ordered) - MAX_PENDING + 1, 0)] if u not in old]
            for upload in old:
                self._waiting.pop(upload.id, None)
        for upload in old:
            self.drop(upload)


def routes(console: Console) -> list[BaseRoute]:
    uploads = Uploads()

    def overview() -> dict[str, Any]:
        config = console.config
        today = console.clock().astimezone(zone(config.publication.timezone)).date()
        counts = privacy.status_counts(console.store)
        weeks = growth.weekly(console.store, config.publication.timezone, today, WEEKS)
        labels = [f"{w.start:%b %d}" for w in weeks]
        chart = charts.columns(
            f"Subscribed and unsubscribed per week, the last {WEEKS} weeks",
            labels,
            [
                charts.Series("subscribed", [w.subscribed for w in weeks], charts.OK),
                charts.Series("unsubscribed", [w.unsubscribed for w in weeks], charts.BAD),
            ],
        )
        return {
            "counts": counts,
            "total": sum(counts.values()),
            "weeks": weeks,
            "chart": chart,
            "not_dated": growth.NOT_DATED,
            "preview": None,
            "upload": None,
            "form": {"tags": "", "map": "", "encoding": "utf-8"},
        }

    async def page(request: Request) -> Response:
        return console.render(request, "subscribers.html", await console.run(overview))

    async def dry_run(request: Request) -> Response:
        limit = MAX_UPLOAD_BYTES
        too_large = _back(
            error=f"the file is larger than the console takes ({_size(limit)}):"
            " import it with `newsletter subscribers import FILE`"
        )
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return too_large  # refused before a byte of it is read
        limited = _limited(request, limit)
        try:
            return await read_and_try(limited)
        except _TooLarge:
            return too_large
        finally:
            await limited.close()  # the upload's spooled file, refused (403) or not

    async def read_and_try(request: Request) -> Response:
        form = await console.form(request)
        given = form.get("file")
        fields = {k: str(form.get(k) or "") for k in ("tags", "map", "encoding")}
        if not isinstance(given, UploadFile) or not given.filename:
            return _back(error="choose a file to import")
        try:
            options = _options(fields)
        except NewsletterError as exc:
            return _back(error=str(exc))
        kept = await console.run(uploads.keep, given, options)
        try:
            report = await console.run(_import, console, kept, True)
        except NewsletterError as exc:
            uploads.take(kept.id)
            uploads.drop(kept)
            return _back(error=_named(str(exc), kept))
        context = await console.run(overview)
        context.update(preview=_shown(report, kept), upload=kept, form=fields, options=options)
        return console.render(request, "subscribers.html", context)

    async def confirm(request: Request) -> Response:
        form = await console.form(request)
        kept = uploads.take(str(form.get("upload") or ""))
        if kept is None:
            return _back(error="that import is no longer waiting (done, cancelled or expired):"
                         " upload the file again")  # fmt: skip
        try:
            report = await console.run(_import, console, kept, False)
        except NewsletterError as exc:
            return _back(error=_named(str(exc), kept))
        finally:
            uploads.drop(kept)
        said = (
            f"imported {kept.name}: {report.added:,} added, {report.updated:,} updated,"
            f" {report.kept_suppressed:,} kept suppressed, {report.duplicates.count:,}"
            f" duplicate(s), {report.rejected.count:,} rejected"
        )
        console.log(said)
        if report.rejected.count and not report.imported:
            return _back(error=f"nothing imported from {kept.name}: {said.partition(': ')[2]}")
        return _back(notice=said)

    async def cancel(request: Request) -> Response:
        form = await console.form(request)
        kept = uploads.take(str(form.get("upload") or ""))
        if kept is not None:
            uploads.drop(kept)
        return _back(notice="import cancelled: nothing changed")

    return [
        Route("/subscribers", page),
        Route("/subscribers/import", dry_run, methods=["POST"]),
        Route("/subscribers/import/confirm", confirm, methods=["POST"]),
        Route("/subscribers/import/cancel", cancel, methods=["POST"]),
    ]


def _options(fields: dict[str, str]) -> Options:
    """The form's fields as the CLI's options: --tag (comma or space separated here),
    --map (one FIELD=COLUMN a line), --encoding."""
    tags = []
    for value in fields["tags"].replace(",", " ").split():
        try:
            tags.append(segments.normalize_tag(value))
        except ValueError as exc:
            raise NewsletterError(f"tag {value!r}: {exc}") from None
    lines = [line.strip() for line in fields["map"].splitlines() if line.strip()]
    mapping = subscriber_ops.parse_mapping(lines)
    encoding = fields["encoding"].strip() or "utf-8"
    return Options(tuple(tags), tuple(mapping.items()), encoding)


def _import(console: Console, upload: Upload, dry_run: bool) -> subscriber_ops.ImportReport:
    return subscriber_ops.import_csv(
        console.store,
        upload.path,
        mapping=dict(upload.options.mapping),
        encoding=upload.options.encoding,
        dry_run=dry_run,
        tags=upload.options.tags,
    )


@dataclass(frozen=True)
class Preview:
    """What the dry run says, for the page: the file's own name in every line."""

    source: str
    added: int
    updated: int
    kept_suppressed: int
    duplicates: int
    rejected: int
    statuses: list[tuple[str, int]]
    lines: list[tuple[str, list[str], int]]  # (kind, the first lines, how many in all)


def _shown(report: subscriber_ops.ImportReport, upload: Upload) -> Preview:
    kinds = [
        ("rejected", report.rejected),
        ("duplicate", report.duplicates),
        *((f"would be {s} (the file says)", o) for s, o in sorted(report.statuses.items())),
        *((f"would {k}", o) for k, o in report.examples.items()),
    ]
    return Preview(
        source=_named(report.source, upload),
        added=report.added,
        updated=report.updated,
        kept_suppressed=report.kept_suppressed,
        duplicates=report.duplicates.count,
        rejected=report.rejected.count,
        statuses=[(s, o.count) for s, o in sorted(report.statuses.items())],
        lines=[
            (kind, [_named(line, upload) for line in o.lines[:SHOWN]], o.count)
            for kind, o in kinds
            if o.count
        ],
    )


def _named(text: str, upload: Upload) -> str:
    """A message about the kept file, naming the file as uploaded."""
    return text.replace(str(upload.path), upload.name)


def _safe_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/")).strip()
    safe = "".join(c if c.isalnum() or c in "._- " else "_" for c in base)[:100]
    return safe.lstrip(".") or "subscribers.csv"


def _size(n: int) -> str:
    return f"{n // 2**20:,} MiB" if n >= 2**20 else f"{n // 1024:,} KiB"


def _back(notice: str = "", error: str = "") -> Response:
    query = urlencode({"notice": notice} if notice else {"error": error})
    return RedirectResponse(f"/subscribers?{query}", 303)
