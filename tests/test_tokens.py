"""The links' tokens and the secret that signs them: sealed tokens that show no address,
one spelling only (strict base64url), tokens of the old form still honoured, older secrets
that verify after a rotation and never sign, and a weak secret refused (the CLI, doctor).
Through the real site (uvicorn on 127.0.0.1) where a link is followed."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from campaign_support import Publication, add_subscribers, make_publication
from click.testing import Result
from site_support import BASE_URL, Running, confirm_link, running
from smtp_fixtures import SmtpServer

from newsletter import config as config_mod
from newsletter import tokens
from newsletter.errors import ConfigError
from newsletter.ledger.store import Store
from newsletter.ledger.tables import ACTIVE, UNSUBSCRIBED
from newsletter.send import tracking
from newsletter.setup import doctor
from newsletter.web import signup

SECRET = b"test-secret-not-for-production-0123456789"
OLD = b"an-older-secret-of-this-publication-0001"
OLDER = b"the-oldest-secret-of-this-publication-02"
ADDRESS = "reader00000@example.com"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def pub(tmp_path: Path, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, f"sqlite:///{tmp_path / 'newsletter.db'}", smtp_server.port)


@pytest.fixture
def store(pub: Publication) -> Store:
    store = pub.store()
    add_subscribers(store, 2)
    return store


@pytest.fixture
def site(pub: Publication, store: Store) -> Iterator[Running]:
    with running(pub.config()) as served:
        yield served


def legacy_token(address: str, secret: bytes = SECRET) -> str:
    """An unsubscribe link's token as issues sent before sealed tokens carry it."""
    mac = hmac.new(secret, b"unsubscribe:" + address.encode(), hashlib.sha256).digest()[:16]
    return tokens.b64encode(address.encode()) + "." + tokens.b64encode(mac)


def status_of(store: Store, address: str) -> str:
    row = store.subscriber(address)
    assert row is not None
    return str(row["status"])


def unsubscribe(site: Running, token: str) -> int:
    return site.post(f"{BASE_URL}/unsubscribe/{token}", data=ONE_CLICK).status_code


# --- the token shows no address ----------------------------------------------------------


def test_a_token_names_the_subscriber_without_showing_the_address() -> None:
    signer = tokens.Signer(SECRET)
    token = signer.sign(ADDRESS)
    spelled = [ADDRESS, "reader00000", base64.urlsafe_b64encode(ADDRESS.encode()).decode()[:12]]
    assert not any(part in token for part in spelled), token
    assert ADDRESS.encode() not in tokens.b64decode(token)
    assert signer.verify(token) == ADDRESS
    # The same link in every issue (deterministic), another for another reader.
    assert signer.sign(ADDRESS) == token != signer.sign("reader00001@example.com")


def test_a_confirmation_link_shows_no_address_and_still_confirms() -> None:
    signer = tokens.Signer(SECRET, tokens.CONFIRM)
    made = dt.datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=dt.UTC)
    token = signup.make_token(signer, ADDRESS, made, name="Ann Example")
    assert "reader00000" not in token
    assert ADDRESS.encode() not in tokens.b64decode(token)
    assert signup.read_token(signer, token) == signup.Link(ADDRESS, made, "Ann Example")


def test_the_mailed_confirmation_link_shows_no_address_and_confirms(
    site: Running, store: Store, smtp_server: SmtpServer
) -> None:
    email = "new.reader@example.com"
    assert site.post("/subscribe", data={"email": email, "name": "Nell"}).status_code == 200
    site.wait_for_mail()
    [received] = smtp_server.received
    link = confirm_link(received.parse().get_body(("plain",)).get_content())
    token = link.rpartition("/")[2]
    assert "new.reader" not in link and email.encode() not in tokens.b64decode(token)
    assert site.post(link).status_code == 200
    row = store.subscriber(email)
    assert row is not None and row["status"] == ACTIVE and row["name"] == "Nell"


def test_a_sealed_unsubscribe_token_unsubscribes(site: Running, store: Store) -> None:
    assert unsubscribe(site, tokens.Signer(SECRET).sign(ADDRESS)) == 200
    assert status_of(store, ADDRESS) == UNSUBSCRIBED
    assert status_of(store, "reader00001@example.com") == ACTIVE


# --- one spelling ------------------------------------------------------------------------


def other_spellings(token: str) -> list[str]:
    """The same bytes spelled otherwise: lenient decoders read each as `token`."""
    head, dot, sig = token.rpartition(".") if "." in token else ("", "", token)
    prefix = head + dot
    last = sig[-1]
    # The last character carries unused bits when the length is not a multiple of 4:
    # characters that differ only there decode to the same bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 4, 3: 2}[len(sig) % 4]
    same = [
        c
        for c in alphabet
        if c != last and alphabet.index(c) >> unused == alphabet.index(last) >> unused
    ]
    assert same, token
    standard = sig.replace("-", "+").replace("_", "/")
    spellings = [prefix + sig[:-1] + same[0], prefix + sig + "==", prefix + sig + "="]
    if standard != sig:
        spellings.append(prefix + standard)
    spellings.append(prefix + sig + " ")
    for spelled in spellings[:2]:  # the lenient decoder the module used before read them
        assert base64.urlsafe_b64decode(spelled.rpartition(".")[2] + "==") == (
            base64.urlsafe_b64decode(sig + "==")
        )
    return spellings


def test_only_the_canonical_spelling_of_a_token_is_read(site: Running, store: Store) -> None:
    [address] = add_subscribers(store, 1, prefix="an")  # 19 bytes: a token with unused bits
    signer = tokens.Signer(SECRET)
    sealed = signer.sign(address)
    legacy = legacy_token(address)
    assert len(sealed) % 4 and len(legacy.partition(".")[2]) % 4  # so unused bits exist
    for token in other_spellings(sealed) + other_spellings(legacy):
        assert signer.verify(token) is None, token
        assert unsubscribe(site, token) == 400, token
    assert status_of(store, address) == ACTIVE
    assert unsubscribe(site, sealed) == 200  # the one spelling


@pytest.mark.parametrize(
    "text", ["QQ", "QUI", "QUJD", "-_8", "", "QR", "QUJ", "QQ==", "Q", "QU+D", "QU/D", "QU D"]
)
def test_b64decode_takes_only_canonical_unpadded_base64url(text: str) -> None:
    canonical = {"QQ", "QUI", "QUJD", "-_8", ""}
    if text in canonical:
        assert tokens.b64encode(tokens.b64decode(text)) == text
    else:
        with pytest.raises(ValueError):
            tokens.b64decode(text)


# --- tokens of the old form, rotation ----------------------------------------------------


def test_old_form_tokens_still_unsubscribe(site: Running, store: Store) -> None:
    assert unsubscribe(site, legacy_token(ADDRESS)) == 200
    assert status_of(store, ADDRESS) == UNSUBSCRIBED


@pytest.fixture
def rotated(pub: Publication, store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    """The site after two rotations: SECRET signs, OLD and OLDER only verify."""
    monkeypatch.setenv("OLD_SECRETS", f"{OLD.decode()}, {OLDER.decode()}\n")
    config = pub.config(NEWSLETTER_PUBLICATION_PREVIOUS_SECRETS_ENV="OLD_SECRETS")
    assert tokens.previous_secrets(config) == (OLD, OLDER)
    with running(config) as served:
        yield served


def test_older_secrets_verify_links_already_sent(rotated: Running, store: Store) -> None:
    reader1 = "reader00001@example.com"
    assert unsubscribe(rotated, tokens.Signer(OLD).sign(ADDRESS)) == 200
    assert unsubscribe(rotated, legacy_token(reader1, OLDER)) == 200
    assert status_of(store, ADDRESS) == UNSUBSCRIBED
    assert status_of(store, reader1) == UNSUBSCRIBED


def test_a_secret_never_configured_verifies_nothing(rotated: Running, store: Store) -> None:
    stranger = b"a-secret-this-publication-never-had-000"
    assert unsubscribe(rotated, tokens.Signer(stranger).sign(ADDRESS)) == 400
    assert unsubscribe(rotated, legacy_token(ADDRESS, stranger)) == 400
    assert status_of(store, ADDRESS) == ACTIVE


def test_older_secrets_never_sign(pub: Publication, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLD_SECRETS", OLD.decode())
    config = pub.config(NEWSLETTER_PUBLICATION_PREVIOUS_SECRETS_ENV="OLD_SECRETS")
    token = tokens.publication_signer(config).sign(ADDRESS)
    assert tokens.Signer(SECRET).verify(token) == ADDRESS
    assert tokens.Signer(OLD).verify(token) is None
    clicks = tracking.ClickSigner(SECRET, [OLD])
    assert clicks.verify(tracking.ClickSigner(OLD).sign(1, 2, 3)) == (1, 2, 3)
    assert tracking.ClickSigner(OLD).verify(clicks.sign(1, 2, 3)) is None


# --- weak secrets ------------------------------------------------------------------------


def test_a_weak_secret_is_refused_naming_the_variable(
    run_cli: Callable[..., Result],
    assert_user_error: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "...")
    result = run_cli("unsubscribe", tokens.Signer(SECRET).sign(ADDRESS))
    line = assert_user_error(result, "NEWSLETTER_SECRET", "3 bytes", "at least 32")
    assert result.exit_code == 2, line


def test_a_weak_older_secret_still_verifies_the_links_it_signed(
    pub: Publication, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret too short to sign, from before 32 bytes were required, keeps the links it
    signed working when it is listed as an older one (doctor warns of it)."""
    monkeypatch.setenv("OLD_SECRETS", f"{OLD.decode()},short")
    config = pub.config(NEWSLETTER_PUBLICATION_PREVIOUS_SECRETS_ENV="OLD_SECRETS")
    with running(config) as served:
        assert unsubscribe(served, legacy_token(ADDRESS, b"short")) == 200
    assert status_of(store, ADDRESS) == UNSUBSCRIBED


def test_a_weak_secret_file_is_refused_naming_it(
    pub: Publication, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET")
    (pub.root / tokens.SECRET_FILE).write_text("short\n")
    with pytest.raises(ConfigError, match=r"\.newsletter-secret: the signing secret is too"):
        tokens.load_secret(pub.config())


def test_a_made_secret_file_is_strong_and_private(
    pub: Publication, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET")
    secret = tokens.load_secret(pub.config())
    path = pub.root / tokens.SECRET_FILE
    assert len(secret) >= tokens.MIN_SECRET_BYTES
    assert path.stat().st_mode & 0o777 == 0o600
    assert tokens.load_secret(pub.config()) == secret


@pytest.mark.parametrize(
    ("value", "needle"),
    [("OLD SECRETS", "expected an environment variable's name"), ("NEWSLETTER_SECRET", "same")],
)
def test_previous_secrets_env_must_name_another_variable(
    pub: Publication, value: str, needle: str
) -> None:
    with pytest.raises(ConfigError, match="previous_secrets_env") as caught:
        pub.config(NEWSLETTER_PUBLICATION_PREVIOUS_SECRETS_ENV=value)
    assert needle in str(caught.value)


def secret_check(publication: Path, **environ: str) -> doctor.Check:
    config = config_mod.load(publication, environ)
    return doctor.check_secret(config, environ)


def test_doctor_says_why_a_secret_is_weak(publication: Path) -> None:
    weak = secret_check(publication, NEWSLETTER_SECRET="...")
    assert weak.level == doctor.FAIL
    assert weak.message.startswith("NEWSLETTER_SECRET: the signing secret is too short: 3 bytes")
    assert "forge" in weak.message
    good = secret_check(publication, NEWSLETTER_SECRET=SECRET.decode())
    assert good.level == doctor.OK and "41 bytes" in good.message
    rotated = secret_check(
        publication,
        NEWSLETTER_SECRET=SECRET.decode(),
        NEWSLETTER_PUBLICATION_PREVIOUS_SECRETS_ENV="OLD",
        OLD=f"{OLD.decode()} {OLDER.decode()}",
    )
    assert rotated.level == doctor.OK and "2 older one(s) in OLD" in rotated.message
    weak_old = secret_check(
        publication,
        NEWSLETTER_SECRET=SECRET.decode(),
        NEWSLETTER_PUBLICATION_PREVIOUS_SECRETS_ENV="OLD",
        OLD="tiny",
    )
    assert weak_old.level == doctor.WARN and weak_old.message.startswith("OLD: older secret 1")
    assert "still verifies" in weak_old.message and "forge" in weak_old.message
    unset = secret_check(publication)
    assert unset.level == doctor.OK and "will be made" in unset.message
    assert not (publication.parent / tokens.SECRET_FILE).exists()  # doctor creates nothing
