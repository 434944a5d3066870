"""Signed tokens for the links in messages, keyed by the publication's secret.

Each token has a purpose (unsubscribe, confirm a signup) that is bound to it, so a
token made for one purpose is refused for another. Unsubscribe tokens carry only the
address and never expire: an old issue's link keeps working. A signup confirmation
token also carries the time it was made and the name typed into the form; signup.py
decides how long it is good for.

A token is the address sealed with AES-SIV (RFC 5297): deterministic authenticated
encryption, so the link of one reader is the same in every issue, nothing in it can be
read without the secret (logs and proxies see no address), and changing any bit makes
it fail. Tokens sent before this form were `base64(address).base64(HMAC)`: they still
verify (they have a '.'), and are never made any more.

A token is read only in its one spelling: base64url (RFC 4648 section 5) with no '='
padding, whose bytes encode back to exactly the text given. Any other spelling of the
same bytes (a changed last character whose unused bits differ, '==' appended) is refused
before any key is tried.

The secret comes from the environment variable named by [publication] secret_env;
without it, a random secret is created once in `.newsletter-secret` beside
newsletter.toml (mode 0600), so the demo works and links stay valid across runs. A
secret under MIN_SECRET_BYTES is refused. The variable named by [publication]
previous_secrets_env holds older secrets, which verify tokens and never sign: after a
rotation, the links in every issue already sent keep working.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from newsletter.config import Config
from newsletter.errors import ConfigError, NewsletterError

SECRET_FILE = ".newsletter-secret"
# 256 bits: as much as HMAC-SHA256 and AES-256-SIV's keys (derived from it) can use.
MIN_SECRET_BYTES = 32
_SIG_BYTES = 16


def secret_problem(secret: bytes) -> str | None:
    """Why `secret` cannot sign, or None."""
    if len(secret) < MIN_SECRET_BYTES:
        return (
            f"{len(secret)} bytes, at least {MIN_SECRET_BYTES} are needed (anyone who guesses"
            " it can forge every link); make one with"
            " `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return None


def load_secret(config: Config) -> bytes:
    """The secret that signs: from [publication] secret_env, else the secret file (made
    once). A ConfigError names the variable or the file when it is too short."""
    name = config.publication.secret_env
    env_value = os.environ.get(name, "")
    if env_value:
        return _strong(env_value.encode(), name)
    path = config.root / SECRET_FILE
    try:
        return _strong(path.read_bytes().strip(), str(path))
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return _strong(path.read_bytes().strip(), str(path))
    except OSError as exc:
        raise NewsletterError(
            f"{path}: cannot create the signing secret ({exc.strerror}); "
            f"set {config.publication.secret_env} instead"
        ) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(value + b"\n")
    return value


def previous_secrets(config: Config) -> tuple[bytes, ...]:
    """The older secrets of [publication] previous_secrets_env: they verify tokens, never
    sign."""
    name = config.publication.previous_secrets_env
    return previous_secrets_in(name, os.environ) if name else ()


def previous_secrets_in(name: str, environ: Mapping[str, str]) -> tuple[bytes, ...]:
    """The secrets in variable `name` of `environ`, comma or whitespace separated.

    An older secret may be short: it only verifies, and refusing it would break every
    link signed with it before the upgrade that began to require 32 bytes (doctor warns,
    `weak_previous_secrets`)."""
    return tuple(s.encode() for s in re.split(r"[\s,]+", environ.get(name, "")) if s)


def weak_previous_secrets(name: str, environ: Mapping[str, str]) -> list[str]:
    """What is weak among the older secrets of variable `name`, one line each."""
    found = previous_secrets_in(name, environ)
    return [
        f"{name}: older secret {index} of {len(found)}: {problem}"
        for index, secret in enumerate(found, 1)
        if (problem := secret_problem(secret))
    ]


def _strong(secret: bytes, where: str) -> bytes:
    problem = secret_problem(secret)
    if problem:
        raise ConfigError(f"{where}: the signing secret is too short: {problem}")
    return secret


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64encode(data: bytes) -> str:
    """base64url without padding: the one spelling of `data` in a token."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64decode(text: str) -> bytes:
    """The bytes of canonical unpadded base64url `text` (RFC 4648 sections 3.5 and 5);
    ValueError for any other spelling."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not canonical base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None
    # Unused bits of the last character must be zero (section 3.5): re-encoding says so.
    if b64encode(data) != text:
        raise ValueError("not canonical base64url")
    return data


UNSUBSCRIBE = "unsubscribe"
CONFIRM = "confirm"


class Signer:
    """Makes and reads tokens for one purpose. One per process; cheap per recipient.

    `secret` seals; `previous` (older secrets) only open, so a rotation keeps the links
    already sent working."""

    def __init__(
        self, secret: bytes, purpose: str = UNSUBSCRIBE, previous: Sequence[bytes] = ()
    ) -> None:
        if ":" in purpose:
            raise ValueError(f"a token purpose has no ':' ({purpose!r})")
        self._purpose = [purpose.encode()]
        keys = [secret, *previous]
        self._sivs = [AESSIV(_siv_key(key, purpose)) for key in keys]
        self._macs = [hmac.new(key, f"{purpose}:".encode(), hashlib.sha256) for key in keys]

    def sign(self, email: str) -> str:
        """A token for `email` (lower-cased; any text without a purpose of its own)."""
        return b64encode(self._sivs[0].encrypt(email.lower().encode(), self._purpose))

    def verify(self, token: str) -> str | None:
        """What a token was made for, or None when it is forged, altered, spelled another
        way or for another purpose."""
        head, dot, sig = token.partition(".")
        try:
            data = b64decode(head)
            given = b64decode(sig) if dot else b""
        except ValueError:
            return None
        opened = self._legacy(data, given) if dot else self._open(data)
        if opened is None:
            return None
        try:
            return opened.decode()
        except UnicodeDecodeError:
            return None

    def _open(self, sealed: bytes) -> bytes | None:
        for siv in self._sivs:
            try:
                return siv.decrypt(sealed, self._purpose)
            except InvalidTag:
                continue
        return None

    def _legacy(self, data: bytes, given: bytes) -> bytes | None:
        """A token of the old form: the address in clear, an HMAC after the '.'."""
        for mac in self._macs:
            mac = mac.copy()
            mac.update(data)
            if hmac.compare_digest(mac.digest()[:_SIG_BYTES], given):
                return data
        return None


def _siv_key(secret: bytes, purpose: str) -> bytes:
    # 64 bytes: AES-256-SIV's two keys (RFC 5297 section 2.2), one per secret and purpose.
    return hmac.new(secret, f"siv:{purpose}".encode(), hashlib.sha512).digest()


def publication_signer(config: Config, purpose: str = UNSUBSCRIBE) -> Signer:
    """The publication's Signer for `purpose`: its secret, and its previous ones."""
    return Signer(load_secret(config), purpose, previous_secrets(config))


def unsubscribe_url(config: Config, token: str) -> str:
    return f"{config.publication.base_url.rstrip('/')}/unsubscribe/{token}"


def view_online_url(config: Config, slug: str) -> str:
    return f"{config.publication.base_url.rstrip('/')}/issues/{slug}"


HEALTH_PATH = "/healthz"
# What `serve` answers at HEALTH_PATH, so `doctor` tells it from another server's 200.
HEALTH_ANSWER = "newsletter serve: ok"


def health_url(config: Config) -> str:
    return f"{config.publication.base_url.rstrip('/')}{HEALTH_PATH}"


def confirm_url(config: Config, token: str) -> str:
    return f"{config.publication.base_url.rstrip('/')}/confirm/{token}"


# VERP: the envelope sender of a campaign message names its campaign and subscriber,
# so the bounce that comes back to it needs no guessing. The token is lower-case hex
# (mail systems may fold the local part's case) and signed, so a forged bounce cannot
# suppress an address: bounces+c12-s3456-<20 hex>@news.example.org.
_VERP_SIG_BYTES = 10


def _verp_sig(secret: bytes, campaign_id: int, subscriber_id: int) -> str:
    mac = hmac.new(secret, f"verp:{campaign_id}:{subscriber_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[: 2 * _VERP_SIG_BYTES]


def verp_address(base: str, secret: bytes, campaign_id: int, subscriber_id: int) -> str:
    """The envelope sender for one campaign message: `base` (bounces@domain) with the
    signed campaign and subscriber after a '+'."""
    local, _, domain = base.rpartition("@")
    sig = _verp_sig(secret, campaign_id, subscriber_id)
    return f"{local}+c{campaign_id}-s{subscriber_id}-{sig}@{domain}"


def read_verp(address: str, secret: bytes) -> tuple[int, int] | None:
    """(campaign id, subscriber id) of a VERP address this publication signed, or None."""
    local = address.strip().strip("<>").rpartition("@")[0]
    _, plus, tag = local.lower().partition("+")
    if not plus:
        return None
    parts = tag.split("-")
    if len(parts) != 3 or not parts[0][1:].isdigit() or not parts[1][1:].isdigit():
        return None
    if parts[0][:1] != "c" or parts[1][:1] != "s":
        return None
    campaign_id, subscriber_id = int(parts[0][1:]), int(parts[1][1:])
    if not hmac.compare_digest(_verp_sig(secret, campaign_id, subscriber_id), parts[2]):
        return None
    return campaign_id, subscriber_id
