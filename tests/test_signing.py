"""DKIM: messages received by a real SMTP server verify with dkimpy against the generated key."""

from __future__ import annotations

import stat
from pathlib import Path

import dkim
import pytest
from campaign_support import Publication, add_subscribers, make_publication
from click.testing import CliRunner
from smtp_fixtures import SmtpServer

from newsletter import campaign, publish, signing
from newsletter.cli import cli
from newsletter.errors import ConfigError, NewsletterError


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
    result = campaign.run(store, config, campaign.create(store, built))
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
    campaign.send_test(config, built, ["editor@example.com"])
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


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n\r\n",
        b"plain\r\n",
        b"a  b\t c \r\n d\t\r\n\r\n\r\n",
        b"x \t",
        b"a \r\nb  \r\n c",
    ],
)
def test_relaxed_body_canonicalisation_follows_rfc_6376(body: bytes) -> None:
    import re

    # RFC 6376 3.4.4 written out literally: the fast version must agree with it.
    expected = re.sub(rb"[ \t]+\r\n", b"\r\n", re.sub(rb"[ \t]+", b" ", body)).rstrip(b"\r\n")
    assert signing._relaxed_body(body) == (expected + b"\r\n" if expected else b"")
