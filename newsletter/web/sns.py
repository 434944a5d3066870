"""Messages from Amazon SNS to an HTTPS endpoint, verified the way SNS documents it.

https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html: the
signature is SHA1withRSA (SignatureVersion 1) or SHA256withRSA (2) over a canonical string
of the message's fields, made with the certificate at SigningCertURL; AWS asks to fetch
that certificate over https from SNS only, and to reject a message of an unexpected
TopicArn. So a message is believed when:

- its TopicArn is one of ours (checked first: another topic costs no fetch);
- its SigningCertURL is https://sns.<region>.amazonaws.com/....pem, fetched once over TLS
  (the server's certificate verified, no redirects) and valid now;
- its signature verifies over the string to sign.

A SubscriptionConfirmation is confirmed here, by visiting its SubscribeURL (SNS sends
nothing to an endpoint until then); the caller gets the Notifications.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import http.client
import json
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import IO, Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# A function that returns the body at an https URL, or raises OSError.
Fetch = Callable[[str], bytes]

# SNS signs with a handful of certificates; the cache holds them, not what callers name.
MAX_CERTIFICATES = 32
FETCH_TIMEOUT_S = 10.0
MAX_FETCH_BYTES = 64 * 1024

# The string to sign is "name\nvalue\n" for each of these keys, in this (byte) order;
# Subject only when the message has one (the page above, "Create the string to sign").
_SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_KEYS["UnsubscribeConfirmation"] = _SIGNED_KEYS["SubscriptionConfirmation"]
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
# The whole netloc is the host name: no user, no port. (China's regions, amazonaws.com.cn,
# are not accepted: add them here if a publication ever sends from there.)
_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com")
_FETCH_ERRORS = (OSError, ValueError, http.client.HTTPException)


class NotFromSns(Exception):
    """Not a verified message of one of our topics. The message is for the log only."""


class CannotVerify(Exception):
    """The signing certificate cannot be had now: answer so that SNS retries."""


@dataclass(frozen=True)
class Notification:
    """A verified Notification: what was published to the topic."""

    topic: str
    message_id: str
    message: str  # the published Message (SES: a JSON notification)


def is_sns_url(url: str, certificate: bool = False) -> bool:
    """Whether `url` is https on an SNS host (and a .pem, for a certificate)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not _SNS_HOST.fullmatch(parts.netloc):
        return False
    return parts.path.endswith(".pem") or not certificate


class Endpoint:
    """Reads the messages SNS posts for some topics; one per site, used by many threads."""

    def __init__(
        self, topics: Iterable[str], fetch: Fetch, clock: Callable[[], float] = time.time
    ) -> None:
        self._topics = frozenset(topics)
        self._fetch = fetch
        self._clock = clock
        self._certificates: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def receive(self, body: bytes) -> Notification | None:
        """The Notification in `body`, verified; None for a subscription now confirmed or
        an unsubscribe confirmation. NotFromSns or CannotVerify otherwise."""
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            raise NotFromSns("the body is not JSON") from None
        if not isinstance(message, dict):
            raise NotFromSns("the body is not a JSON object")
        kind = message.get("Type")
        if not isinstance(kind, str) or kind not in _SIGNED_KEYS:
            raise NotFromSns(f"not an SNS message type: {kind!r}")
        topic = message.get("TopicArn")
        if not isinstance(topic, str) or topic not in self._topics:
            raise NotFromSns(f"topic {topic!r} is not in [bounces] ses_topic_arns")
        self._verify(message, kind)
        if kind == "SubscriptionConfirmation":
            self._confirm(message)
            return None
        if kind == "UnsubscribeConfirmation":
            return None
        return Notification(topic, _field(message, "MessageId"), _field(message, "Message"))

    def _verify(self, message: Mapping[str, Any], kind: str) -> None:
        algorithm = _HASHES.get(_field(message, "SignatureVersion"))
        if algorithm is None:
            raise NotFromSns("unknown SignatureVersion")
        url = _field(message, "SigningCertURL")
        if not is_sns_url(url, certificate=True):
            raise NotFromSns(f"SigningCertURL is not an SNS certificate: {url!r}")
        try:
            signature = base64.b64decode(_field(message, "Signature"), validate=True)
        except (binascii.Error, ValueError):
            raise NotFromSns("a Signature that is not base64") from None
        public_key = self._public_key(url)
        try:
            public_key.verify(
                signature, string_to_sign(message, kind), padding.PKCS1v15(), algorithm()
            )
        except InvalidSignature:
            raise NotFromSns("the signature does not verify") from None

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            certificate = self._certificates.get(url)
        if certificate is None:
            try:
                pem = self._fetch(url)
            except _FETCH_ERRORS as exc:
                raise CannotVerify(f"cannot fetch the SNS certificate {url}: {exc}") from None
            try:
                certificate = x509.load_pem_x509_certificate(pem)
            except ValueError:
                raise NotFromSns(f"{url} is not a PEM certificate") from None
            with self._lock:
                if len(self._certificates) >= MAX_CERTIFICATES:
                    del self._certificates[next(iter(self._certificates))]
                self._certificates[url] = certificate
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise NotFromSns(f"the certificate at {url} is not valid now")
        public_key = certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise NotFromSns(f"the certificate at {url} has no RSA key")
        return public_key

    def _confirm(self, message: Mapping[str, Any]) -> None:
        """Visit SubscribeURL
        (https://docs.aws.amazon.com/sns/latest/dg/http-subscription-confirmation-json.html)."""
        url = _field(message, "SubscribeURL")
        # Signed by SNS already; checked anyway, so that nothing but SNS is ever fetched.
        if not is_sns_url(url):
            raise NotFromSns(f"SubscribeURL is not on SNS: {url!r}")
        try:
            self._fetch(url)
        except _FETCH_ERRORS as exc:
            raise CannotVerify(f"cannot confirm the subscription: {exc}") from None


def string_to_sign(message: Mapping[str, Any], kind: str) -> bytes:
    """The canonical string SNS signs for a message of type `kind`."""
    lines: list[str] = []
    for key in _SIGNED_KEYS[kind]:
        value = message.get(key)
        if key == "Subject" and value is None:
            continue
        if not isinstance(value, str):
            raise NotFromSns(f"the message has no {key}")
        lines += [key, value]
    try:
        return "".join(f"{line}\n" for line in lines).encode()
    except UnicodeEncodeError:  # a lone surrogate: SNS sends none
        raise NotFromSns("the message is not UTF-8") from None


def _field(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    return value if isinstance(value, str) else ""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: the body comes from the host that was checked."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> None:
        return None


def fetch_https(url: str) -> bytes:
    """The body at an https URL, the server's certificate verified; OSError when it cannot
    be had. The production `Fetch`."""
    if urlsplit(url).scheme != "https":
        raise ValueError(f"{url}: not https")
    opener = urllib.request.build_opener(
        _NoRedirects(), urllib.request.HTTPSHandler(context=ssl.create_default_context())
    )
    with opener.open(url, timeout=FETCH_TIMEOUT_S) as response:
        return bytes(response.read(MAX_FETCH_BYTES))
