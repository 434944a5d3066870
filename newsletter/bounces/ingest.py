"""One message that came back, classified and recorded: what `bounces ingest` and each
message of `bounces fetch` do.

Recording is the ledger's (ledger/bounces.record): once per event_key, and the
suppression rules in the same transaction. The one thing decided here is whether a VERP
token is believed: its signature is checked when it is read (tokens.read_verp), and the
pair it names must be a delivery the ledger made, or the report goes by its address.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass

from newsletter.bounces.classify import classify
from newsletter.config import Bounces
from newsletter.ledger import bounces as ledger
from newsletter.ledger.bounces import COMPLAINT, HARD, SOFT, Bounce, Recorded
from newsletter.ledger.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """One report and what recording it did."""

    bounce: Bounce
    recorded: Recorded

    @property
    def who(self) -> str:
        return self.bounce.email or f"subscriber {self.recorded.subscriber_id}"

    @property
    def effect(self) -> str:
        """suppressed (bounced), seen before, recorded or recorded (not on the list)."""
        if not self.recorded.new:
            return "seen before"
        if self.recorded.suppressed:
            return f"suppressed ({self.recorded.suppressed})"
        if self.recorded.subscriber_id is None:
            return "recorded (not on the list)"
        return "recorded"


@dataclass(frozen=True)
class Ingested:
    """What one message did: one outcome per report, or why it was ignored."""

    outcomes: tuple[Outcome, ...]
    sender: str
    ignored: str = ""


def ingest(
    store: Store,
    settings: Bounces,
    secret: bytes,
    raw: bytes,
    where: str = "the message",
    now: dt.datetime | None = None,
) -> Ingested:
    """Classify `raw` and record each report; NotMail when it is not a message."""
    classified = classify(raw, secret, where)
    outcomes = []
    for bounce in classified.bounces:
        bounce = _believed(store, bounce)
        recorded = ledger.record(store, bounce, settings.soft_limit, settings.soft_days, now)
        outcome = Outcome(bounce, recorded)
        log.info("%s: %s %s, %s", outcome.who, bounce.kind, bounce.status_code, outcome.effect)
        outcomes.append(outcome)
    return Ingested(tuple(outcomes), classified.sender, classified.ignored)


def _believed(store: Store, bounce: Bounce) -> Bounce:
    """The report as believed: without its campaign and subscriber when the ledger never
    sent that campaign to that subscriber (a token signed with a leaked secret, or one
    from a database restored from before the campaign)."""
    if bounce.campaign_id is None or bounce.subscriber_id is None:
        return bounce
    if ledger.delivery_of(store, bounce.campaign_id, bounce.subscriber_id):
        return bounce
    log.warning(
        "%s: VERP names campaign %s and subscriber %s, which the ledger has no delivery"
        " for; matched by address",
        bounce.event_key,
        bounce.campaign_id,
        bounce.subscriber_id,
    )
    return dataclasses.replace(bounce, campaign_id=None, subscriber_id=None)


@dataclass
class Summary:
    """What a run of `bounces fetch` did, counted: reports recorded now, by kind."""

    messages: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    ignored: int = 0  # messages that made no report (auto-replies, not bounces, not mail)
    suppressed: int = 0  # subscribers suppressed now
    seen_before: int = 0  # reports recorded by an earlier run (or one at the same time)

    def add(self, ingested: Ingested) -> None:
        self.messages += 1
        if not ingested.outcomes:
            self.ignored += 1
        for outcome in ingested.outcomes:
            if not outcome.recorded.new:
                self.seen_before += 1
                continue
            kind = outcome.bounce.kind
            self.hard += kind == HARD
            self.soft += kind == SOFT
            self.complaints += kind == COMPLAINT
            self.suppressed += outcome.recorded.suppressed is not None

    def add_not_mail(self) -> None:
        self.messages += 1
        self.ignored += 1
