"""DKIM: messages received by a real SMTP server verify with dkimpy against the generated key."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import dkim
import dkim.util
import pytest
from campaign_support import REPO, SECRET, Publication, add_subscribers, make_publication
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from smtp_fixtures import SmtpServer

from newsletter import config as config_mod
from newsletter.cli import cli
from newsletter.errors import ConfigError, NewsletterError
from newsletter.issue import publish
from newsletter.ledger import lifecycle
from newsletter.mail import dkim as signing  # beside dkimpy's `dkim`, which checks ours
from newsletter.send import campaign, trial


@pytest.fixture
def pub(tmp_path: Path, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, f"sqlite:///{tmp_path / 'd.db'}", smtp_server.port)


def keygen(pub: Publication, algorithm: str = "rsa-sha256") -> tuple[dict[str, str], str]:
    """A key via the CLI; returns the [dkim] env overrides and the DNS TXT value."""
    result = CliRunner().invoke(
        cli,
        ["--config", str(pub.config_path), "dkim", "keygen", "--domain", "helloshuttle.com",
         "--selector", "s1", "--algorithm", algorithm],
        env=pub.env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = result.stdout.strip()
    assert record.startswith("s1._domainkey.helloshuttle.com. IN TXT ( ")
    txt = "".join(part for part in record.split('"')[1::2])
    env = {
        "NEWSLETTER_DKIM_DOMAIN": "helloshuttle.com",
        "NEWSLETTER_DKIM_SELECTOR": "s1",
        "NEWSLETTER_DKIM_PRIVATE_KEY": "dkim-s1.pem",
        "NEWSLETTER_DKIM_ALGORITHM": algorithm,
    }
    return env, txt


def dns_for(txt: str):  # noqa: ANN201 - dkimpy's dnsfunc signature
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.helloshuttle.com."
        return txt.encode()

    return lookup


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_campaign_messages_verify_and_tampering_fails(
    pub: Publication, smtp_server: SmtpServer, algorithm: str
) -> None:
    env, txt = keygen(pub, algorithm)
    key_file = pub.root / "dkim-s1.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    config = pub.config(**env)
    store = pub.store()
    add_subscribers(store, 3)
    built = publish.build_issue(config, publish.load_issue(pub.issue))
    result = campaign.run(store, config, lifecycle.create(store, built))
    assert result.ok and len(smtp_server.received) == 3
    for received in smtp_server.received:
        data = received.data
        assert data.startswith(b"DKIM-Signature: v=1; a=" + algorithm.encode())
        assert dkim.verify(data, dnsfunc=dns_for(txt))
        signature = received.parse()["DKIM-Signature"]
        signed = signature.split("h=")[1].split(";")[0].replace(" ", "").split(":")
        for header in ("from", "subject", "date", "message-id", "list-id", "list-unsubscribe",
                       "list-unsubscribe-post"):  # fmt: skip
            assert header in signed
        for old, new in (
            (b"Subject: What Motivated", b"Subject: What Motivatde"),
            (b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: x"),
            (b"Hi Reader", b"Hi Mallory"),
        ):
            assert old in data
            assert not dkim.verify(data.replace(old, new, 1), dnsfunc=dns_for(txt)), old


def test_test_sends_and_built_eml_are_signed(pub: Publication, smtp_server: SmtpServer) -> None:
    env, txt = keygen(pub)
    config = pub.config(**env)
    built = publish.build_issue(config, publish.load_issue(pub.issue))
    trial.send_test(config, built, ["editor@example.com"])
    assert dkim.verify(smtp_server.received[0].data, dnsfunc=dns_for(txt))
    eml = publish.sample(config, built).message
    assert dkim.verify(eml, dnsfunc=dns_for(txt))


def test_without_dkim_nothing_is_signed(pub: Publication, smtp_server: SmtpServer) -> None:
    built = publish.build_issue(pub.config(), publish.load_issue(pub.issue))
    assert b"DKIM-Signature" not in publish.sample(pub.config(), built).message


def test_missing_or_wrong_key_is_a_clear_error(pub: Publication) -> None:
    env = {"NEWSLETTER_DKIM_DOMAIN": "helloshuttle.com", "NEWSLETTER_DKIM_SELECTOR": "s1"}
    with pytest.raises(ConfigError, match=r"\[dkim\]: set private_key"):
        signing.DkimSigner.from_config(pub.config(**env))
    with pytest.raises(ConfigError, match="cannot read"):
        signing.DkimSigner.from_config(pub.config(**env, NEWSLETTER_DKIM_PRIVATE_KEY="nope.pem"))
    (pub.root / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        signing.DkimSigner.from_config(pub.config(**env, NEWSLETTER_DKIM_PRIVATE_KEY="bad.pem"))
    with pytest.raises(ConfigError, match=r"\[dkim\] selector: required"):
        pub.config(NEWSLETTER_DKIM_DOMAIN="helloshuttle.com")


def test_key_from_environment_variable(pub: Publication, monkeypatch: pytest.MonkeyPatch) -> None:
    env, txt = keygen(pub)
    monkeypatch.setenv("DKIM_PEM", (pub.root / "dkim-s1.pem").read_text())
    env = {**env, "NEWSLETTER_DKIM_PRIVATE_KEY": "", "NEWSLETTER_DKIM_PRIVATE_KEY_ENV": "DKIM_PEM"}
    signer = signing.DkimSigner.from_config(pub.config(**env))
    assert signer is not None
    built = publish.build_issue(pub.config(**env), publish.load_issue(pub.issue))
    assert dkim.verify(publish.sample(pub.config(**env), built).message, dnsfunc=dns_for(txt))


def test_keygen_never_overwrites(pub: Publication) -> None:
    keygen(pub)
    again = CliRunner().invoke(
        cli,
        ["--config", str(pub.config_path), "dkim", "keygen", "--selector", "s1"],
        env=pub.env,
    )
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_unknown_algorithm() -> None:
    with pytest.raises(NewsletterError, match="unknown DKIM algorithm"):
        signing.keygen(Path("/nonexistent/x.pem"), "d", "s", "rsa-md5")


# --- oversigning (RFC 6376 5.4, 5.4.2, 8.15) -------------------------------------------

# The fields an attacker would add to a signed issue to change what the reader sees or
# where a reply goes: each must be in h= one more time than it occurs.
OVERSIGNED = ("from", "subject", "reply-to", "cc", "sender", "to", "date", "message-id",
              "mime-version", "content-type", "list-id", "list-unsubscribe",
              "list-unsubscribe-post", "in-reply-to", "references")  # fmt: skip
Dns = Callable[..., bytes]


@pytest.fixture(scope="module")
def issue_messages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The sample issue as rendered for one reader, unsigned: with the publication's
    Reply-To ("reply-to") and with none configured ("no reply-to")."""
    root = tmp_path_factory.mktemp("pub")
    shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "issues", root / "issues")
    messages = {}
    for variant, reply_to in (("reply-to", "editor@helloshuttle.com"), ("no reply-to", "")):
        env = {"NEWSLETTER_SECRET": SECRET, "NEWSLETTER_PUBLICATION_REPLY_TO": reply_to}
        config = config_mod.load(root / "newsletter.toml", env)
        issue = publish.load_issue(next((root / "issues").glob("*.md")))
        messages[variant] = publish.sample(config, publish.build_issue(config, issue)).message
    assert b"\r\nReply-To: " in messages["reply-to"]
    assert b"\r\nReply-To: " not in messages["no reply-to"]
    return messages


@pytest.fixture(scope="module", params=signing.ALGORITHMS)
def signer(request: pytest.FixtureRequest) -> tuple[signing.DkimSigner, Dns]:
    """A signer for helloshuttle.com (selector s1), and a dkimpy DNS lookup publishing its key."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if request.param == "rsa-sha256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    dns = dns_for(signing.dns_value(key.public_key()))
    return signing.DkimSigner("helloshuttle.com", "s1", request.param, key), dns


def signed_names(message: bytes) -> list[str]:
    """The h= tag of the message's (first) DKIM-Signature, as dkimpy reads it."""
    headers, _ = dkim.rfc822_parse(message)
    name, value = headers[0]
    assert name == b"DKIM-Signature"
    tags = dkim.util.parse_tag_value(value)
    return [n.strip().decode() for n in tags[b"h"].split(b":")]


def occurrences(message: bytes, name: str) -> int:
    headers, _ = dkim.rfc822_parse(message)
    return sum(1 for field, _ in headers if field.decode().lower() == name)


@pytest.mark.parametrize("variant", ["reply-to", "no reply-to"])
def test_h_lists_each_field_once_more_than_it_occurs(
    issue_messages: dict[str, bytes], signer: tuple[signing.DkimSigner, Dns], variant: str
) -> None:
    # Two Cc and two References as well: several instances are each signed (5.4.2).
    head, _, body = issue_messages[variant].partition(b"\r\n\r\n")
    head += (b"\r\nCc: a@example.com\r\nReferences: <1@example.com>\r\nCc: b@example.com"
             b"\r\nReferences: <2@example.com>")  # fmt: skip
    message = head + b"\r\n\r\n" + body
    dkim_signer, dns = signer
    signed = dkim_signer.sign(message)
    assert dkim.verify(signed, dnsfunc=dns)
    names = signed_names(signed)
    for name in OVERSIGNED:
        assert names.count(name) == occurrences(message, name) + 1, name
    assert occurrences(message, "cc") == 2 and names.count("cc") == 3


@pytest.mark.parametrize(
    "variant, added",
    [
        ("no reply-to", b"Reply-To: mallory@example.net"),
        ("reply-to", b"Reply-To: mallory@example.net"),
        ("reply-to", b"Subject: Your account is suspended"),
        ("reply-to", b"Cc: everyone@example.net"),
        ("reply-to", b"Sender: mallory@example.net"),
    ],
)
def test_a_field_added_after_signing_breaks_the_signature(
    issue_messages: dict[str, bytes],
    signer: tuple[signing.DkimSigner, Dns],
    variant: str,
    added: bytes,
) -> None:
    dkim_signer, dns = signer
    signed = dkim_signer.sign(issue_messages[variant])
    assert dkim.verify(signed, dnsfunc=dns)
    # On top, where a relay prepends and what mail clients show; verifiers pick
    # instances from the bottom (5.4.2), so only the extra h= name catches it.
    assert not dkim.verify(added + b"\r\n" + signed, dnsfunc=dns)


# --- relaxed canonicalisation (RFC 6376 3.4.2, 3.4.4), against dkimpy's own -----------

LONG = b"x" * 100_000


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\r\n", id="one CRLF"),
        pytest.param(b"\r\n\r\n\r\n", id="only CRLFs"),
        pytest.param(b"plain\r\n", id="plain"),
        pytest.param(b"no final CRLF", id="no final CRLF"),
        pytest.param(b"a \r\nb\t\r\nc \t \t\r\n", id="trailing spaces and tabs"),
        pytest.param(b"a  b\t\tc \t d\r\n", id="runs of whitespace inside"),
        pytest.param(b"  indented\r\n\tx\r\n", id="leading whitespace"),
        pytest.param(b"a\r\n\r\n\r\n\r\n", id="empty lines at the end"),
        pytest.param(b"a\r\n \t\r\nb\r\n", id="whitespace-only line inside"),
        pytest.param(b"a\r\n  \r\n\t\r\n\r\n", id="whitespace-only lines at the end"),
        pytest.param(b" \r\n\t\r\n  \t \r\n", id="only whitespace lines"),
        pytest.param(b"   ", id="only whitespace, no CRLF"),
        pytest.param(b"x \t", id="trailing whitespace, no final CRLF"),
        pytest.param(b"a \r\nb  \r\n c", id="mixed, no final CRLF"),
        pytest.param("Grüße  aus Köln \r\n".encode(), id="UTF-8"),
        pytest.param(LONG + b" \r\n", id="very long line"),
        pytest.param(b"word \t " * 20_000 + b"\r\n", id="very long line of runs"),
    ],
)
def test_relaxed_body_matches_dkimpy(body: bytes) -> None:
    assert signing._relaxed_body(body) == dkim.canonicalization.Relaxed.canonicalize_body(body)


@pytest.mark.parametrize(
    "field",
    [
        pytest.param(b"Subject: plain\r\n", id="plain"),
        pytest.param(b"Subject: trailing \t \r\n", id="trailing spaces and tabs"),
        pytest.param(b"To: a   b\t\t<c@example.com>\r\n", id="runs of whitespace inside"),
        pytest.param(b"Subject:   \t leading\r\n", id="whitespace after the colon"),
        pytest.param(b"Subject:no space\r\n", id="no space after the colon"),
        pytest.param(b"Subject \t: before the colon\r\n", id="whitespace before the colon"),
        pytest.param(b"SuBjEcT: odd case\r\n", id="odd case"),
        pytest.param(b"LIST-UNSUBSCRIBE-POST: List-Unsubscribe=One-Click\r\n", id="upper case"),
        pytest.param(b"Subject: folded\r\n  across\r\n\tthree lines\r\n", id="folded"),
        pytest.param(b"Subject:\r\n value on the next line\r\n", id="folded after the colon"),
        pytest.param(b"Subject: folded at the end\r\n \r\n", id="folded, blank last line"),
        pytest.param(b"Subject:\r\n", id="empty value"),
        pytest.param(b"Subject: \t \r\n", id="whitespace-only value"),
        pytest.param("Subject: Grüße  aus\t Köln \r\n".encode(), id="UTF-8 value"),
        pytest.param(b"Subject: " + LONG + b" \r\n", id="very long line"),
        pytest.param(
            b"References:" + b"".join(b"\r\n <%d@example.com>" % n for n in range(2000)) + b"\r\n",
            id="very long folded",
        ),
    ],
)
def test_relaxed_header_matches_dkimpy(field: bytes) -> None:
    name, _, value = field.partition(b":")
    [(c_name, c_value)] = dkim.canonicalization.Relaxed.canonicalize_headers([(name, value)])
    assert signing._relaxed_header(field) == c_name + b":" + c_value


def test_odd_headers_sign_and_verify(signer: tuple[signing.DkimSigner, Dns]) -> None:
    """The same edge cases through the whole signer: dkimpy verifies what it signed.
    (Not whitespace before a colon: dkimpy's message parser refuses it.)"""
    head = (
        b"fROM: News <news@helloshuttle.com>\r\n"
        b"to:reader@example.com\r\n"
        b"SUBJECT: \t Gr\xc3\xbc\xc3\x9fe  aus\t K\xc3\xb6ln \t\r\n"
        b"Date: Mon, 25 Nov 2024\r\n 10:00:00 +0000\r\n"
        b"Message-ID:<1@helloshuttle.com>\r\n"
        b"References:" + b"".join(b"\r\n\t<%d@example.com>" % n for n in range(200)) + b"\r\n"
        b"Content-Type: text/plain;\r\n charset=utf-8\r\n"
    )
    body = b"Gr\xc3\xbc\xc3\x9fe \t\r\n\r\n  two  spaces \r\n" + LONG + b"\r\n \r\n\r\n\r\n"
    dkim_signer, dns = signer
    signed = dkim_signer.sign(head + b"\r\n" + body)
    assert dkim.verify(signed, dnsfunc=dns)
    names = signed_names(signed)
    assert names.count("from") == names.count("subject") == names.count("references") == 2
    assert not dkim.verify(signed.replace(b"two  spaces", b"two  spices"), dnsfunc=dns)
