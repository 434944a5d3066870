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


def confirm_url(config: Config, token: str) -> str:
    return f"{config.publication.base_url.rstrip('/')}/confirm/{token}"
