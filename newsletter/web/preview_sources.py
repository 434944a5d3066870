"""What the preview shows and how it learns of changes: an issue (rendered as `build`
renders it) or an outbox of captured .eml files, and the watcher that re-renders on
every save of a file they depend on."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.policy
import itertools
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from pathlib import Path
from typing import Protocol

import watchfiles

from newsletter import config as config_mod
from newsletter.errors import NewsletterError
from newsletter.issue import fields, publish, tracked_links
from newsletter.issue.check import Finding
from newsletter.ledger.store import Store
from newsletter.ledger.tables import ACTIVE
from newsletter.mail.eml import Rendering, read_message, short_date

ISSUE_KEY = "issue"
# A save is re-rendered once the files have been quiet for STEP_MS, at most DEBOUNCE_MS after
# the first change: an editor's burst of writes becomes one render, well under a second.
DEBOUNCE_MS = 300
STEP_MS = 30
# The watcher wakes this often even when nothing changed; its first wake-up says it is watching.
WAKE_MS = 200
READY_TIMEOUT_S = 10.0
OUTBOX_LIMIT = 200

Log = Callable[[str], None]


def quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class Snapshot:
    """What a source shows now: the last good rendering, and the error if the latest failed."""

    rendering: Rendering | None = None
    error: str | None = None
    rendered_at: dt.datetime | None = None
    seconds: float = 0.0
    # An issue's merge fields as `reader` gets them: (field as written, its value).
    fields: tuple[tuple[str, str], ...] = ()
    reader: str = ""  # whose values: the sample's address, or the subscriber picked
    reader_error: str = ""  # the subscriber picked is not in the list: the sample shows


@dataclass(frozen=True)
class WatchTargets:
    """Folders to watch (each on its own, not recursively) and which changes in them count."""

    folders: frozenset[str]
    files: frozenset[str] = frozenset()  # these files count
    trees: frozenset[str] = frozenset()  # any file in these folders counts

    def accepts(self, change: watchfiles.Change, path: str) -> bool:
        if path in self.files:
            return True
        return os.path.dirname(path) in self.trees and _DEFAULT_FILTER(change, path)


_DEFAULT_FILTER = watchfiles.DefaultFilter()


class Source(Protocol):
    mode: str
    label: str

    def refresh(self) -> bool:
        """Re-read what changed; True if the page needs to update."""
        ...

    def watch_targets(self) -> WatchTargets: ...

    def keys(self) -> list[str]: ...

    def snapshot(self, key: str | None) -> Snapshot: ...


class IssueSource:
    """One issue file, rendered as `build` renders it, with the config re-read on every save."""

    mode = "issue"

    def __init__(self, config_path: Path, issue_path: Path, log: Log = quiet) -> None:
        self.config_path = config_path.resolve()
        self.issue_path = issue_path.resolve()
        try:  # issues/<name>.md reads better than a long absolute path
            self.label = str(self.issue_path.relative_to(self.config_path.parent))
        except ValueError:
            self.label = str(issue_path)
        self._log = log
        self._templates_dir: Path | None = None
        with contextlib.suppress(NewsletterError):  # else the first refresh reports it
            self._templates_dir = config_mod.load(self.config_path).templates_dir.resolve()
        self._snapshot = Snapshot()
        self._built: tuple[config_mod.Config, publish.BuiltIssue, tuple[Finding, ...]] | None
        self._built = None
        self._for_reader: tuple[str, Snapshot, Snapshot] | None = None  # the last one made

    def refresh(self) -> bool:
        start = time.perf_counter()
        try:
            cfg = config_mod.load(self.config_path)
            self._templates_dir = cfg.templates_dir.resolve()
            built = publish.build_issue(cfg, publish.load_issue(self.issue_path))
            filled = publish.sample(cfg, built)
            findings = tuple(publish.check_built(cfg, built, filled))
            rendering = _rendering(filled, findings)
            reader = publish.Reader.from_config(cfg)
        except NewsletterError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not take the preview down: show it, log it
            error = f"unexpected error: {type(exc).__name__}: {exc}"
            self._log(traceback.format_exc().rstrip())
        else:
            seconds = time.perf_counter() - start
            self._built = (cfg, built, findings)
            self._snapshot = Snapshot(
                rendering,
                None,
                dt.datetime.now(),
                seconds,
                fields=_field_values(built, reader),
                reader=reader.email,
            )
            summary = f"{rendering.errors} error(s), {rendering.warnings} warning(s)"
            self._log(f"rendered {self.label} in {seconds * 1000:.0f} ms: {summary}")
            return True
        previous = self._snapshot
        self._snapshot = Snapshot(previous.rendering, error, dt.datetime.now(), 0.0)
        self._log(f"error: {error}")
        return True

    def watch_targets(self) -> WatchTargets:
        files = {str(self.issue_path), str(self.config_path)}
        folders = {str(self.issue_path.parent), str(self.config_path.parent)}
        trees: set[str] = set()
        if self._templates_dir is not None and self._templates_dir.is_dir():
            for folder, subfolders, _ in os.walk(self._templates_dir):
                subfolders[:] = [d for d in subfolders if not d.startswith(".")]
                trees.add(folder)
        return WatchTargets(frozenset(folders | trees), frozenset(files), frozenset(trees))

    def keys(self) -> list[str]:
        return [ISSUE_KEY]

    def snapshot(self, key: str | None) -> Snapshot:
        if key != ISSUE_KEY:
            return Snapshot(error=f"no such message: {key}")
        return self._snapshot

    def for_subscriber(self, address: str) -> Snapshot:
        """The issue as the subscriber at `address` gets it, with their stored attributes;
        the sample's, with `reader_error` saying why, when the list has no such address."""
        base, built = self._snapshot, self._built
        if built is None or base.rendering is None or base.error is not None:
            return base
        cached = self._for_reader
        if cached is not None and cached[0] == address and cached[1] is base:
            return cached[2]
        cfg, issue, findings = built
        store = Store.existing(cfg.database_url)
        if store is None:
            return dataclasses.replace(
                base, reader_error=f"{address}: there is no subscriber list yet"
            )
        try:
            row = store.subscriber(address)
        finally:
            store.close()
        if row is None:
            return dataclasses.replace(base, reader_error=f"{address}: not in the subscriber list")
        reader = publish.Reader(row["email"], row["name"], row["attributes"])
        filled = publish.sample(cfg, issue, reader=reader)
        made = dataclasses.replace(
            base,
            rendering=_rendering(filled, findings),
            fields=_field_values(issue, reader),
            reader=reader.email,
        )
        self._for_reader = (address, base, made)
        return made

    def addresses(self, limit: int = 200) -> list[str]:
        """Some subscribers' addresses, for the page's picker (none without a list)."""
        built = self._built
        store = Store.existing(built[0].database_url) if built is not None else None
        if store is None:
            return []
        try:
            rows = store.iter_subscribers(ACTIVE, batch=limit)
            return [row.email for row in itertools.islice(rows, limit)]
        finally:
            store.close()


def _rendering(filled: publish.Sample, findings: tuple[Finding, ...]) -> Rendering:
    return dataclasses.replace(
        read_message(
            filled.message,
            # Tracked links show where they lead on hover.
            html=tracked_links.with_titles(filled.html, filled.destinations),
            text=filled.text,
        ),
        findings=findings,
    )


def _field_values(
    built: publish.BuiltIssue, reader: publish.Reader
) -> tuple[tuple[str, str], ...]:
    subscriber = fields.Subscriber(reader.email, reader.name, reader.attributes)
    return tuple((f.text, f.value(subscriber)) for f in built.fields)


@dataclass(frozen=True)
class OutboxEntry:
    name: str
    subject: str
    to: str
    date: str
    mtime: float


def _stamps(seen: dict[str, tuple[tuple[int, int], OutboxEntry]]) -> dict[str, tuple[int, int]]:
    return {name: stamp for name, (stamp, _) in seen.items()}


class OutboxSource:
    """A folder of captured .eml files (what `newsletter smtpd` received), newest first."""

    mode = "outbox"

    def __init__(self, folder: Path, log: Log = quiet) -> None:
        self.folder = folder.resolve()
        self.label = str(folder)
        self._log = log
        self._entries: list[OutboxEntry] = []
        self._seen: dict[str, tuple[tuple[int, int], OutboxEntry]] = {}
        self._rendered: dict[str, tuple[tuple[int, int], Snapshot]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        entries: list[OutboxEntry] = []
        seen: dict[str, tuple[tuple[int, int], OutboxEntry]] = {}
        for path in self._files():
            try:
                stat = path.stat()
            except OSError:
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            cached = self._seen.get(path.name)
            entry = (
                cached[1] if cached and cached[0] == stamp else self._entry(path, stat.st_mtime)
            )
            seen[path.name] = (stamp, entry)
            entries.append(entry)
        entries.sort(key=lambda e: (-e.mtime, e.name))
        entries = entries[:OUTBOX_LIMIT]
        changed = _stamps(seen) != _stamps(self._seen)
        self._entries, self._seen = entries, seen
        with self._lock:  # forget renderings of messages that are gone
            self._rendered = {k: v for k, v in self._rendered.items() if k in seen}
        return changed

    def _files(self) -> list[Path]:
        try:
            names = os.listdir(self.folder)
        except OSError as exc:
            self._log(f"{self.folder}: cannot list: {exc.strerror}")
            return []
        paths = [self.folder / n for n in names if n.endswith(".eml") and not n.startswith(".")]
        # A symlink to a file elsewhere is not part of the outbox.
        return [p for p in paths if p.resolve().parent == self.folder]

    def _entry(self, path: Path, mtime: float) -> OutboxEntry:
        try:
            with path.open("rb") as fh:
                msg = BytesParser(policy=email.policy.default).parse(fh, headersonly=True)
            subject, to = str(msg.get("Subject", "")), str(msg.get("To", ""))
            date = short_date(str(msg.get("Date", "")))
        except Exception as exc:  # a half-written or odd file is listed, not fatal
            subject, to, date = f"(cannot read: {exc})", "", ""
        return OutboxEntry(name=path.name, subject=subject, to=to, date=date, mtime=mtime)

    def entries(self) -> list[OutboxEntry]:
        return self._entries

    def watch_targets(self) -> WatchTargets:
        folder = str(self.folder)
        return WatchTargets(frozenset({folder}), trees=frozenset({folder}))

    def keys(self) -> list[str]:
        return [e.name for e in self._entries]

    def path(self, key: str) -> Path | None:
        """The file behind a listed name; None for anything else, whatever it looks like."""
        if key not in self.keys():
            return None
        path = self.folder / key
        # A listed name may still be a symlink to a file elsewhere: refuse to follow it out.
        if path.resolve().parent != self.folder or not path.is_file():
            return None
        return path

    def snapshot(self, key: str | None) -> Snapshot:
        if key is None:
            return Snapshot()
        path = self.path(key)
        if path is None:
            return Snapshot(error=f"no such message in {self.label}: {key}")
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            with self._lock:
                cached = self._rendered.get(key)
            if cached and cached[0] == stamp:
                return cached[1]
            start = time.perf_counter()
            rendering = read_message(path.read_bytes())
            snap = Snapshot(rendering, None, dt.datetime.now(), time.perf_counter() - start)
        except Exception as exc:  # show a broken capture on the page, keep serving
            return Snapshot(error=f"{path}: cannot read: {exc}")
        with self._lock:
            self._rendered[key] = (stamp, snap)
        return snap


class Watcher:
    """Refreshes a source in its own thread whenever one of its files changes.

    `ready` is set once the folders are watched and the first render is done, so
    nothing saved after the server has started can be missed.
    """

    def __init__(self, source: Source, on_change: Callable[[], None], log: Log = quiet) -> None:
        self._source = source
        self._on_change = on_change
        self._log = log
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="newsletter-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failure = ""
        while not self._stop.is_set():
            targets = self._source.watch_targets()
            first = True
            try:
                for changes in watchfiles.watch(
                    *sorted(targets.folders),
                    watch_filter=targets.accepts,
                    recursive=False,
                    debounce=DEBOUNCE_MS,
                    step=STEP_MS,
                    rust_timeout=WAKE_MS,
                    yield_on_timeout=True,
                    stop_event=self._stop,
                    raise_interrupt=False,
                ):
                    # The first wake-up means the folders are watched: render now, so that a
                    # save made while the watch was being set up is not lost.
                    if not (first or changes):
                        continue
                    first = False
                    if self._source.refresh():
                        self._on_change()
                    self.ready.set()
                    if self._source.watch_targets() != targets:
                        break  # e.g. [paths] templates now names another folder
            except (OSError, RuntimeError) as exc:  # a watched folder went away: retry shortly
                if str(exc) != failure:
                    failure = str(exc)
                    self._log(f"cannot watch the files ({exc}); retrying")
                if not self.ready.is_set():  # serve what there is all the same
                    if self._source.refresh():
                        self._on_change()
                    self.ready.set()
                self._stop.wait(0.5)
