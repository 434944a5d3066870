"""A campaign to the whole list (or a segment of it): what `send ISSUE --all` and the
console's "Send now" both do before the send itself, in one place.

    plan = whole_list.plan(store, config, built, repeat, segment)   # checks, counts
    plan.question()                                                # "Send ... to 1,234?"
    campaign_id = whole_list.create(store, plan)                   # then campaign.run

`plan` refuses an issue with check errors and, by "one issue once", an issue an earlier
campaign sent unless `repeat` says otherwise (once.IssueAlreadySent; once.NobodyLeft when
--new-only finds everyone has it). `create` refuses an empty audience (NoAudience) and
checks "one issue once" again in the transaction that makes the campaign: the person's
answer to the question may have taken a while.
"""

from __future__ import annotations

from dataclasses import dataclass

from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.issue import publish
from newsletter.ledger import lifecycle, once
from newsletter.ledger.store import Store
from newsletter.segments import Segment


class NoAudience(NewsletterError):
    """Nobody to send to: no active subscriber, or none in the segment."""


@dataclass(frozen=True)
class SendPlan:
    """A campaign about to be made: the issue, whom it reaches and how many."""

    built: publish.BuiltIssue
    history: once.IssueHistory
    repeat: once.Repeat
    segment: Segment | None
    count: int

    def question(self) -> str:
        """The confirmation a person answers: it states the count."""
        subject = self.built.issue.subject
        if self.segment is not None:
            before = f"{self.history.summary()}; s" if self.history.earlier else "S"
            return (
                f"{before}end {subject!r} to the {self.count:,} subscriber(s)"
                f" of segment {self.segment.describe()}?"
            )
        if not self.history.earlier:
            return f"Send {subject!r} to {self.history.active:,} subscriber(s)?"
        if self.repeat is once.Repeat.NEW_ONLY:
            return (
                f"{self.history.summary()}; send to {self.history.newcomers:,}"
                " who have not had it?"
            )
        return f"{self.history.summary()}; send it again to all {self.history.active:,}?"

    def refuse_empty(self) -> None:
        """NoAudience when the campaign would reach nobody."""
        if self.count:
            return
        if self.segment is not None:
            newcomers = (
                " who has not had this issue" if self.repeat is once.Repeat.NEW_ONLY else ""
            )
            raise NoAudience(
                f"segment {self.segment.describe()}: no active subscriber in it{newcomers};"
                " no campaign made"
            )
        raise NoAudience("no active subscribers: import some with `newsletter subscribers import`")


def plan(
    store: Store,
    config: Config,
    built: publish.BuiltIssue,
    repeat: once.Repeat = once.Repeat.REFUSE,
    segment: Segment | None = None,
) -> SendPlan:
    """Check the issue and count its audience (nothing is written)."""
    publish.refuse_on_check_errors(config, built, "sending")
    history = once.issue_history(store, built.issue.slug)
    history.check(built.issue.path, repeat, at_once=True)
    if segment is None:
        count = history.audience(repeat)
    else:
        count = once.audience_size(store, built.issue.slug, repeat, segment)
    return SendPlan(built, history, repeat, segment, count)


def create(store: Store, chosen: SendPlan) -> int:
    """Make the campaign of a plan (its deliveries pending); its id, for campaign.run."""
    chosen.refuse_empty()
    return lifecycle.create(store, chosen.built, repeat=chosen.repeat, segment=chosen.segment)
