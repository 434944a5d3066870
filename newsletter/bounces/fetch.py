"""`newsletter bounces fetch`: every message in the [bounces] IMAP mailbox, ingested,
then moved to imap_done_folder.

Safe from cron at any interval, and twice at once:
- a message is moved only after its reports are recorded, so a run that stops halfway
  leaves the rest where it was, and the next run finds each recorded report "seen
  before" (its event_key) and moves it;
- two runs that read the same message record it once (event_key again); the second
  finds it gone when it fetches or moves it, which the server answers with nothing or
  a no-op (RFC 3501 section 6.4.8: a UID that no longer exists is ignored) or with NO
  [EXPUNGEISSUED], after which it tries again on those still there. Two runs that move
  one message at the same instant may each leave a copy in imap_done_folder (Dovecot's
  Maildir lets both succeed); the ledger still counts it once.

TLS is verified against the system's CAs (SSL_CERT_FILE names another bundle): the
password goes over it. imap_security none is for a server on the same machine.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError, IMAPClientError, LoginError

from newsletter.bounces.classify import NotMail
from newsletter.bounces.ingest import Summary, ingest
from newsletter.config import Bounces, Config
from newsletter.errors import ConfigError, NewsletterError
from newsletter.ledger.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds for connecting and for each reply: a mailbox server answers in well under one;
# a minute leaves room for a slow link and a large message, and a cron run still ends.
IMAP_TIMEOUT = 60.0
# Messages fetched per FETCH: memory stays flat whatever the mailbox holds, and a run
# that stops loses at most this much work (which the next run finds "seen before").
BATCH = 50


class MailboxError(NewsletterError):
    """The [bounces] mailbox cannot be reached, logged in to or read."""


def fetch(store: Store, config: Config, secret: bytes, now: dt.datetime | None = None) -> Summary:
    """Ingest every message in imap_folder and move it to imap_done_folder."""
    settings = config.bounces
    password = _password(config)
    summary = Summary()
    with _session(settings, password) as client:
        _select(client, settings)
        _ensure_done_folder(client, settings)
        with _failing("imap_host", f"reading {settings.imap_folder!r} failed"):
            uids = sorted(client.search(["UNDELETED"]))
            for start in range(0, len(uids), BATCH):
                batch = uids[start : start + BATCH]
                handled = _ingest_batch(client, store, settings, secret, batch, summary, now)
                _move(client, handled, settings.imap_done_folder)
    return summary


def _ingest_batch(
    client: IMAPClient,
    store: Store,
    settings: Bounces,
    secret: bytes,
    batch: list[int],
    summary: Summary,
    now: dt.datetime | None,
) -> list[int]:
    """Ingest the messages of `batch` still there; their UIDs."""
    handled = []
    fetched: dict[int, dict[bytes, Any]] = (
        _present(client, batch, lambda uids: client.fetch(uids, ["BODY.PEEK[]"])) or {}
    )
    for uid in batch:
        raw = fetched.get(uid, {}).get(b"BODY[]")
        if raw is None:  # moved by another run since the search
            continue
        where = f"[bounces] {settings.imap_folder} message UID {uid}"
        try:
            summary.add(ingest(store, settings, secret, raw, where, now))
        except NotMail as exc:
            # Moved away too: left here, every run would read it again.
            log.warning("%s; moved to %s", exc, settings.imap_done_folder)
            summary.add_not_mail()
        handled.append(uid)
    return handled


def _password(config: Config) -> str:
    settings = config.bounces
    if not settings.imap_host:
        raise ConfigError(
            f"{config.path}: [bounces] imap_host: not set (the IMAP server of the mailbox"
            " the bounces reach)"
        )
    if not settings.imap_username:
        raise ConfigError(f"{config.path}: [bounces] imap_username: not set")
    password = os.environ.get(settings.imap_password_env, "")
    if not password:
        raise ConfigError(
            f"{config.path}: [bounces] imap_password_env: the environment variable"
            f" {settings.imap_password_env} is not set"
        )
    return password


def _where(settings: Bounces) -> str:
    return f"{settings.imap_host}:{settings.imap_port}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    message = str(exc)
    if message[:2] in ("b'", 'b"'):  # imapclient's LoginError holds the reply's repr
        message = message[2:-1]
    return " ".join(message.split()) or type(exc).__name__


@contextmanager
def _failing(key: str, what: str) -> Iterator[None]:
    """A fault of the server or the connection as one line naming the key to look at."""
    try:
        yield
    except (IMAPClientError, OSError) as exc:
        raise MailboxError(f"[bounces] {key}: {what} ({_reason(exc)})") from None


@contextmanager
def _session(settings: Bounces, password: str) -> Iterator[IMAPClient]:
    """A logged-in connection over TLS (imap_security tls), STARTTLS (RFC 3501 section
    6.2.1) or, with none, plain text; logged out at the end."""
    where = _where(settings)
    context = ssl.create_default_context()
    tls_failed = f"TLS with {where} ({settings.imap_security}) failed"
    try:
        client = IMAPClient(
            settings.imap_host,
            settings.imap_port,
            ssl=settings.imap_security == "tls",
            ssl_context=context,
            timeout=IMAP_TIMEOUT,
        )
    except ssl.SSLError as exc:
        raise MailboxError(f"[bounces] imap_security: {tls_failed} ({_reason(exc)})") from None
    except (IMAPClientError, OSError) as exc:
        raise MailboxError(f"[bounces] imap_host: cannot reach {where} ({_reason(exc)})") from None
    try:
        if settings.imap_security == "starttls":
            _starttls(client, settings, context, tls_failed)
        try:
            client.login(settings.imap_username, password)
        except LoginError as exc:
            raise MailboxError(
                f"[bounces] imap_username, imap_password_env: {where} refused the login of"
                f" {settings.imap_username!r} ({_reason(exc)})"
            ) from None
        yield client
    finally:
        try:
            client.logout()
        except (IMAPClientError, OSError):
            pass  # already gone: there is nothing left to close


def _starttls(
    client: IMAPClient, settings: Bounces, context: ssl.SSLContext, tls_failed: str
) -> None:
    try:
        client.starttls(context)
    except CapabilityError:
        raise MailboxError(
            f"[bounces] imap_security: {_where(settings)} does not offer STARTTLS"
            " (tls for an IMAPS port, usually 993)"
        ) from None
    except (IMAPClientError, OSError) as exc:
        raise MailboxError(f"[bounces] imap_security: {tls_failed} ({_reason(exc)})") from None


def _select(client: IMAPClient, settings: Bounces) -> None:
    folder = settings.imap_folder
    with _failing("imap_folder", f"cannot open {folder!r} at {_where(settings)}"):
        client.select_folder(folder)


def _ensure_done_folder(client: IMAPClient, settings: Bounces) -> None:
    folder = settings.imap_done_folder
    what = f"cannot create {folder!r} at {_where(settings)}"
    with _failing("imap_done_folder", what):
        if client.folder_exists(folder):
            return
        try:
            client.create_folder(folder)
        except IMAPClientError:
            if not client.folder_exists(folder):  # else another run made it just now
                raise


def _present(client: IMAPClient, uids: list[int], command: Callable[[list[int]], T]) -> T | None:
    """`command(uids)`; when another session expunged some of them meanwhile, the server
    may refuse the whole command with NO [EXPUNGEISSUED] (RFC 5530 section 3; Dovecot
    does): then again on those still there, which a NOOP brings up to date (RFC 3501
    section 6.1.2). None when none is left."""
    for _ in range(3):
        if not uids:
            return None
        try:
            return command(uids)
        except IMAPClientError as exc:
            # imapclient gives the response only as text: "move failed: [CODE] ...".
            code = re.search(r"\[([A-Z-]+)", str(exc))
            if not code or code[1] != "EXPUNGEISSUED":
                raise
        client.noop()
        uids = sorted(client.search(["UID", ",".join(map(str, uids))]))
    return command(uids) if uids else None


def _move(client: IMAPClient, uids: list[int], folder: str) -> None:
    _present(client, uids, lambda present: _move_present(client, present, folder))


def _move_present(client: IMAPClient, uids: list[int], folder: str) -> None:
    """UID MOVE (RFC 6851) where the server has it; else COPY, \\Deleted and EXPUNGE,
    of these UIDs alone where UIDPLUS allows (RFC 4315 section 2.1). COPY is all or
    nothing (RFC 3501 section 6.4.7), so a refused one is simply tried again."""
    if client.has_capability("MOVE"):
        client.move(uids, folder)
        return
    client.copy(uids, folder)
    client.delete_messages(uids)
    if client.has_capability("UIDPLUS"):
        client.uid_expunge(uids)
    else:
        client.expunge()
