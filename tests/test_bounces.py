"""Bounces, complaints and auto-replies that come back: classified, recorded once,
suppressing addresses by the rules.

The samples in bounce_samples/ are shaped after what real mail systems send (Postfix,
Gmail, Outlook, Exim, Exchange, Sendmail, an ARF feedback loop, a vacation reply); their
VERP addresses are signed with the tests' secret for campaign 1 and subscribers 1-9 of
SUBSCRIBERS. The ledger is a real database (SQLite, and PostgreSQL where it runs), the
CLI runs in-process and as a subprocess, and `bounces fetch` reads a real Dovecot.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import tls_fixtures
from campaign_support import SECRET, Publication, make_publication
from click.testing import CliRunner, Result
from imapclient import IMAPClient
from services import DOVECOT
from smtp_fixtures import free_port

from newsletter.bounces import classify as classify_mod
from newsletter.bounces import fetch as fetch_mod
from newsletter.bounces.classify import NotMail, classify
from newsletter.bounces.fetch import fetch
from newsletter.bounces.ingest import Summary, ingest
from newsletter.cli import cli
from newsletter.issue import publish
from newsletter.ledger import lifecycle
from newsletter.ledger.store import SubscriberRow
from newsletter.ledger.tables import bounces as bounces_table
from newsletter.tokens import verp_address

SAMPLES = Path(__file__).parent / "bounce_samples"
KEY = SECRET.encode()
BOUNCES = "bounces@news.helloshuttle.com"
# In this order, so that their ids are 1, 2, ...: the samples' VERP tokens name them.
SUBSCRIBERS = [
    "ann.lee@example.com",
    "bob@example.org",
    "carol@example.net",
    "dave@example.com",
    "erin@example.com",
    "frank@example.org",
    "grace@example.com",
    "heidi@example.com",
    "ivan@example.com",
    "judy@example.com",
]
T0 = dt.datetime(2024, 11, 25, 16, 0, tzinfo=dt.UTC)

self_signed = tls_fixtures.self_signed


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def edited(name: str, *changes: tuple[str, str]) -> bytes:
    """The sample with each `old` replaced by `new`; fails when `old` is not in it."""
    raw = sample(name).decode()
    for old, new in changes:
        assert old in raw, (name, old)
        raw = raw.replace(old, new)
    return raw.encode()


# --- classifying one message -----------------------------------------------------------

# file: (kind, address, status code, source, subscriber named by its VERP address or None)
EXPECTED = {
    "postfix_dsn.eml": ("hard", "ann.lee@example.com", "5.1.1", "dsn", 1),
    "postfix_delayed.eml": ("soft", "bob@example.org", "4.2.2", "dsn", None),
    "gmail_dsn.eml": ("hard", "carol@example.net", "5.1.1", "dsn", 3),
    "outlook_dsn.eml": ("hard", "dave@example.com", "5.1.10", "dsn", 4),
    "arf_abuse.eml": ("complaint", "erin@example.com", "", "arf", 5),
    "exim_text.eml": ("hard", "frank@example.org", "5.1.1", "text", None),
    "exchange_text.eml": ("hard", "grace@example.com", "5.1.1", "text", 7),
    "postfix_text.eml": ("hard", "heidi@example.com", "5.1.1", "text", 8),
    "gmail_text.eml": ("hard", "judy@example.com", "5.1.1", "text", None),
}


def test_every_sample_is_in_the_table() -> None:
    names = {p.name for p in SAMPLES.glob("*.eml")}
    assert names == {*EXPECTED, "out_of_office.eml", "sendmail_dsn_three_recipients.eml"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_sample_makes_one_report(name: str) -> None:
    kind, address, code, source, subscriber = EXPECTED[name]
    (bounce,) = classify(sample(name), KEY).bounces
    assert (bounce.kind, bounce.email, bounce.status_code, bounce.source) == (
        kind,
        address,
        code,
        source,
    )
    assert bounce.subscriber_id == subscriber
    assert bounce.campaign_id == (1 if subscriber else None)
    assert bounce.event_key.startswith(f"{source}:") and bounce.event_key.endswith(address)


def test_the_diagnostic_is_what_the_server_said() -> None:
    (dsn,) = classify(sample("outlook_dsn.eml"), KEY).bounces
    assert dsn.diagnostic == (
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    )
    (text,) = classify(sample("exim_text.eml"), KEY).bounces
    assert text.diagnostic.startswith("550 5.1.1 <frank@example.org>: Recipient address")


def test_a_dsn_reports_each_recipient_that_failed_or_waits() -> None:
    found = classify(sample("sendmail_dsn_three_recipients.eml"), KEY).bounces
    # kim failed (5.2.2 is permanent by its class), leo is delayed, mallory was relayed.
    assert [(b.email, b.kind, b.status_code) for b in found] == [
        ("kim@example.edu", "hard", "5.2.2"),
        ("leo@example.edu", "soft", "4.4.7"),
    ]
    # No Message-ID: the key is a hash of the body, one report per recipient.
    assert len({b.event_key for b in found}) == 2
    assert all(b.event_key.startswith("dsn:sha256:") for b in found)


def test_failed_with_a_4xx_status_is_soft() -> None:
    raw = edited("postfix_dsn.eml", ("Status: 5.1.1", "Status: 4.4.1"))
    (bounce,) = classify(raw, KEY).bounces
    assert (bounce.kind, bounce.status_code) == ("soft", "4.4.1")


def test_a_text_bounce_is_soft_when_it_shows_a_4xx_code() -> None:
    raw = edited("exim_text.eml", ("550 5.1.1 <frank", "452 4.2.2 <frank"))
    (bounce,) = classify(raw, KEY).bounces
    assert (bounce.kind, bounce.status_code) == ("soft", "4.2.2")


def test_gmails_text_bounce_is_read_without_its_failed_recipients_header() -> None:
    raw = edited("gmail_text.eml", ("X-Failed-Recipients: judy@example.com\n", ""))
    (bounce,) = classify(raw, KEY).bounces
    assert (bounce.kind, bounce.email, bounce.status_code) == ("hard", "judy@example.com", "5.1.1")


def test_a_delivery_report_without_a_failure_is_ignored() -> None:
    raw = edited(
        "sendmail_dsn_three_recipients.eml",
        ("Action: failed", "Action: delivered"),
        ("Action: delayed", "Action: expanded"),
    )
    result = classify(raw, KEY)
    assert (result.bounces, result.ignored) == ((), "a delivery report with no failure")


AUTO_FIELDS = "Auto-Submitted: auto-replied\nX-Autoreply: yes\nPrecedence: bulk\n"


@pytest.mark.parametrize(
    "fields",
    [
        AUTO_FIELDS,
        "Precedence: bulk\n",  # with "Out of office" in the subject
        "X-Autoreply: yes\n",
        "Precedence: auto_reply\n",
        "Auto-Submitted: auto-generated\n",
    ],
    ids=["all", "precedence-bulk", "x-autoreply", "precedence-auto-reply", "auto-generated"],
)
def test_an_automatic_reply_is_ignored(fields: str) -> None:
    result = classify(edited("out_of_office.eml", (AUTO_FIELDS, fields)), KEY)
    assert result.bounces == ()
    assert result.ignored.startswith("an automatic reply")
    assert result.sender == "ivan@example.com"


def test_a_reply_from_a_person_is_not_a_bounce() -> None:
    raw = edited(
        "out_of_office.eml",
        (AUTO_FIELDS, ""),
        ("Subject: Out of office:", "Subject: Re:"),
    )
    assert classify(raw, KEY).ignored == "not a bounce"


def test_feedback_that_is_not_a_complaint_is_ignored() -> None:
    raw = edited("arf_abuse.eml", ("Feedback-Type: abuse", "Feedback-Type: not-spam"))
    result = classify(raw, KEY)
    assert (result.bounces, result.ignored) == ((), "feedback of type not-spam, not a complaint")


REDACTED = (
    ("Original-Rcpt-To: <erin@example.com>\n", ""),
    ("To: Erin <erin@example.com>", "To: undisclosed-recipients:;"),
)


def test_a_redacted_complaint_is_attributed_by_its_verp_address() -> None:
    (bounce,) = classify(edited("arf_abuse.eml", *REDACTED), KEY).bounces
    assert (bounce.kind, bounce.email, bounce.campaign_id, bounce.subscriber_id) == (
        "complaint",
        "",
        1,
        5,
    )


def test_a_redacted_complaint_without_verp_is_ignored() -> None:
    verp = verp_address(BOUNCES, KEY, 1, 5)
    raw = edited("arf_abuse.eml", *REDACTED, (verp, BOUNCES))
    assert classify(raw, KEY).ignored == "a complaint that names no recipient"


def altered(token_address: str) -> str:
    """The VERP address with the last hex digit of its signature changed."""
    local, _, domain = token_address.partition("@")
    return f"{local[:-1]}{'0' if local[-1] != '0' else '1'}@{domain}"


@pytest.mark.parametrize(
    "forged",
    [
        altered(verp_address(BOUNCES, KEY, 1, 1)),
        verp_address(BOUNCES, b"another publication's secret", 1, 1),
        # subscriber 2 with the signature made for subscriber 1
        verp_address(BOUNCES, KEY, 1, 1).replace("-s1-", "-s2-"),
    ],
    ids=["altered-signature", "other-secret", "other-subscriber"],
)
def test_a_forged_verp_address_is_not_believed(forged: str) -> None:
    raw = sample("postfix_dsn.eml").replace(
        verp_address(BOUNCES, KEY, 1, 1).encode(), forged.encode()
    )
    (bounce,) = classify(raw, KEY).bounces
    assert (bounce.campaign_id, bounce.subscriber_id) == (None, None)
    assert bounce.email == "ann.lee@example.com"  # matched by address only


def test_the_same_report_read_twice_has_the_same_key() -> None:
    for name in ("postfix_dsn.eml", "sendmail_dsn_three_recipients.eml"):
        raw = sample(name)
        # Read from the mailbox, the same report carries another delivery's trace fields.
        again = b"Received: from mx.helloshuttle.com by imap.helloshuttle.com\n" + raw
        keys = [b.event_key for b in classify(raw, KEY).bounces]
        assert keys == [b.event_key for b in classify(again, KEY).bounces]
    (dsn,) = classify(sample("postfix_dsn.eml"), KEY).bounces
    assert dsn.event_key == (
        "dsn:20241125160211.4Q2x7C0nZbz9sNf@mail.helloshuttle.com:ann.lee@example.com"
    )


def test_an_mbox_from_line_is_allowed() -> None:
    raw = b"From MAILER-DAEMON  Mon Nov 25 16:02:11 2024\n" + sample("postfix_dsn.eml")
    assert [b.email for b in classify(raw, KEY).bounces] == ["ann.lee@example.com"]


@pytest.mark.parametrize(
    "raw", [b"", b"  \n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"hello world\n", b'{"a": 1}']
)
def test_what_is_not_mail_is_refused(raw: bytes) -> None:
    with pytest.raises(NotMail, match="^stdin: .*not an email message"):
        classify_mod.classify(raw, KEY, "stdin")


# --- recording: a real database --------------------------------------------------------


@pytest.fixture(scope="module")
def built_issue(tmp_path_factory: pytest.TempPathFactory) -> publish.BuiltIssue:
    """The sample issue, built once for the module (the campaigns' content)."""
    pub = make_publication(tmp_path_factory.mktemp("issue"), "sqlite://", 1)
    return publish.build_issue(pub.config(), publish.load_issue(pub.issue))


@pytest.fixture
def pub(tmp_path: Path, database_url: str, built_issue: publish.BuiltIssue) -> Publication:
    """A publication whose campaign 1 went to SUBSCRIBERS (ids 1..10)."""
    pub = make_publication(tmp_path, database_url, 1)
    pub.env["NEWSLETTER_BOUNCES_ADDRESS"] = BOUNCES
    store = pub.store()
    store.upsert_subscribers([SubscriberRow(email) for email in SUBSCRIBERS])
    assert lifecycle.create(store, built_issue) == 1
    return pub


def status(pub: Publication, email: str) -> str:
    row = pub.store().subscriber(email)
    assert row is not None, email
    return str(row["status"])


def recorded(pub: Publication) -> list[tuple[str, str, int | None, int | None]]:
    with pub.store().engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                bounces_table.c.email,
                bounces_table.c.kind,
                bounces_table.c.campaign_id,
                bounces_table.c.subscriber_id,
            ).order_by(bounces_table.c.id)
        ).all()
    return [tuple(row) for row in rows]


def ingest_sample(pub: Publication, raw: bytes, now: dt.datetime | None = None) -> Summary:
    summary = Summary()
    summary.add(ingest(pub.store(), pub.config().bounces, KEY, raw, now=now))
    return summary


def test_every_sample_suppresses_by_the_rules(pub: Publication) -> None:
    for name in sorted(SAMPLES.glob("*.eml")):
        ingest_sample(pub, name.read_bytes())
    assert {email: status(pub, email) for email in SUBSCRIBERS} == {
        "ann.lee@example.com": "bounced",
        "bob@example.org": "active",  # one soft bounce: soft_limit is 3
        "carol@example.net": "bounced",
        "dave@example.com": "bounced",
        "erin@example.com": "complained",
        "frank@example.org": "bounced",
        "grace@example.com": "bounced",
        "heidi@example.com": "bounced",
        "ivan@example.com": "active",  # an out-of-office reply
        "judy@example.com": "bounced",
    }
    rows = recorded(pub)
    assert len(rows) == 11  # nine samples with one report, the Sendmail one with two
    assert ("ann.lee@example.com", "hard", 1, 1) in rows
    assert ("kim@example.edu", "hard", None, None) in rows  # not on the list: recorded
    # Read again: seen before, counted nowhere, nothing changes.
    again = Summary()
    for name in sorted(SAMPLES.glob("*.eml")):
        again.add(ingest(pub.store(), pub.config().bounces, KEY, name.read_bytes()))
    assert (again.hard, again.soft, again.complaints, again.seen_before) == (0, 0, 0, 11)
    assert len(recorded(pub)) == 11


def test_verp_attributes_a_bounce_whose_recipient_is_spelled_otherwise(pub: Publication) -> None:
    # The DSN names where a forward led; the VERP address names who we sent to.
    raw = sample("postfix_dsn.eml").replace(b"ann.lee@example.com", b"ann@forward.example.net")
    ingest_sample(pub, raw)
    assert status(pub, "ann.lee@example.com") == "bounced"
    assert recorded(pub) == [("ann@forward.example.net", "hard", 1, 1)]


def test_verp_naming_a_delivery_the_ledger_never_made_is_not_believed(pub: Publication) -> None:
    # Signed with the right secret, but campaign 2 does not exist: matched by address.
    made_up = verp_address(BOUNCES, KEY, 2, 3)
    raw = sample("postfix_dsn.eml").replace(
        verp_address(BOUNCES, KEY, 1, 1).encode(), made_up.encode()
    )
    ingest_sample(pub, raw)
    assert status(pub, "carol@example.net") == "active"
    assert status(pub, "ann.lee@example.com") == "bounced"
    assert recorded(pub) == [("ann.lee@example.com", "hard", None, 1)]


def delayed(n: int) -> bytes:
    """Postfix's delay warning for bob, the n-th: another report each."""
    return edited("postfix_delayed.eml", ("7Bv1Kq3mYyz2Lpd@", f"7Bv1Kq3mYyz2Lp{n}@"))


def test_soft_bounces_suppress_after_soft_limit_within_soft_days(pub: Publication) -> None:
    config = pub.config()
    assert (config.bounces.soft_limit, config.bounces.soft_days) == (3, 30)
    days = [0, 35, 40, 50]  # the first falls out of the 30 days before the third
    states = []
    for n, day in enumerate(days):
        ingest_sample(pub, delayed(n), now=T0 + dt.timedelta(days=day))
        states.append(status(pub, "bob@example.org"))
    assert states == ["active", "active", "active", "bounced"]


def test_soft_limit_is_read_from_the_configuration(pub: Publication) -> None:
    pub.env["NEWSLETTER_BOUNCES_SOFT_LIMIT"] = "2"
    for n, day in enumerate([0, 1]):
        ingest_sample(pub, delayed(n), now=T0 + dt.timedelta(days=day))
    assert status(pub, "bob@example.org") == "bounced"


# --- `newsletter bounces ingest` -------------------------------------------------------


def invoke(pub: Publication, *args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(pub.config_path), *args], env=pub.env, input=input
    )


def test_ingest_reads_standard_input(pub: Publication) -> None:
    result = invoke(pub, "bounces", "ingest", input=sample("postfix_dsn.eml"))
    assert result.exit_code == 0, result.output
    assert result.stdout == "ann.lee@example.com: hard 5.1.1, suppressed (bounced)\n"
    again = invoke(pub, "bounces", "ingest", "-", input=sample("postfix_dsn.eml"))
    assert again.stdout == "ann.lee@example.com: hard 5.1.1, seen before\n"


def test_ingest_reads_a_file_one_line_per_report(pub: Publication) -> None:
    path = SAMPLES / "sendmail_dsn_three_recipients.eml"
    result = invoke(pub, "bounces", "ingest", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "kim@example.edu: hard 5.2.2, recorded (not on the list)",
        "leo@example.edu: soft 4.4.7, recorded (not on the list)",
    ]
    soft = invoke(pub, "bounces", "ingest", str(SAMPLES / "postfix_delayed.eml"))
    assert soft.stdout == "bob@example.org: soft 4.2.2, recorded\n"
    complaint = invoke(pub, "bounces", "ingest", str(SAMPLES / "arf_abuse.eml"))
    assert complaint.stdout == "erin@example.com: complaint, suppressed (complained)\n"


def test_ingest_says_an_auto_reply_is_ignored(pub: Publication) -> None:
    result = invoke(pub, "bounces", "ingest", str(SAMPLES / "out_of_office.eml"))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "ivan@example.com: an automatic reply (Auto-Submitted: auto-replied), ignored\n"
    )
    assert status(pub, "ivan@example.com") == "active"
    assert recorded(pub) == []


def test_ingest_refuses_what_is_not_mail(
    pub: Publication, assert_user_error: Callable[..., str], tmp_path: Path
) -> None:
    result = invoke(pub, "bounces", "ingest", input=b"\x89PNG\r\n\x1a\n\x00")
    assert result.exit_code == 1
    assert_user_error(result, "standard input: not an email message")
    path = tmp_path / "notes.txt"
    path.write_text("hello world\n")
    result = invoke(pub, "bounces", "ingest", str(path))
    assert result.exit_code == 1
    assert_user_error(result, f"{path}: not an email message")


def test_ingest_as_a_pipe_runs_it(pub: Publication) -> None:
    """As Postfix's pipe(8) runs it: a process, the message on standard input."""
    proc = subprocess.run(
        [sys.executable, "-m", "newsletter", "bounces", "ingest", "-"],
        input=sample("gmail_dsn.eml"),
        capture_output=True,
        env=pub.subprocess_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == "carol@example.net: hard 5.1.1, suppressed (bounced)\n"
    assert recorded(pub) == [("carol@example.net", "hard", 1, 3)]


# --- `newsletter bounces fetch`, against a real Dovecot --------------------------------

IMAP_USER, IMAP_PASSWORD = "bounces", "imap-test-password"
DONE = "newsletter-processed"

DOVECOT_CONF = """\
protocols = imap
listen = 127.0.0.1
base_dir = {home}/run
state_dir = {home}/state
log_path = {home}/dovecot.log
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {uid}
first_valid_gid = {gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {home}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}/mail/%u
}}
mail_location = maildir:~/Maildir
{capability}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""


@dataclass
class Dovecot:
    port: int  # IMAP, with STARTTLS
    tls_port: int  # IMAPS

    def client(self) -> IMAPClient:
        client = IMAPClient("127.0.0.1", self.port, ssl=False, timeout=10)
        client.login(IMAP_USER, IMAP_PASSWORD)
        return client

    def deliver(self, *messages: bytes) -> None:
        with self.client() as client:
            for raw in messages:
                # IMAP sends lines ending in CRLF (RFC 3501 section 4.3).
                client.append("INBOX", raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

    def count(self, folder: str) -> int:
        """The messages in `folder`, those flagged \\Deleted too."""
        with self.client() as client:
            if not client.folder_exists(folder):
                return 0
            client.select_folder(folder, readonly=True)
            return len(client.search("ALL"))


@pytest.fixture
def start_dovecot(self_signed: tuple[Path, Path]) -> Iterator[Callable[..., Dovecot]]:
    """start_dovecot(capability=""): a Dovecot of its own on two free ports, with a
    throwaway configuration, one user and a Maildir; `capability` replaces the IMAP
    CAPABILITY it announces after login (to leave out MOVE). Stopped after the test."""
    cert, key = self_signed
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    if os.geteuid() == 0:  # Dovecot runs mail as a user of its own, never as root
        internal, login, mail = "dovecot", "dovenull", pwd.getpwnam("dovecot")
    else:
        mail = pwd.getpwuid(os.geteuid())
        internal = login = mail.pw_name

    def start(capability: str = "") -> Dovecot:
        # Short: Dovecot's sockets live under it, and a socket path has 108 bytes at most.
        home = tempfile.mkdtemp(prefix="newsletter-dovecot-")
        os.chmod(home, 0o755)
        os.makedirs(f"{home}/mail")
        os.chown(f"{home}/mail", mail.pw_uid, mail.pw_gid)
        Path(home, "passwd").write_text(f"{IMAP_USER}:{{PLAIN}}{IMAP_PASSWORD}\n")
        server = Dovecot(free_port(), free_port())
        conf = Path(home, "dovecot.conf")
        conf.write_text(
            DOVECOT_CONF.format(
                home=home,
                cert=cert,
                key=key,
                internal=internal,
                login=login,
                uid=mail.pw_uid,
                gid=mail.pw_gid,
                port=server.port,
                tls_port=server.tls_port,
                capability=f"imap_capability = {capability}" if capability else "",
            )
        )
        proc = subprocess.Popen([str(DOVECOT), "-F", "-c", str(conf)], stderr=subprocess.PIPE)
        started.append((proc, home))
        deadline = time.monotonic() + 15
        while True:
            try:
                server.client().logout()
                return server
            except OSError:
                log = Path(home, "dovecot.log")
                if proc.poll() is not None or time.monotonic() > deadline:
                    errors = proc.stderr.read().decode() if proc.poll() is not None else ""
                    pytest.fail(f"Dovecot did not start: {errors}{log.read_text()[-2000:]}")
                time.sleep(0.1)

    yield start
    for proc, home in started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def dovecot(start_dovecot: Callable[..., Dovecot]) -> Dovecot:
    return start_dovecot()


def mailbox(pub: Publication, server: Dovecot, security: str = "none", **keys: str) -> None:
    """Point [bounces] of `pub` at the server's mailbox."""
    port = server.tls_port if security == "tls" else server.port
    settings = {
        "imap_host": "127.0.0.1",
        "imap_port": str(port),
        "imap_security": security,
        "imap_username": IMAP_USER,
        "imap_password_env": "BOUNCES_IMAP_PASSWORD",
        **keys,
    }
    pub.env.update({f"NEWSLETTER_BOUNCES_{k.upper()}": v for k, v in settings.items()})
    pub.env["BOUNCES_IMAP_PASSWORD"] = IMAP_PASSWORD


ALL_SAMPLES = sorted(SAMPLES.glob("*.eml"))
A_PERSON_WRITES = b"From: Ann <ann.lee@example.com>\nSubject: Hello\n\nA question for you.\n"


@pytest.mark.dovecot
def test_fetch_records_each_message_moves_it_and_counts_nothing_twice(
    pub: Publication, dovecot: Dovecot
) -> None:
    mailbox(pub, dovecot)
    dovecot.deliver(*(p.read_bytes() for p in ALL_SAMPLES), A_PERSON_WRITES, b"hello world\n")
    result = invoke(pub, "bounces", "fetch")
    assert result.exit_code == 0, result.output
    # 8 hard (kim is not on the list, so 8 suppressed with erin's complaint), bob and leo
    # soft; the out-of-office reply, the person's message and the bytes that are no mail
    # are ignored.
    assert result.stdout == (
        "13 messages, 8 hard, 2 soft, 1 complaints, 3 ignored, 8 suppressed\n"
    )
    assert (dovecot.count("INBOX"), dovecot.count(DONE)) == (0, 13)
    assert status(pub, "ivan@example.com") == "active"
    assert status(pub, "erin@example.com") == "complained"
    assert len(recorded(pub)) == 11
    again = invoke(pub, "bounces", "fetch")
    assert again.stdout == "0 messages, 0 hard, 0 soft, 0 complaints, 0 ignored, 0 suppressed\n"
    assert len(recorded(pub)) == 11


@pytest.mark.dovecot
def test_a_report_the_pipe_recorded_is_seen_before_in_the_mailbox(
    pub: Publication, dovecot: Dovecot
) -> None:
    mailbox(pub, dovecot)
    assert invoke(pub, "bounces", "ingest", input=sample("postfix_dsn.eml")).exit_code == 0
    dovecot.deliver(sample("postfix_dsn.eml"), sample("gmail_dsn.eml"))
    result = invoke(pub, "bounces", "fetch")
    assert result.stdout == (
        "2 messages, 1 hard, 0 soft, 0 complaints, 0 ignored, 1 suppressed, 1 seen before\n"
    )


@pytest.mark.dovecot
@pytest.mark.parametrize("capability", ["IMAP4rev1 UIDPLUS", "IMAP4rev1"])
def test_fetch_moves_by_copy_where_the_server_has_no_move(
    pub: Publication, start_dovecot: Callable[..., Dovecot], capability: str
) -> None:
    server = start_dovecot(capability)
    with server.client() as client:
        assert not client.has_capability("MOVE")
    mailbox(pub, server)
    server.deliver(sample("postfix_dsn.eml"), sample("gmail_dsn.eml"), sample("arf_abuse.eml"))
    result = invoke(pub, "bounces", "fetch")
    assert result.stdout.startswith("3 messages, 2 hard, 0 soft, 1 complaints"), result.output
    # Expunged, not only flagged \Deleted: count() sees those too.
    assert (server.count("INBOX"), server.count(DONE)) == (0, 3)


@pytest.mark.dovecot
def test_a_message_another_run_moved_is_not_an_error(
    pub: Publication, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second run moves every message while the first is reading its first one: the
    first finds the rest gone when it fetches them and when it moves its one."""
    mailbox(pub, dovecot)
    monkeypatch.setenv("BOUNCES_IMAP_PASSWORD", IMAP_PASSWORD)
    dovecot.deliver(*(sample(n) for n in ("postfix_dsn.eml", "gmail_dsn.eml", "exim_text.eml")))
    monkeypatch.setattr(fetch_mod, "BATCH", 1)
    real_ingest = fetch_mod.ingest
    inner: list[Summary] = []

    def ingest_while_another_run_goes(*args: object, **kwargs: object) -> object:
        if not inner:
            inner.append(Summary())
            inner[0] = fetch(pub.store(), pub.config(), KEY)
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(fetch_mod, "ingest", ingest_while_another_run_goes)
    outer = fetch(pub.store(), pub.config(), KEY)
    assert (inner[0].messages, inner[0].hard) == (3, 3)
    assert (outer.messages, outer.hard, outer.seen_before) == (1, 0, 1)
    assert (dovecot.count("INBOX"), dovecot.count(DONE)) == (0, 3)


@pytest.mark.dovecot
def test_two_fetches_at_once_count_each_report_once(
    pub: Publication, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox(pub, dovecot)
    monkeypatch.setenv("BOUNCES_IMAP_PASSWORD", IMAP_PASSWORD)
    messages = [p.read_bytes() for p in ALL_SAMPLES] * 3
    dovecot.deliver(*messages)
    monkeypatch.setattr(fetch_mod, "BATCH", 4)  # many small rounds: the runs interleave
    start = threading.Barrier(2)
    summaries: list[Summary] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            summaries.append(fetch(pub.store(), pub.config(), KEY))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sum(s.hard for s in summaries) == 8
    assert sum(s.soft for s in summaries) == 2
    assert sum(s.complaints for s in summaries) == 1
    assert sum(s.messages for s in summaries) >= len(messages)
    assert len(recorded(pub)) == 11
    # Every message handled and moved. Two sessions that move one message at the same
    # instant may each leave a copy (Dovecot's Maildir lets both succeed): more is fine.
    assert dovecot.count("INBOX") == 0
    assert dovecot.count(DONE) >= len(messages)


@pytest.mark.dovecot
@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_tls_is_verified(
    pub: Publication,
    dovecot: Dovecot,
    self_signed: tuple[Path, Path],
    security: str,
    assert_user_error: Callable[..., str],
) -> None:
    mailbox(pub, dovecot, security)
    dovecot.deliver(sample("postfix_dsn.eml"))
    refused = invoke(pub, "bounces", "fetch")
    assert refused.exit_code == 1
    assert_user_error(refused, "[bounces] imap_security: TLS with", "certificate verify failed")
    assert dovecot.count("INBOX") == 1
    # Trusted (the test's certificate as the CA bundle), the same server is fine.
    pub.env["SSL_CERT_FILE"] = str(self_signed[0])
    result = invoke(pub, "bounces", "fetch")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1 messages, 1 hard")


def test_tls_is_the_default(pub: Publication) -> None:
    assert pub.config().bounces.imap_security == "tls"


@pytest.mark.dovecot
@pytest.mark.parametrize(
    ("keys", "needles"),
    [
        (
            {"imap_folder": "Bounces"},
            ["[bounces] imap_folder: cannot open 'Bounces' at 127.0.0.1:", "exist"],
        ),
        (
            {"imap_username": "nobody"},
            ["[bounces] imap_username, imap_password_env:", "refused the login of 'nobody' ([AU"],
        ),
        ({"imap_port": "unreachable"}, ["[bounces] imap_host: cannot reach 127.0.0.1:"]),
    ],
    ids=["folder-missing", "login-refused", "host-unreachable"],
)
def test_mailbox_errors_are_one_line_naming_the_key(
    pub: Publication,
    dovecot: Dovecot,
    keys: dict[str, str],
    needles: list[str],
    assert_user_error: Callable[..., str],
) -> None:
    if keys.get("imap_port") == "unreachable":
        keys = {"imap_port": str(free_port())}  # nothing listens there
    mailbox(pub, dovecot, **keys)
    result = invoke(pub, "bounces", "fetch")
    assert result.exit_code == 1
    assert_user_error(result, *needles)


def test_fetch_needs_a_mailbox_configured(
    pub: Publication, assert_user_error: Callable[..., str]
) -> None:
    result = invoke(pub, "bounces", "fetch")
    assert result.exit_code == 2
    assert_user_error(result, "[bounces] imap_host: not set")
    pub.env.update(
        {
            "NEWSLETTER_BOUNCES_IMAP_HOST": "127.0.0.1",
            "NEWSLETTER_BOUNCES_IMAP_USERNAME": IMAP_USER,
            "NEWSLETTER_BOUNCES_IMAP_PASSWORD_ENV": "BOUNCES_IMAP_PASSWORD",
        }
    )
    result = invoke(pub, "bounces", "fetch")
    assert result.exit_code == 2
    assert_user_error(result, "[bounces] imap_password_env", "BOUNCES_IMAP_PASSWORD is not set")
