"""What the list holds about one person, and erasing it: `subscribers export` (the
right of access, GDPR art. 15) and `subscribers erase` (erasure, art. 17); and the
counts per status.

Erasing keeps the campaigns' statistics. The subscriber's delivery rows stay, on the
same row made anonymous: address `erased-<id>@invalid` (RFC 2606 reserves .invalid,
so nothing can ever be sent to it), no name, no attributes, status unsubscribed (the
statuses are not ours to extend, and unsubscribed is what the row now is: off the
list). Their clicks are deleted; their bounce reports keep kind, time and status code,
for the campaigns' bounce counts, and lose the address and the diagnostic (a server's
reply quotes the address). Of the address itself only its hash stays, in `erased`
(`store.erasure_hash`), so that an import made before the erasure is refused rather
than bringing the person back.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from newsletter import addresses
from newsletter.errors import NewsletterError
from newsletter.ledger.store import Store, erasure_hash
from newsletter.ledger.tables import (
    SUBSCRIBER_STATUSES,
    UNSUBSCRIBED,
    bounces,
    campaign_links,
    campaigns,
    clicks,
    deliveries,
    erased,
    subscribers,
    tags,
    utcnow,
)


class NotOnList(NewsletterError):
    """The list holds nothing about the address: no subscriber, no report, no erasure."""


def placeholder(subscriber_id: int) -> str:
    """The address an erased subscriber's row keeps: unique, and undeliverable."""
    return f"erased-{subscriber_id}@invalid"


def status_counts(store: Store) -> dict[str, int]:
    """The number of subscribers with each status, every status named (0 for none)."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(subscribers.c.status, sa.func.count()).group_by(subscribers.c.status)
        ).all()
    counts = dict.fromkeys(SUBSCRIBER_STATUSES, 0)
    counts.update({status: int(n) for status, n in rows})
    return counts


# --- erase ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Erasure:
    """What `erase` did."""

    email: str  # as it was stored (as given when no subscriber was left)
    erased_at: dt.datetime  # now, or when it was erased before
    erased_now: bool  # False: erased before, no subscriber left to erase
    placeholder: str | None  # the anonymous row its deliveries stay on
    deliveries: int  # kept, on that row
    clicks: int  # deleted
    bounces: int  # reports cleared of the address and diagnostic


def erase(store: Store, email: str, now: dt.datetime | None = None) -> Erasure:
    """Erase what the list holds about `email`, in one transaction (see the module's
    docstring). An address erased before, with nothing left of it, is reported as such;
    one the list never held is NotOnList."""
    now = now or utcnow()
    key = addresses.key(email)
    digest = erasure_hash(email)
    with store.begin() as conn:
        row = conn.execute(
            sa.select(subscribers.c.id, subscribers.c.email)
            .where(subscribers.c.email_key == key)
            .with_for_update()
        ).one_or_none()
        before = conn.execute(
            sa.select(erased.c.erased_at).where(erased.c.email_hash == digest)
        ).scalar_one_or_none()
        # Reports of the address not tied to the row (it bounced before it was on the
        # list, or after an earlier erasure) hold the address too.
        about = sa.func.lower(bounces.c.email) == key
        if row is not None:
            about = sa.or_(about, bounces.c.subscriber_id == row.id)
        cleared = conn.execute(
            bounces.update()
            .where(about)
            .values(
                email=placeholder(row.id) if row is not None else "erased@invalid",
                diagnostic=None,
            )
        ).rowcount
        if row is None:
            if before is None and not cleared:
                raise NotOnList(f"{email}: not on the list, nothing to erase")
            return Erasure(email, before or now, False, None, 0, 0, cleared)
        gone = conn.execute(clicks.delete().where(clicks.c.subscriber_id == row.id)).rowcount
        # Tags say things about the person, as attributes do.
        conn.execute(tags.delete().where(tags.c.subscriber_id == row.id))
        # A server's reply in last_error quotes the address; the status stays, for the
        # campaign's counts.
        kept = conn.execute(
            deliveries.update().where(deliveries.c.subscriber_id == row.id).values(last_error=None)
        ).rowcount
        conn.execute(
            subscribers.update()
            .where(subscribers.c.id == row.id)
            .values(
                email=placeholder(row.id),
                email_key=placeholder(row.id),
                name="",
                attributes="{}",
                status=UNSUBSCRIBED,
                unsubscribed_at=now,
                confirm_sent_at=None,
            )
        )
        if before is None:
            conn.execute(erased.insert().values(email_hash=digest, erased_at=now))
        else:  # erased before, added again since: this is the erasure that counts now
            conn.execute(
                erased.update().where(erased.c.email_hash == digest).values(erased_at=now)
            )
    return Erasure(row.email, now, True, placeholder(row.id), kept, gone, cleared)


# --- export -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriberRecord:
    email: str
    name: str
    attributes: dict[str, str]
    status: str
    created_at: dt.datetime
    unsubscribed_at: dt.datetime | None
    confirm_sent_at: dt.datetime | None  # when a signup confirmation last went out
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeliveryRecord:
    campaign_id: int
    issue: str  # the issue's slug
    subject: str
    status: str
    sent_at: dt.datetime | None


@dataclass(frozen=True)
class ClickRecord:
    campaign_id: int
    url: str | None  # None: the campaign's links are gone
    clicked_at: dt.datetime
    suspected_bot: bool


@dataclass(frozen=True)
class BounceRecord:
    kind: str  # hard, soft, complaint
    received_at: dt.datetime
    source: str
    status_code: str | None
    diagnostic: str | None
    campaign_id: int | None


@dataclass(frozen=True)
class PersonalData:
    """Every record the list holds about one address."""

    email: str
    erased_at: dt.datetime | None  # when it was erased at the person's request, if it was
    subscriber: SubscriberRecord | None  # None: not (or no longer) on the list
    deliveries: tuple[DeliveryRecord, ...]
    clicks: tuple[ClickRecord, ...]
    bounces: tuple[BounceRecord, ...]

    def as_dict(self) -> dict[str, Any]:
        """For JSON: times in ISO 8601 (UTC)."""
        return _iso(asdict(self))


def _iso(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _iso(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_iso(v) for v in value]
    return value


def export(store: Store, email: str) -> PersonalData:
    """Every record about `email`, in one consistent read; NotOnList when there is none."""
    key = addresses.key(email)
    with store.engine.connect() as conn, conn.begin():
        row = conn.execute(
            sa.select(subscribers).where(subscribers.c.email_key == key)
        ).one_or_none()
        when = conn.execute(
            sa.select(erased.c.erased_at).where(erased.c.email_hash == erasure_hash(email))
        ).scalar_one_or_none()
        about = sa.func.lower(bounces.c.email) == key
        if row is not None:
            about = sa.or_(about, bounces.c.subscriber_id == row.id)
        reports = tuple(
            BounceRecord(
                r.kind, r.received_at, r.source, r.status_code, r.diagnostic, r.campaign_id
            )
            for r in conn.execute(sa.select(bounces).where(about).order_by(bounces.c.id))
        )
        if row is None:
            if when is None and not reports:
                raise NotOnList(f"{email}: not on the list, and no record of it")
            return PersonalData(email, when, None, (), (), reports)
        sent = tuple(
            DeliveryRecord(r.campaign_id, r.issue_slug, r.subject, r.status, r.sent_at)
            for r in conn.execute(
                sa.select(
                    deliveries.c.campaign_id,
                    campaigns.c.issue_slug,
                    campaigns.c.subject,
                    deliveries.c.status,
                    deliveries.c.sent_at,
                )
                .join(campaigns, campaigns.c.id == deliveries.c.campaign_id)
                .where(deliveries.c.subscriber_id == row.id)
                .order_by(deliveries.c.id)
            )
        )
        clicked = tuple(
            ClickRecord(r.campaign_id, r.url, r.clicked_at, r.suspected_bot)
            for r in conn.execute(
                sa.select(
                    clicks.c.campaign_id,
                    campaign_links.c.url,
                    clicks.c.clicked_at,
                    clicks.c.suspected_bot,
                )
                .outerjoin(
                    campaign_links,
                    sa.and_(
                        campaign_links.c.campaign_id == clicks.c.campaign_id,
                        campaign_links.c.idx == clicks.c.link_idx,
                    ),
                )
                .where(clicks.c.subscriber_id == row.id)
                .order_by(clicks.c.id)
            )
        )
        tagged = tuple(
            conn.execute(
                sa.select(tags.c.tag).where(tags.c.subscriber_id == row.id).order_by(tags.c.tag)
            ).scalars()
        )
    subscriber = SubscriberRecord(
        row.email,
        row.name,
        json.loads(row.attributes or "{}"),
        row.status,
        row.created_at,
        row.unsubscribed_at,
        row.confirm_sent_at,
        tagged,
    )
    return PersonalData(row.email, when, subscriber, sent, clicked, reports)
