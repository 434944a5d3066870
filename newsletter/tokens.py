"""Signed tokens for unsubscribe links: HMAC-SHA256 over the address, no expiry.

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


class Signer:
    """Signs and checks unsubscribe tokens. One per process; cheap per recipient."""

    def __init__(self, secret: bytes) -> None:
        self._mac = hmac.new(secret, b"unsubscribe:", hashlib.sha256)

    def sign(self, email: str) -> str:
        mac = self._mac.copy()
        data = email.lower().encode()
        mac.update(data)
        return f"{_b64(data)}.{_b64(mac.digest()[:_SIG_BYTES])}"

    def verify(self, token: str) -> str | None:
        """The address a token was made for, or None when it is forged or altered."""
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
