"""Signed tokens for the links in messages: HMAC-SHA256 over the address.

Each token has a purpose (unsubscribe, confirm a signup) that is part of the MAC, so a
token made for one purpose is refused for another. Unsubscribe tokens carry only the
address and never expire: an old issue's link keeps working. A signup confirmation
token also carries the time it was made; signup.py decides how long it is good for.

The secret comes from the environment variable named by [publication] secret_env;
without it, a random secret is created once in `.newsletter-secret` beside
newsletter.toml (mode 0600), so the demo works and links stay valid across runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets

from newsletter.config import Config
from newsletter.errors import NewsletterError

SECRET_FILE = ".newsletter-secret"
_SIG_BYTES = 16


def load_secret(config: Config) -> bytes:
    env_value = os.environ.get(config.publication.secret_env, "")
    if env_value:
        return env_value.encode()
    path = config.root / SECRET_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes().strip()
    except OSError as exc:
        raise NewsletterError(
            f"{path}: cannot create the signing secret ({exc.strerror}); "
            f"set {config.publication.secret_env} instead"
        ) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(value + b"\n")
    return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


UNSUBSCRIBE = "unsubscribe"
CONFIRM = "confirm"


class Signer:
    """Signs and checks tokens for one purpose. One per process; cheap per recipient."""

    def __init__(self, secret: bytes, purpose: str = UNSUBSCRIBE) -> None:
        if ":" in purpose:
            raise ValueError(f"a token purpose has no ':' ({purpose!r})")
        self._mac = hmac.new(secret, f"{purpose}:".encode(), hashlib.sha256)

    def sign(self, email: str) -> str:
        """A token for `email` (lower-cased; any text without a purpose of its own)."""
        mac = self._mac.copy()
        data = email.lower().encode()
        mac.update(data)
        return f"{_b64(data)}.{_b64(mac.digest()[:_SIG_BYTES])}"

    def verify(self, token: str) -> str | None:
        """What a token was made for, or None when it is forged, altered or for another
        purpose."""
        head, _, sig = token.partition(".")
        try:
            data = _unb64(head)
            given = _unb64(sig)
            email = data.decode()
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
        mac = self._mac.copy()
        mac.update(data)
        if not hmac.compare_digest(mac.digest()[:_SIG_BYTES], given):
            return None
        return email


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
