"""SMTP transport: TLS, login, timeouts, connection reuse, rate, reply codes.

One `SmtpConnection` per worker thread, reused across messages. Replies are
classified per recipient: 2xx sent; 4xx, 421 or a dropped connection deferred;
5xx failed. A failed login stops the caller (`SmtpLoginError`): no message is
marked failed because of our own credentials.

Each wait has its own limit, as RFC 5321 section 4.5.3.2 sets them out (the
greeting, MAIL, RCPT, DATA, each write of the content, and the reply to the final
dot). A message whose final dot went out but whose reply never came is `IN_DOUBT`:
the server may have queued it, so it is never sent again in the same run (a relay
that answers late would otherwise get a copy per retry; section 4.5.3.2.6 warns
of exactly that).

Addresses are stored with their domain in ASCII (IDNA A-labels); a local part that
is not ASCII needs SMTPUTF8 (RFC 6531), asked for in MAIL FROM when the server
offers it. Without it that one delivery fails with a reason; the run goes on.
"""

from __future__ import annotations

import os
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from newsletter.addresses import ascii_domain
from newsletter.config import Config, Smtp
from newsletter.errors import NewsletterError

SENT = "sent"
DEFERRED = "deferred"
FAILED = "failed"
# The final dot went out and no reply came (timeout, dropped connection): the server
# may have the message. Never retried in the run; the ledger keeps the row `sending`.
IN_DOUBT = "in doubt"


class SmtpError(NewsletterError):
    """The SMTP server cannot be used at all (connect, TLS, login): stop, mark nobody failed."""


class SmtpLoginError(SmtpError):
    pass


@dataclass(frozen=True)
class SendResult:
    status: str  # SENT, DEFERRED, FAILED or IN_DOUBT
    code: int | None
    text: str
    dropped: bool = False  # the connection is gone; reconnect before the next message
    # An exception of ours (encoding, a slot), not the server's word about the address:
    # many in a row point at the tool or the issue rather than at the list.
    fault: bool = False
    # Which reply refused it: "mail", "rcpt", "data" or "dot" (a 5xx at RCPT is about the
    # address: a hard bounce); "" when nothing refused it.
    stage: str = ""

    @property
    def error(self) -> str:
        return f"{self.code} {self.text}".strip() if self.code else self.text


DEFAULT_SERVER = "smtp"  # the [smtp] section; [smtp.<name>] tables add servers


def servers(config: Config) -> list[tuple[str, Smtp]]:
    """Every configured SMTP server: [smtp] first, then each [smtp.<name>] table."""
    return [(DEFAULT_SERVER, config.smtp), *config.smtp_servers.items()]


def _section(server: str) -> str:
    return server if server == DEFAULT_SERVER else f"smtp.{server}"


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: str
    username: str
    password: str
    timeout: float  # connecting, TLS, EHLO, login, RSET, QUIT
    ca_file: str = ""
    # RFC 5321 section 4.5.3.2: how long to wait for each reply (and each write of
    # the content); these are the section's minimums.
    greeting_timeout: float = 300.0
    mail_timeout: float = 300.0
    rcpt_timeout: float = 300.0
    data_timeout: float = 120.0
    block_timeout: float = 180.0
    dot_timeout: float = 600.0

    @classmethod
    def from_config(cls, config: Config, server: str = DEFAULT_SERVER) -> SmtpSettings:
        """The settings of [smtp], or of the [smtp.<server>] table."""
        smtp: Smtp = config.smtp if server == DEFAULT_SERVER else config.smtp_servers[server]
        where = _section(server)
        password = ""
        if smtp.username:
            if not smtp.password_env:
                raise SmtpError(
                    f"{config.path}: [{where}] password_env: name the environment variable"
                    f" that holds the password for {smtp.username!r}"
                )
            password = os.environ.get(smtp.password_env, "")
            if not password:
                raise SmtpError(
                    f"SMTP password: the environment variable {smtp.password_env} is not set"
                    f" ([{where}] password_env in {config.path})"
                )
        ca_file = str(config.root / smtp.ca_file) if smtp.ca_file else ""
        return cls(
            host=smtp.host,
            port=smtp.port,
            security=smtp.security,
            username=smtp.username,
            password=password,
            timeout=smtp.timeout,
            ca_file=ca_file,
            greeting_timeout=smtp.greeting_timeout,
            mail_timeout=smtp.mail_timeout,
            rcpt_timeout=smtp.rcpt_timeout,
            data_timeout=smtp.data_timeout,
            block_timeout=smtp.block_timeout,
            dot_timeout=smtp.dot_timeout,
        )

    def tls_context(self) -> ssl.SSLContext:
        # Certificate and host name verified; never a silent fallback to plain text.
        return ssl.create_default_context(cafile=self.ca_file or None)


class SmtpSessionRefused(smtplib.SMTPResponseException):
    """A permanent refusal of the session or sender: no recipient is to blame."""


# Replies that say our session is not allowed to send (RFC 4954, RFC 3207), wherever
# they come: stopping is right, marking recipients failed is not.
_SESSION_CODES = frozenset({530, 534, 535, 538})


# The replies that let a message go on: to MAIL, to RCPT, to DATA.
_EXPECTED = ((250,), (250, 251), (354,))

# How far a transaction got when it broke off (see SmtpConnection.send).
_GREETING = "greeting"  # connected, waiting for the 220
_ENVELOPE = "envelope"  # MAIL, RCPT, DATA: nothing of the message went out
_CONTENT = "content"  # writing the message: its final dot has not gone out whole
_DOT = "dot"  # the final dot went out: only the server knows whether it took the message


def _envelope(sender: str, recipient: str) -> bytes:
    """MAIL, RCPT and DATA for one recipient (addresses validated on the way in).

    An address that is not ASCII needs SMTPUTF8 on MAIL FROM (RFC 6531 section 3.4),
    which then covers RCPT too; the caller has checked that the server offers it."""
    if sender.isascii() and recipient.isascii():
        return f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode()
    return f"MAIL FROM:<{sender}> SMTPUTF8\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode()


class _SMTP(smtplib.SMTP):
    # The envelope (sender, recipient) whose MAIL, RCPT and DATA went out after the
    # last message, their replies not read yet (see send_prepared's `then`).
    ahead: tuple[str, str] | None = None
    waits: SmtpSettings  # the timeouts of each wait (set before `open`)
    phase = _ENVELOPE  # how far the current transaction got
    refused_at = ""  # the command whose reply refused the last message (see SendResult.stage)
    _timed: tuple[Any, float] | None = None  # the socket and the timeout it has now

    def open(self, host: str, port: int) -> None:
        """Connect within `timeout` and read the greeting within greeting_timeout.

        smtplib's own connect() waits for the greeting as long as for the connection."""
        self._host = host  # SMTP_SSL checks the certificate against it
        # smtplib's own hook (SMTP_SSL's wraps the socket in TLS); not in typeshed.
        self.sock = self._get_socket(host, port, self.timeout)  # type: ignore[attr-defined]
        self.file = None
        self.phase = _GREETING
        self._wait(self.waits.greeting_timeout)
        code, message = self.getreply()
        if code != 220:
            self.close()
            raise smtplib.SMTPConnectError(code, message)
        self.phase = _ENVELOPE
        self._wait(self.timeout)

    def _wait(self, seconds: float) -> None:
        """The socket's timeout for what comes next (set only when it changes)."""
        sock = self.sock
        if sock is not None and self._timed != (sock, seconds):
            sock.settimeout(seconds)
            self._timed = (sock, seconds)

    def _reply(self, n: int) -> tuple[int, bytes]:
        """The reply to MAIL (n=0), RCPT (1) or DATA (2), each with its own wait."""
        waits = self.waits
        self._wait((waits.mail_timeout, waits.rcpt_timeout, waits.data_timeout)[n])
        return self.getreply()

    def can_send(self, sender: str, recipient: str) -> bool:
        """False when an address needs SMTPUTF8 and the server does not offer it."""
        return (sender.isascii() and recipient.isascii()) or self.has_extn("smtputf8")

    def send_prepared(
        self,
        sender: str,
        recipient: str,
        data: bytes,
        meanwhile: Callable[[], None] | None = None,
        then: tuple[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """MAIL, RCPT, DATA for one recipient with a message that is already CRLF bytes.

        The addresses were validated on the way in, so the commands are written as
        they are (smtplib's mail()/rcpt() parse each address again, ~50 µs); with
        PIPELINING (RFC 2920) the three commands go in one write and their replies
        are read together: one round trip to the server instead of three.
        smtplib's own data() runs two regular expressions over the whole message;
        ours is CRLF already, so dot-stuffing is a single bytes.replace.

        With PIPELINING, `then` (the next message's sender and recipient) has its
        MAIL, RCPT and DATA written right behind this message's final dot, in the
        same write (RFC 2920 lets message content open a group): each message then
        costs one round trip, not two. Their replies are read by the next call,
        which must be for that envelope (or `abandon_ahead`); nothing of the next
        message's content goes out before that call. `meanwhile` runs once the
        message is written, before its reply is read (see SmtpConnection.send).
        """
        self.phase = _ENVELOPE
        if self.ahead is not None:
            if self.ahead != (sender, recipient):
                raise AssertionError("the envelope sent ahead is not this message's")
            self.ahead = None
            replies = [self._reply(0), self._reply(1), self._reply(2)]
        elif self.has_extn("pipelining"):
            self.send(_envelope(sender, recipient))
            replies = [self._reply(0), self._reply(1), self._reply(2)]
        else:
            replies = []
            commands = _envelope(sender, recipient).split(b"\r\n")[:3]
            for n, (command, ok) in enumerate(zip(commands, _EXPECTED, strict=True)):
                self.send(command + b"\r\n")
                replies.append(self._reply(n))
                if replies[-1][0] not in ok:
                    break
        refused = next(
            (reply for reply, ok in zip(replies, _EXPECTED, strict=False) if reply[0] not in ok),
            None,
        )
        self.refused_at = ""
        if refused is not None:
            self.refused_at = ("mail", "rcpt", "data")[replies.index(refused)]
            if len(replies) == 3 and replies[2][0] == 354:
                # A server that opened DATA after refusing the recipient: close it empty.
                self.send(b".\r\n")
                self.getreply()
            self._reset_quietly()
            if refused is replies[0] and refused[0] >= 500 and (sender + recipient).isascii():
                # The sender refused: about us (sender, auth, TLS), not this recipient.
                # (With SMTPUTF8 the refusal may be of that parameter: this address's.)
                raise SmtpSessionRefused(*refused)
            return refused
        if then is not None and not (self.has_extn("pipelining") and self.can_send(*then)):
            then = None
        return self._data(data, meanwhile, then)

    def abandon_ahead(self) -> None:
        """End the transaction of the envelope sent ahead without its message."""
        if self.ahead is None:
            return
        self.ahead = None
        self.phase = _ENVELOPE
        replies = [self._reply(0), self._reply(1), self._reply(2)]
        if replies[2][0] == 354:
            # The server waits for the content, and only a final dot ends DATA, which
            # would deliver an empty message: hang up instead (the message is void).
            self.close()
            return
        self._reset_quietly()

    def _data(
        self,
        data: bytes,
        meanwhile: Callable[[], None] | None,
        then: tuple[str, str] | None = None,
    ) -> tuple[int, bytes]:
        body = data.replace(b"\r\n.", b"\r\n..")
        lead = b"." if body.startswith(b".") else b""
        end = b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"
        # A write that fails part way cannot have delivered the final dot, unless the
        # next envelope followed it in the same write: then the dot may be out.
        self.phase = _CONTENT if then is None else _DOT
        self._wait(self.waits.block_timeout)
        # One copy of the message, in one write with what follows it.
        self.send(b"".join((lead, body, end, _envelope(*then) if then is not None else b"")))
        self.phase = _DOT
        self.ahead = then
        if meanwhile is not None:
            meanwhile()
        self._wait(self.waits.dot_timeout)
        return self.getreply()

    def _reset_quietly(self) -> None:
        self._wait(self.timeout)
        try:
            self.rset()
        except smtplib.SMTPException:
            pass


class _SMTP_SSL(smtplib.SMTP_SSL, _SMTP):
    pass


class SmtpConnection:
    """One reusable connection; reconnects after a drop. Not thread-safe: one per worker."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: _SMTP | None = None
        self.connects = 0

    def _open(self) -> _SMTP:
        s = self.settings
        where = f"SMTP server {s.host}:{s.port}"
        smtp: _SMTP | None = None
        try:
            if s.security == "tls":
                smtp = _SMTP_SSL(timeout=s.timeout, context=s.tls_context())
            else:
                smtp = _SMTP(timeout=s.timeout)
            smtp.waits = s
            smtp.open(s.host, s.port)
            smtp.ehlo()
            if s.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise SmtpError(f"{where} does not offer STARTTLS ([smtp] security)")
                smtp.starttls(context=s.tls_context())
                smtp.ehlo()
            if s.username:
                smtp.login(s.username, s.password)
        except BaseException as exc:
            phase = smtp.phase if smtp is not None else ""
            if smtp is not None:
                smtp.close()
            raise _describe(exc, where, s, phase) from None
        self.connects += 1
        return smtp

    def connect(self) -> None:
        if self._smtp is None:
            self._smtp = self._open()

    def send(
        self,
        sender: str,
        recipient: str,
        data: bytes,
        meanwhile: Callable[[], None] | None = None,
        then: tuple[str, str] | None = None,
    ) -> SendResult:
        """One message to one recipient, and what became of it.

        `meanwhile` (it must not raise) runs after the whole message is written and
        before the server's reply to it is read: work for the next message there
        overlaps with the server's own. It does not run when the server refused
        the recipient before the message went out.

        `then` names the next message's envelope (sender, recipient): when the server
        pipelines, that envelope goes out right behind this message, and the next
        call must be `send` for it, or `abandon_ahead`. Its content goes out only in
        that call. (Senders differ per message with VERP, see [bounces] address.)

        A fault of this one message (an address the server cannot take, an encoding
        error) fails it alone; a fault of the connection defers it, or leaves it in
        doubt when its final dot went out (IN_DOUBT: never send it again blindly).
        """
        try:
            sender, recipient = ascii_domain(sender), ascii_domain(recipient)
        except ValueError as exc:
            return SendResult(FAILED, None, str(exc))
        try:
            then = (ascii_domain(then[0]), ascii_domain(then[1])) if then else None
        except ValueError:
            then = None  # it fails on its own turn
        self.connect()
        smtp = self._smtp
        assert smtp is not None
        if smtp.ahead is None and not smtp.can_send(sender, recipient):
            return SendResult(
                FAILED,
                None,
                f"{recipient}: the address needs SMTPUTF8 (RFC 6531), which"
                f" {self.settings.host}:{self.settings.port} does not offer",
            )
        try:
            code, resp = smtp.send_prepared(sender, recipient, data, meanwhile, then)
        except SmtpSessionRefused as exc:
            code, resp = exc.smtp_code, _as_bytes(exc.smtp_error)
            self._drop()
            raise SmtpError(
                f"SMTP server {self.settings.host}:{self.settings.port} refused to take mail"
                f" from {sender}: {code} {resp.decode(errors='replace')}"
            ) from None
        except smtplib.SMTPResponseException as exc:
            code, resp = exc.smtp_code, _as_bytes(exc.smtp_error)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:  # TimeoutError is an OSError
            return self._broken(smtp.phase, exc)
        except AssertionError:
            raise  # a fault of the caller, not of this message
        except Exception as exc:  # noqa: BLE001 - any other fault is this message's own
            if smtp.phase == _DOT:
                return self._broken(_DOT, exc)
            self._drop()
            return SendResult(FAILED, None, f"cannot send this message: {exc}", True, fault=True)
        text = resp.decode("utf-8", errors="replace") if isinstance(resp, bytes) else str(resp)
        text = " ".join(text.split())
        if 200 <= code < 300:
            return SendResult(SENT, code, text)
        if code in _SESSION_CODES:
            self._drop()
            raise SmtpError(
                f"SMTP server {self.settings.host}:{self.settings.port} refused the session:"
                f" {code} {text}"
            )
        if code == -1 and smtp.phase == _DOT:
            return self._broken(_DOT, ValueError(f"an unreadable reply: {text}"))
        if code == 421 or code == -1:
            self._drop()
            return SendResult(DEFERRED, code, text, dropped=True)
        stage = smtp.refused_at or "dot"
        if 400 <= code < 500:
            return SendResult(DEFERRED, code, text, stage=stage)
        return SendResult(FAILED, code, text, stage=stage)

    def _broken(self, phase: str, exc: Exception) -> SendResult:
        """The connection failed mid-transaction: deferred, or in doubt after the dot."""
        self._drop()
        timed_out = isinstance(exc, TimeoutError) or "timed out" in str(exc)
        if phase == _DOT:
            what = (
                f"no reply to the final dot within {self.settings.dot_timeout:g} s"
                if timed_out
                else f"the connection broke after the final dot ({exc})"
            )
            # RFC 5321 section 4.5.3.2.6: the server may have taken it; sending it
            # again would be a duplicate.
            return SendResult(IN_DOUBT, None, f"{what}: the server may have the message", True)
        if timed_out:
            return SendResult(DEFERRED, None, "timed out waiting for the server", dropped=True)
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return SendResult(DEFERRED, None, f"connection dropped: {exc}", dropped=True)
        return SendResult(DEFERRED, None, f"connection error: {exc}", dropped=True)

    def abandon_ahead(self) -> None:
        """The envelope sent ahead (`send`'s `then`) gets no message after all."""
        if self._smtp is None or self._smtp.ahead is None:
            return
        try:
            self._smtp.abandon_ahead()
        except (smtplib.SMTPException, OSError):
            self._drop()
            return
        if self._smtp.sock is None:  # it hung up (see _SMTP.abandon_ahead)
            self._drop()

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                pass

    def close(self) -> None:
        if self._smtp is not None and self._smtp.ahead is not None:
            self._drop()  # mid-DATA, a QUIT would be message content: hang up
            return
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp._wait(smtp.timeout)  # not the last wait's (up to dot_timeout)
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()


def _as_bytes(reply: bytes | str) -> bytes:
    """smtplib's exceptions carry the reply as bytes, or as str when it made it up."""
    return reply if isinstance(reply, bytes) else reply.encode()


def _describe(exc: BaseException, where: str, s: SmtpSettings, phase: str = "") -> BaseException:
    """The one-line error for a connection that could not be set up."""
    if isinstance(exc, SmtpError) or not isinstance(exc, Exception):
        return exc
    timed_out = isinstance(exc, TimeoutError) or "timed out" in str(exc)
    if phase == _GREETING and timed_out:
        return SmtpError(f"{where}: no greeting within {s.greeting_timeout:g} s (timed out)")
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        reply = _as_bytes(exc.smtp_error).decode(errors="replace")
        return SmtpLoginError(f"{where}: login as {s.username!r} refused: {exc.smtp_code} {reply}")
    if isinstance(exc, ssl.SSLError):
        return SmtpError(f"{where}: TLS failed: {exc.reason or exc}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return SmtpError(f"{where}: {exc}")
    if isinstance(exc, smtplib.SMTPConnectError):
        return SmtpError(f"{where}: refused the connection: {exc.smtp_code}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        if "timed out" in str(exc):  # smtplib reports a read timeout this way
            return SmtpError(f"{where}: timed out after {s.timeout:g} s")
        return SmtpError(f"{where}: closed the connection: {exc}")
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = _as_bytes(exc.smtp_error).decode(errors="replace")
        return SmtpError(f"{where}: {exc.smtp_code} {reply}")
    if isinstance(exc, TimeoutError):
        return SmtpError(f"{where}: timed out after {s.timeout:g} s")
    if isinstance(exc, OSError):
        return SmtpError(f"{where}: cannot connect: {exc.strerror or exc}")
    return exc
