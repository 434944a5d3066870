"""POST /webhooks/<provider> on `newsletter serve`, over real HTTP: each provider's request
signed (or authenticated) the way the provider does it, with keys and certificates made
here; what is refused records nothing; what is accepted is in the ledger, once, and
suppresses the address. The SNS certificate and the subscription confirmation are
"fetched" from this file, never from the network."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from campaign_support import Publication, add_subscribers, make_publication
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from site_support import Running, running
from smtp_fixtures import SmtpServer

from newsletter import tokens
from newsletter.errors import ConfigError
from newsletter.issue import publish
from newsletter.ledger import lifecycle
from newsletter.ledger.store import Store
from newsletter.ledger.tables import ACTIVE, BOUNCED, COMPLAINED
from newsletter.ledger.tables import bounces as bounces_table
from newsletter.send import campaign
from newsletter.web import site as site_mod
from newsletter.web import sns

SECRET = b"test-secret-not-for-production-0123456789"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-bounces"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
SUBSCRIBE_URL = (
    "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"
    f"&TopicArn={TOPIC}&Token=2336412f37fb687f5d51e6e2425c464de"
)
POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "correct horse battery staple"
MAILGUN_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
VERP_BASE = "bounces@news.helloshuttle.com"
SETTINGS = {
    "NEWSLETTER_BOUNCES_ADDRESS": VERP_BASE,
    "NEWSLETTER_BOUNCES_SES_TOPIC_ARNS": json.dumps([TOPIC]),
    "NEWSLETTER_BOUNCES_POSTMARK_USERNAME": POSTMARK_USER,
    "NEWSLETTER_BOUNCES_POSTMARK_PASSWORD_ENV": "TEST_POSTMARK_PASSWORD",
    "NEWSLETTER_BOUNCES_MAILGUN_SIGNING_KEY_ENV": "TEST_MAILGUN_KEY",
    "NEWSLETTER_BOUNCES_SENDGRID_PUBLIC_KEY_ENV": "TEST_SENDGRID_KEY",
}
PROVIDERS = ("ses", "postmark", "mailgun", "sendgrid")
KINDS = {"hard": BOUNCED, "complaint": COMPLAINED}


# --- keys and certificates --------------------------------------------------------------------


def certificate(key: rsa.RSAPrivateKey, days: int = 30) -> bytes:
    """A self-signed certificate like SNS's signing certificate, as PEM."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Keys:
    sns: rsa.RSAPrivateKey
    sns_certificate: bytes
    other_rsa: rsa.RSAPrivateKey
    sendgrid: ec.EllipticCurvePrivateKey
    other_ec: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    sns_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Keys(
        sns=sns_key,
        sns_certificate=certificate(sns_key),
        other_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        sendgrid=ec.generate_private_key(ec.SECP256R1()),
        other_ec=ec.generate_private_key(ec.SECP256R1()),
    )


def sendgrid_verification_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The key as SendGrid's settings page shows it: base64 of the DER public key."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@dataclass
class FakeHttps:
    """The `fetch` the site is given: serves the SNS certificate, answers SubscribeURL, and
    remembers what it was asked for."""

    documents: dict[str, bytes]
    asked: list[str] = field(default_factory=list)

    def __call__(self, url: str) -> bytes:
        self.asked.append(url)
        if url in self.documents:
            return self.documents[url]
        raise OSError(f"{url}: not served in this test")


# --- the publication and the server ---------------------------------------------------------


@pytest.fixture
def pub(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, keys: Keys, monkeypatch
) -> Publication:
    monkeypatch.setenv("TEST_POSTMARK_PASSWORD", POSTMARK_PASSWORD)
    monkeypatch.setenv("TEST_MAILGUN_KEY", MAILGUN_KEY)
    monkeypatch.setenv("TEST_SENDGRID_KEY", sendgrid_verification_key(keys.sendgrid))
    publication = make_publication(tmp_path, database_url, smtp_server.port)
    publication.env.update(SETTINGS)
    return publication


@pytest.fixture
def store(pub: Publication) -> Store:
    return pub.store()


@pytest.fixture
def https(keys: Keys) -> FakeHttps:
    return FakeHttps(
        {CERT_URL: keys.sns_certificate, SUBSCRIBE_URL: b"<ConfirmSubscriptionResponse/>"}
    )


@contextlib.contextmanager
def serving(pub: Publication, fetch: FakeHttps, **settings: str) -> Iterator[Running]:
    """The site, with its https fetch injected."""
    with running(pub.config(**settings), fetch=fetch) as site:
        yield site


@pytest.fixture
def site(pub: Publication, store: Store, https: FakeHttps) -> Iterator[Running]:
    with serving(pub, https) as served:
        yield served


def status_of(store: Store, address: str) -> str:
    row = store.subscriber(address)
    assert row is not None
    return str(row["status"])


def recorded(store: Store) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(bounces_table).order_by(bounces_table.c.id)).all()
    return [dict(row._mapping) for row in rows]


# --- each provider's request, as the provider makes it -----------------------------------------

Request = tuple[bytes, dict[str, str]]


def sns_string_to_sign(message: dict[str, str]) -> bytes:
    """Written out from AWS's "Verifying the signatures of Amazon SNS messages", not taken
    from the code under test."""
    if message["Type"] == "Notification":
        keys = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        keys = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{k}\n{message[k]}\n" for k in keys if k in message).encode()


def sns_post(
    keys: Keys,
    message: str,
    kind: str = "Notification",
    version: str = "1",
    signer: rsa.RSAPrivateKey | None = None,
    message_id: str = "",
    **fields: str,
) -> Request:
    body = {
        "Type": kind,
        "MessageId": message_id or secrets.token_hex(16),
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": "2026-01-27T14:59:38.237Z",
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
        **fields,
    }
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = (signer or keys.sns).sign(sns_string_to_sign(body), padding.PKCS1v15(), algorithm)
    body["Signature"] = base64.b64encode(signature).decode()
    return json.dumps(body).encode(), {
        "content-type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": kind,
    }


def ses_notification(kind: str, email: str, event_id: str, source: str = "") -> str:
    """An SES notification as in AWS's "Amazon SNS notification examples for Amazon SES"."""
    mail = {
        "timestamp": "2026-01-27T14:59:38.237Z",
        "source": source or "news@helloshuttle.com",
        "messageId": f"message-{event_id}",
        "destination": [email],
    }
    if kind == "complaint":
        return json.dumps(
            {
                "notificationType": "Complaint",
                "complaint": {
                    "complainedRecipients": [{"emailAddress": email}],
                    "timestamp": "2026-01-27T14:59:38.237Z",
                    "feedbackId": event_id,
                    "complaintFeedbackType": "abuse",
                },
                "mail": mail,
            }
        )
    return json.dumps(
        {
            "notificationType": "Bounce",
            "bounce": {
                "bounceType": {"hard": "Permanent", "soft": "Transient"}[kind],
                "bounceSubType": "General",
                "bouncedRecipients": [
                    {
                        "emailAddress": email,
                        "status": "5.1.1" if kind == "hard" else "4.2.2",
                        "action": "failed",
                        "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                    }
                ],
                "timestamp": "2026-01-27T14:59:38.237Z",
                "feedbackId": event_id,
            },
            "mail": mail,
        }
    )


def postmark_post(
    kind: str, email: str, event_id: str, credentials: tuple[str, str] | None = None
) -> Request:
    """A Postmark Bounce or SpamComplaint webhook body, with basic auth."""
    record, kind_name = {
        "hard": ("Bounce", "HardBounce"),
        "soft": ("Bounce", "SoftBounce"),
        "complaint": ("SpamComplaint", "SpamComplaint"),
    }[kind]
    body = {
        "RecordType": record,
        "ID": int(event_id),
        "Type": kind_name,
        "TypeCode": {"HardBounce": 1, "SoftBounce": 4096, "SpamComplaint": 512}[kind_name],
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": email,
        "From": "news@helloshuttle.com",
        "BouncedAt": "2026-01-27T14:59:38Z",
        "MessageStream": "broadcast",
    }
    user, password = credentials or (POSTMARK_USER, POSTMARK_PASSWORD)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps(body).encode(), {"authorization": f"Basic {auth}"}


def mailgun_post(
    kind: str,
    email: str,
    event_id: str,
    key: str = MAILGUN_KEY,
    timestamp: int | None = None,
    sender: str = "",
) -> Request:
    """A Mailgun webhook: the signature object beside event-data, a new token each time."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = secrets.token_hex(25)
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    event: dict[str, Any] = {
        "id": event_id,
        "timestamp": float(stamp),
        "recipient": email,
        "envelope": {"sender": sender or "news@helloshuttle.com", "targets": email},
    }
    if kind == "complaint":
        event["event"] = "complained"
    else:
        event |= {
            "event": "failed",
            "severity": {"hard": "permanent", "soft": "temporary"}[kind],
            "reason": "bounce" if kind == "hard" else "generic",
            "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist"},
        }
    body = {
        "signature": {"timestamp": stamp, "token": token, "signature": signature},
        "event-data": event,
    }
    return json.dumps(body).encode(), {"content-type": "application/json"}


def sendgrid_event(kind: str, email: str, event_id: str) -> dict[str, Any]:
    event = {
        "email": email,
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "sg_event_id": event_id,
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    }
    if kind == "complaint":
        return event | {"event": "spamreport"}
    kind_name = {"hard": "bounce", "soft": "blocked"}[kind]
    return event | {"event": "bounce", "type": kind_name, "reason": "550 5.1.1 unknown recipient"}


def sendgrid_signed(
    events: list[dict[str, Any]],
    key: ec.EllipticCurvePrivateKey,
    timestamp: int | None = None,
) -> Request:
    """The Signed Event Webhook: ECDSA P-256 over the timestamp header and the raw body."""
    body = json.dumps(events).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return body, {
        "content-type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def report(keys: Keys, provider: str, kind: str, email: str, event_id: str) -> Request:
    """A correctly signed report of one bounce or complaint, from `provider`."""
    if provider == "ses":
        notification = ses_notification(kind, email, f"feedback-{event_id}")
        return sns_post(keys, notification, message_id=f"sns-{event_id}")
    if provider == "postmark":
        return postmark_post(kind, email, event_id)
    if provider == "mailgun":
        return mailgun_post(kind, email, f"mailgun-{event_id}")
    return sendgrid_signed([sendgrid_event(kind, email, f"sg-{event_id}")], keys.sendgrid)


def post(site: Running, provider: str, request: Request) -> httpx.Response:
    body, headers = request
    return site.post(f"/webhooks/{provider}", content=body, headers=headers)


# --- what every provider promises ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["hard", "complaint"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_signed_report_is_recorded_and_suppresses(
    site: Running, store: Store, keys: Keys, provider: str, kind: str
) -> None:
    address, other = add_subscribers(store, 2)
    response = post(site, provider, report(keys, provider, kind, address, "1001"))
    assert response.status_code == 200, response.text
    assert status_of(store, address) == KINDS[kind]
    assert status_of(store, other) == ACTIVE
    (row,) = recorded(store)
    assert (row["kind"], row["source"], row["email"]) == (kind, provider, address)
    assert row["subscriber_id"] == store.subscriber(address)["id"]  # type: ignore[index]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_same_event_twice_counts_once(
    pub: Publication, store: Store, https: FakeHttps, keys: Keys, provider: str
) -> None:
    (address,) = add_subscribers(store, 1)
    with serving(pub, https, NEWSLETTER_BOUNCES_SOFT_LIMIT="2") as site:
        # A retry of the same soft bounce is not a second one: two would suppress.
        for _ in range(2):
            response = post(site, provider, report(keys, provider, "soft", address, "2001"))
            assert response.status_code == 200, response.text
        assert status_of(store, address) == ACTIVE
        assert [row["kind"] for row in recorded(store)] == ["soft"]
        post(site, provider, report(keys, provider, "soft", address, "2002"))
        assert status_of(store, address) == BOUNCED
        assert len(recorded(store)) == 2


def test_a_provider_not_configured_is_not_found(
    pub: Publication, store: Store, https: FakeHttps, keys: Keys, monkeypatch
) -> None:
    (address,) = add_subscribers(store, 1)
    monkeypatch.delenv("TEST_SENDGRID_KEY")  # named in [bounces], but not set
    with serving(pub, https, NEWSLETTER_BOUNCES_SES_TOPIC_ARNS="[]") as site:
        for provider in ("ses", "sendgrid", "sparkpost"):
            response = post(site, provider, report(keys, "sendgrid", "hard", address, "1"))
            assert response.status_code == 404, provider
            assert response.headers["x-content-type-options"] == "nosniff"
        assert post(site, "postmark", report(keys, "postmark", "hard", address, "1")).is_success
    assert [row["source"] for row in recorded(store)] == ["postmark"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_is_refused_unread(
    site: Running, store: Store, keys: Keys, chunked: bool
) -> None:
    (address,) = add_subscribers(store, 1)
    event = sendgrid_event("hard", address, "sg-big") | {"padding": "x" * (1024 * 1024)}
    body, headers = sendgrid_signed([event], keys.sendgrid)
    # A body sent in chunks has no Content-Length to refuse it by: the reading stops.
    content = (body[i : i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    response = site.post("/webhooks/sendgrid", content=content, headers=headers)
    assert response.status_code == 413
    assert response.headers["referrer-policy"] == "no-referrer"
    assert recorded(store) == [] and status_of(store, address) == ACTIVE


def test_a_declared_oversized_body_is_refused_before_it_is_sent(site: Running) -> None:
    """The answer comes on the Content-Length alone: the server does not wait for 2 MB."""
    with socket.create_connection((site.server.host, site.server.port), timeout=5) as conn:
        conn.sendall(
            b"POST /webhooks/sendgrid HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
        )
        assert conn.recv(1024).startswith(b"HTTP/1.1 413 ")


def test_only_post_is_answered(site: Running) -> None:
    assert site.get("/webhooks/postmark").status_code == 405


def test_deliveries_and_opens_are_acknowledged_and_ignored(
    site: Running, store: Store, keys: Keys
) -> None:
    (address,) = add_subscribers(store, 1)
    delivery = json.dumps(
        {"notificationType": "Delivery", "mail": {"messageId": "m1"}, "delivery": {}}
    )
    body, headers = postmark_post("hard", address, "1")
    opened = json.dumps({"RecordType": "Open", "MessageID": "m1", "Recipient": address})
    for provider, request in [
        ("ses", sns_post(keys, delivery)),
        # What SES publishes when a topic is set up: verified, not a notification.
        ("ses", sns_post(keys, "Successfully validated SNS topic for Amazon SES.")),
        ("postmark", (opened.encode(), headers)),
        ("sendgrid", sendgrid_signed([{"email": address, "event": "open"}], keys.sendgrid)),
    ]:
        assert post(site, provider, request).status_code == 200, provider
    assert recorded(store) == [] and status_of(store, address) == ACTIVE


# --- Amazon SES through SNS -----------------------------------------------------------------


def test_ses_signature_versions_1_and_2_and_the_certificate_fetched_once(
    site: Running, store: Store, keys: Keys, https: FakeHttps
) -> None:
    first, second = add_subscribers(store, 2)
    one = sns_post(keys, ses_notification("hard", first, "f1"), version="1")
    two = sns_post(keys, ses_notification("complaint", second, "f2"), version="2")
    assert post(site, "ses", one).status_code == 200
    assert post(site, "ses", two).status_code == 200
    assert (status_of(store, first), status_of(store, second)) == (BOUNCED, COMPLAINED)
    assert https.asked == [CERT_URL]
    rows = recorded(store)
    assert [(r["status_code"], r["event_key"]) for r in rows] == [
        ("5.1.1", f"ses:f1:{first}"),
        (None, f"ses:f2:{second}"),
    ]


def test_ses_subscription_is_confirmed_by_visiting_subscribe_url(
    site: Running, store: Store, keys: Keys, https: FakeHttps
) -> None:
    message = f"You have chosen to subscribe to the topic {TOPIC}.\nTo confirm ..."
    request = sns_post(
        keys,
        message,
        kind="SubscriptionConfirmation",
        SubscribeURL=SUBSCRIBE_URL,
        Token="2336412f37fb687f5d51e6e2425c464de",
    )
    assert post(site, "ses", request).status_code == 200
    assert https.asked == [CERT_URL, SUBSCRIBE_URL]
    assert recorded(store) == []


def test_ses_subscription_for_another_topic_is_not_confirmed(
    site: Running, keys: Keys, https: FakeHttps
) -> None:
    request = sns_post(
        keys,
        "confirm",
        kind="SubscriptionConfirmation",
        SubscribeURL=SUBSCRIBE_URL,
        Token="t",
        TopicArn="arn:aws:sns:eu-west-1:999999999999:someone-elses",
    )
    assert post(site, "ses", request).status_code == 403
    assert https.asked == []


FOREIGN_CERT_URLS = [
    "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.eu-west-1.amazonaws.com.attacker.example/SimpleNotificationService-1.pem",
    "https://attacker.example/sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.eu-west-1.amazonaws.com@attacker.example/SimpleNotificationService-1.pem",
    "https://sns.eu-west-1.amazonaws.com:8443/SimpleNotificationService-1.pem",
    "https://sns.eu-west-1.amazonaws.com/not-a-certificate",
]


@pytest.mark.parametrize("cert_url", FOREIGN_CERT_URLS)
def test_ses_a_certificate_from_elsewhere_is_refused_unfetched(
    site: Running, store: Store, keys: Keys, https: FakeHttps, cert_url: str
) -> None:
    (address,) = add_subscribers(store, 1)
    # The forger's own certificate at the forger's URL: it would verify, if it were fetched.
    https.documents[cert_url] = certificate(keys.other_rsa)
    notification = ses_notification("hard", address, "f")
    request = sns_post(keys, notification, signer=keys.other_rsa, SigningCertURL=cert_url)
    response = post(site, "ses", request)
    assert response.status_code == 403
    assert response.text == "forbidden"  # nothing that says which check failed
    assert https.asked == []
    assert recorded(store) == [] and status_of(store, address) == ACTIVE


def test_ses_refuses_another_topic_another_key_and_an_altered_message(
    site: Running, store: Store, keys: Keys, https: FakeHttps
) -> None:
    (address,) = add_subscribers(store, 1)
    notification = ses_notification("hard", address, "f")
    other_topic = sns_post(keys, notification, TopicArn=TOPIC.replace("ses-bounces", "other"))
    other_key = sns_post(keys, notification, signer=keys.other_rsa)
    body, headers = sns_post(keys, ses_notification("complaint", "someone@example.com", "f"))
    altered = body.replace(b"someone@example.com", address.encode()), headers
    for request in (other_topic, other_key, altered):
        assert post(site, "ses", request).status_code == 403
    assert https.asked == [CERT_URL]  # once, and not for the other topic
    assert recorded(store) == [] and status_of(store, address) == ACTIVE


def test_ses_an_expired_certificate_is_refused(
    site: Running, store: Store, keys: Keys, https: FakeHttps
) -> None:
    (address,) = add_subscribers(store, 1)
    https.documents[CERT_URL] = certificate(keys.sns, days=-1)
    assert post(site, "ses", report(keys, "ses", "hard", address, "1")).status_code == 403
    assert recorded(store) == []


def test_ses_a_certificate_that_cannot_be_fetched_asks_for_a_retry(
    site: Running, store: Store, keys: Keys, https: FakeHttps
) -> None:
    (address,) = add_subscribers(store, 1)
    del https.documents[CERT_URL]
    request = report(keys, "ses", "hard", address, "1")
    assert post(site, "ses", request).status_code == 503
    assert recorded(store) == []
    # SNS retries; by then the certificate is there.
    https.documents[CERT_URL] = keys.sns_certificate
    assert post(site, "ses", request).status_code == 200
    assert status_of(store, address) == BOUNCED


def test_sns_string_to_sign_is_the_documented_one() -> None:
    """The example of AWS's "Verifying the signatures of Amazon SNS messages"."""
    message = {
        "Type": "Notification",
        "MessageId": "4d4dc071-ddbf-465d-bba8-08f81c89da64",
        "TopicArn": "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P",
        "Subject": "My subject",
        "Message": "My Test Message",
        "Timestamp": "2019-01-31T04:37:04.321Z",
        "SignatureVersion": "1",
    }
    assert sns.string_to_sign(message, "Notification") == (
        b"Message\nMy Test Message\n"
        b"MessageId\n4d4dc071-ddbf-465d-bba8-08f81c89da64\n"
        b"Subject\nMy subject\n"
        b"Timestamp\n2019-01-31T04:37:04.321Z\n"
        b"TopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n"
        b"Type\nNotification\n"
    )
    del message["Subject"]
    assert b"Subject" not in sns.string_to_sign(message, "Notification")


# --- Postmark -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "credentials",
    [(POSTMARK_USER, "wrong"), ("someone", POSTMARK_PASSWORD), (POSTMARK_USER, "")],
)
def test_postmark_wrong_credentials_are_refused(
    site: Running, store: Store, credentials: tuple[str, str]
) -> None:
    (address,) = add_subscribers(store, 1)
    response = post(site, "postmark", postmark_post("hard", address, "1", credentials))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert recorded(store) == [] and status_of(store, address) == ACTIVE


def test_postmark_without_credentials_is_refused(site: Running, store: Store) -> None:
    (address,) = add_subscribers(store, 1)
    body, _ = postmark_post("hard", address, "1")
    for headers in ({}, {"authorization": "Bearer x"}, {"authorization": "Basic !!"}):
        assert post(site, "postmark", (body, headers)).status_code == 401
    assert recorded(store) == []


def test_postmark_transient_is_soft_and_keeps_the_details(site: Running, store: Store) -> None:
    (address,) = add_subscribers(store, 1)
    body, headers = postmark_post("soft", address, "77")
    transient = body.replace(b'"SoftBounce"', b'"Transient"')
    assert post(site, "postmark", (transient, headers)).status_code == 200
    (row,) = recorded(store)
    assert (row["kind"], row["event_key"], row["status_code"]) == ("soft", "postmark:77", "5.1.1")
    assert status_of(store, address) == ACTIVE


# --- Mailgun --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forged",
    [
        lambda a: mailgun_post("hard", a, "e1", key="key-not-ours"),
        lambda a: mailgun_post("hard", a, "e1", timestamp=int(time.time()) - 301),
        # 30 s beyond the 300 allowed: a loaded machine may take seconds to answer
        lambda a: mailgun_post("hard", a, "e1", timestamp=int(time.time()) + 330),
    ],
    ids=["wrong key", "stale", "from the future"],
)
def test_mailgun_a_wrong_signature_or_timestamp_is_refused(
    site: Running, store: Store, forged: Callable[[str], Request]
) -> None:
    (address,) = add_subscribers(store, 1)
    assert post(site, "mailgun", forged(address)).status_code == 403
    assert recorded(store) == [] and status_of(store, address) == ACTIVE


def test_mailgun_a_replayed_token_is_refused(site: Running, store: Store) -> None:
    first, second = add_subscribers(store, 2)
    request = mailgun_post("hard", first, "e1")
    assert post(site, "mailgun", request).status_code == 200
    assert post(site, "mailgun", request).status_code == 403
    # The same token with another event in the body: the signature still verifies (Mailgun
    # signs timestamp and token only), and the token is what stops it.
    body, headers = request
    other = body.replace(first.encode(), second.encode()).replace(b'"e1"', b'"e2"')
    assert post(site, "mailgun", (other, headers)).status_code == 403
    assert len(recorded(store)) == 1 and status_of(store, second) == ACTIVE


def test_mailgun_an_altered_signature_field_is_refused(site: Running, store: Store) -> None:
    (address,) = add_subscribers(store, 1)
    body, headers = mailgun_post("hard", address, "e1")
    payload = json.loads(body)
    payload["signature"]["token"] = secrets.token_hex(25)
    assert post(site, "mailgun", (json.dumps(payload).encode(), headers)).status_code == 403
    del payload["signature"]
    assert post(site, "mailgun", (json.dumps(payload).encode(), headers)).status_code == 403
    assert recorded(store) == []


# --- SendGrid -------------------------------------------------------------------------------


def test_sendgrid_a_batch_maps_each_event(site: Running, store: Store, keys: Keys) -> None:
    hard, blocked, dropped, complained, opened = add_subscribers(store, 5)
    on_the_bounce_list = {"event": "dropped", "reason": "Bounced Address"}
    events = [
        sendgrid_event("hard", hard, "sg-1"),
        sendgrid_event("soft", blocked, "sg-2"),
        sendgrid_event("hard", dropped, "sg-3") | on_the_bounce_list,
        sendgrid_event("complaint", complained, "sg-4"),
        sendgrid_event("hard", opened, "sg-5") | {"event": "open"},
        sendgrid_event("hard", opened, "sg-6") | {"event": "dropped", "reason": "Spam Content"},
    ]
    assert post(site, "sendgrid", sendgrid_signed(events, keys.sendgrid)).status_code == 200
    assert [(r["email"], r["kind"], r["event_key"]) for r in recorded(store)] == [
        (hard, "hard", "sendgrid:sg-1"),
        (blocked, "soft", "sendgrid:sg-2"),
        (dropped, "hard", "sendgrid:sg-3"),
        (complained, "complaint", "sendgrid:sg-4"),
    ]
    assert [status_of(store, a) for a in (hard, blocked, dropped, complained, opened)] == [
        BOUNCED,
        ACTIVE,
        BOUNCED,
        COMPLAINED,
        ACTIVE,
    ]


def test_sendgrid_a_wrong_key_a_stale_timestamp_or_an_altered_body_is_refused(
    site: Running, store: Store, keys: Keys
) -> None:
    (address,) = add_subscribers(store, 1)
    events = [sendgrid_event("hard", address, "sg-1")]
    body, headers = sendgrid_signed(events, keys.sendgrid)
    stale = sendgrid_signed(events, keys.sendgrid, timestamp=int(time.time()) - 301)
    unsigned = {k: v for k, v in headers.items() if "Signature" not in k}
    for request in [
        sendgrid_signed(events, keys.other_ec),
        stale,
        (body.replace(b"sg-1", b"sg-9"), headers),
        (body, headers | {"X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()) + 1)}),
        (body, unsigned),
        (body, headers | {"X-Twilio-Email-Event-Webhook-Signature": "not base64!"}),
    ]:
        assert post(site, "sendgrid", request).status_code == 403
    assert recorded(store) == [] and status_of(store, address) == ACTIVE


def test_sendgrid_a_key_that_is_not_p256_stops_the_site(
    pub: Publication, https: FakeHttps, monkeypatch
) -> None:
    monkeypatch.setenv("TEST_SENDGRID_KEY", "bm90IGEga2V5")
    with pytest.raises(ConfigError, match="TEST_SENDGRID_KEY"):
        site_mod.Site(pub.config(), fetch=https)


# --- VERP: the envelope sender names the campaign and the subscriber ---------------------------


def test_a_verp_sender_names_the_subscriber_whatever_address_bounced(
    pub: Publication, site: Running, store: Store
) -> None:
    first, second = add_subscribers(store, 2)
    config = pub.config()
    built = publish.build_issue(config, publish.load_issue(pub.issue))
    cid = lifecycle.create(store, built)
    campaign.run(store, config, cid)
    sid = store.subscriber(first)["id"]  # type: ignore[index]
    verp = tokens.verp_address(VERP_BASE, SECRET, cid, sid)
    # The mailbox forwards: the bounce names the address it was forwarded to.
    request = mailgun_post("hard", "first@forwarded.example", "e1", sender=verp)
    assert post(site, "mailgun", request).status_code == 200
    assert (status_of(store, first), status_of(store, second)) == (BOUNCED, ACTIVE)
    (row,) = recorded(store)
    assert (row["campaign_id"], row["subscriber_id"]) == (cid, sid)


def test_a_verp_sender_for_a_delivery_never_made_is_not_believed(
    site: Running, store: Store
) -> None:
    first, second = add_subscribers(store, 2)
    sid = store.subscriber(first)["id"]  # type: ignore[index]
    verp = tokens.verp_address(VERP_BASE, SECRET, 99, sid)  # signed, but no campaign 99
    forged = tokens.verp_address(VERP_BASE, b"another secret", 1, sid)
    assert post(site, "mailgun", mailgun_post("hard", second, "e1", sender=verp)).is_success
    assert post(site, "mailgun", mailgun_post("hard", second, "e2", sender=forged)).is_success
    # Matched by the bounced address instead.
    assert (status_of(store, first), status_of(store, second)) == (ACTIVE, BOUNCED)
    assert [r["campaign_id"] for r in recorded(store)] == [None, None]


# --- configuration --------------------------------------------------------------------------


def test_valid_settings_are_read(pub: Publication) -> None:
    assert pub.config().bounces.ses_topic_arns == (TOPIC,)


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"NEWSLETTER_BOUNCES_SES_TOPIC_ARNS": '["ses-bounces"]'}, "ses_topic_arns"),
        (
            {"NEWSLETTER_BOUNCES_SES_TOPIC_ARNS": '["arn:aws:sqs:eu-west-1:123456789012:q"]'},
            "ses_topic_arns",
        ),
        ({"NEWSLETTER_BOUNCES_POSTMARK_PASSWORD_ENV": ""}, "postmark_password_env"),
        ({"NEWSLETTER_BOUNCES_POSTMARK_USERNAME": ""}, "postmark_username"),
        ({"NEWSLETTER_BOUNCES_POSTMARK_USERNAME": "a:b"}, "postmark_username"),
    ],
)
def test_webhook_settings_are_checked(pub: Publication, settings: dict[str, str], needle: str):
    with pytest.raises(ConfigError, match=f"\\[bounces\\] {needle}"):
        pub.config(**settings)
