"""The one plain-Python API that chains the steps; the CLI, scheduler and workers call it.

    issue file -> content -> render (+ sponsor) -> inline CSS -> message -> (send)

`build_issue` does the expensive work once per issue. `personal_values` and
`MessageTemplate.render` are all that runs per recipient.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path

from markupsafe import Markup

from newsletter import tokens
from newsletter.config import Config, Sponsor
from newsletter.errors import CheckFailed, NewsletterError
from newsletter.fileio import write_files
from newsletter.issue import check, inline, markdown, render, spam, sponsor, tracked_links
from newsletter.issue.content import Issue, read_issue
from newsletter.mail.dkim import DkimSigner
from newsletter.mail.message import Envelope, MessageTemplate


@dataclass(frozen=True)
class BuiltIssue:
    issue: Issue
    sponsor: Sponsor | None
    html: render.SlotTemplate  # final inlined HTML with slot markers
    text: render.SlotTemplate  # plain-text part with slot markers
    sponsor_html: str
    sponsor_text: str


@dataclass(frozen=True)
class Outputs:
    html: Path
    text: Path
    eml: Path


def load_issue(path: Path | str) -> Issue:
    return read_issue(Path(path))


def build_issue(config: Config, issue: Issue) -> BuiltIssue:
    """Markdown, layout, sponsor block and premailer: once per issue."""
    env = render.environment(config.templates_dir)
    chosen = sponsor.choose(config, issue)
    context = {
        "publication": config.publication,
        "issue": {
            "title": issue.title,
            "subject": issue.subject,
            "preheader": issue.preheader,
            "slug": issue.slug,
            "date": issue.date,
            "date_label": f"{issue.date:%B} {issue.date.day}, {issue.date.year}",
            "author": issue.author,
            "source": issue.source,
        },
    }
    sponsor_html = sponsor_text = ""
    if chosen is not None:
        blk = sponsor.block(config, issue, chosen)
        sponsor_context = {
            **context,
            "sponsor": {**vars(blk.sponsor), "url": blk.url, "tel": blk.tel},
        }
        sponsor_html = render.render(env, "sponsor.html", sponsor_context).strip()
        sponsor_text = render.render(env, "sponsor.txt", sponsor_context).strip()
    html = render.render(
        env,
        render.HTML_TEMPLATE,
        {
            **context,
            "body_html": Markup(markdown.to_html(issue.body)),
            "sponsor_html": Markup(sponsor_html),
        },
    )
    text = render.render(
        env,
        render.TEXT_TEMPLATE,
        {
            **context,
            "body_text": markdown.to_text(issue.body).rstrip(),
            "sponsor_text": sponsor_text,
        },
    )
    return BuiltIssue(
        issue=issue,
        sponsor=chosen,
        html=render.html_slots(inline.inline_css(html)),
        text=render.text_slots(text),
        sponsor_html=sponsor_html,
        sponsor_text=sponsor_text,
    )


class Personalizer:
    """The slot values for one recipient: all the per-recipient work besides MIME and SMTP."""

    def __init__(self, config: Config, slug: str, signer: tokens.Signer | None = None) -> None:
        self.config = config
        self.signer = signer or tokens.Signer(tokens.load_secret(config))
        self.view_online_url = tokens.view_online_url(config, slug)
        self._unsubscribe_base = tokens.unsubscribe_url(config, "")

    def values(self, email: str, name: str) -> tuple[dict[str, str], str]:
        """(slot values, unsubscribe token) for one recipient."""
        token = self.signer.sign(email)
        return {
            "name": name or "there",
            "email": email,
            "unsubscribe_url": self._unsubscribe_base + token,
            "view_online_url": self.view_online_url,
        }, token


def message_template(
    config: Config, built: BuiltIssue, subject_prefix: str = ""
) -> MessageTemplate:
    return envelope_template(
        config, f"{subject_prefix}{built.issue.subject}", built.html, built.text
    )


def envelope_template(
    config: Config,
    subject: str,
    html: render.SlotTemplate,
    text: render.SlotTemplate,
    feedback_id: str = "",
) -> MessageTemplate:
    """The message template for this publication: its headers, and DKIM when configured."""
    pub = config.publication
    return MessageTemplate(
        Envelope(
            from_addr=pub.from_addr,
            subject=subject,
            reply_to=pub.reply_to,
            list_id=pub.list_id,
            list_name=pub.name,
            feedback_id=feedback_id,
        ),
        html,
        text,
        dkim=DkimSigner.from_config(config),
    )


@dataclass(frozen=True)
class Sample:
    """The issue as the sample subscriber gets it: what `build` writes and `check` reads."""

    html: str
    text: str
    message: bytes
    unsubscribe_url: str
    # Each tracked link in it -> where it leads (the preview shows it on hover).
    destinations: Mapping[str, str] = field(default_factory=dict)


def sample(config: Config, built: BuiltIssue, when: dt.datetime | None = None) -> Sample:
    """The message for the sample subscriber, with the links readers get: where sending
    tracks clicks, the tracked links of send/campaign's code path (tracked_links.rewrite),
    their tokens made for a placeholder campaign and subscriber (there is none yet)."""
    values, token = Personalizer(config, built.issue.slug).values(
        config.sample.email, config.sample.name
    )
    html, text = built.html, built.text
    destinations: dict[str, str] = {}
    if tracked_links.tracking_on(config):
        tracked = tracked_links.rewrite(html.source, text.source, config.tracking.clicks)
        if tracked.links:
            html, text = render.html_slots(tracked.html), render.text_slots(tracked.text)
            signer = tracked_links.ClickSigner(tokens.load_secret(config))
            slots = tracked_links.LinkSlots(
                config, signer, tracked_links.PLACEHOLDER_CAMPAIGN, len(tracked.links)
            )
            link_values = slots.values(tracked_links.PLACEHOLDER_SUBSCRIBER)
            values.update(link_values)
            destinations = {link_values[f"link{link.idx}"]: link.url for link in tracked.links}
    template = envelope_template(config, built.issue.subject, html, text)
    date = None
    if when is not None:
        date = format_datetime(when)
    message = template.render(
        config.sample.email,
        config.sample.name,
        values,
        token,
        date=date,
    )
    return Sample(
        html=html.fill(values),
        text=text.fill(values),
        message=message,
        unsubscribe_url=values["unsubscribe_url"],
        destinations=destinations,
    )


def check_subject(config: Config, built: BuiltIssue, filled: Sample) -> check.Subject:
    """What `check` looks at: the issue as the sample subscriber gets it."""
    return check.Subject(
        subject=built.issue.subject,
        preheader=built.issue.preheader,
        html=filled.html,
        text=filled.text,
        unsubscribe_url=filled.unsubscribe_url,
        postal_address=config.publication.postal_address,
        sponsor_name=built.sponsor.name if built.sponsor else None,
        sponsor_label=built.sponsor.label if built.sponsor else "",
        sponsor_html=built.sponsor_html,
        # The block as the text part shows it: with the tracked links readers get.
        sponsor_text=_with_tracked_links(built.sponsor_text, filled.destinations),
        message=filled.message,
    )


def check_built(config: Config, built: BuiltIssue, filled: Sample) -> list[check.Finding]:
    findings = check.check(check_subject(config, built, filled))
    problem = sponsor.booking_problem(config, built.issue)
    if problem:
        findings.insert(0, check.Finding("error", "sponsor-not-booked", problem, "front matter"))
    findings += check.source_findings(built.issue)
    return findings


def _with_tracked_links(text: str, destinations: Mapping[str, str]) -> str:
    """The text with its links replaced by the tracked ones, as rewrite replaces them in
    the text part: longest first, so a URL that begins another is not cut, and in one
    pass, so a tracked link (which begins with base_url) is not replaced again."""
    if not destinations:
        return text
    tracked_for = {url: tracked for tracked, url in destinations.items()}
    urls = sorted(tracked_for, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, urls)))
    return pattern.sub(lambda match: tracked_for[match.group(0)], text)


def refuse_on_check_errors(config: Config, built: BuiltIssue, doing: str) -> None:
    """CheckFailed when `check` finds errors in the built issue: nothing is `doing`
    (sending, scheduling) until they are fixed."""
    errors = [f for f in check_built(config, built, sample(config, built)) if f.level == "error"]
    if errors:
        raise CheckFailed(
            f"{built.issue.path}: check found {len(errors)} error(s) (first: {errors[0].message});"
            f" fix them before {doing}"
        )


def check_issue(config: Config, path: Path | str, spam_score: bool = False) -> list[check.Finding]:
    """The lint's findings, errors first; with `spam_score`, then SpamAssassin's rules
    and its total, scoring the message `build` writes (an error over [check] spam_max)."""
    built = build_issue(config, load_issue(path))
    filled = sample(config, built)
    findings = check_built(config, built, filled)
    if spam_score:
        findings += spam.findings(spam.score(filled.message), config.check.spam_max)
    return findings


def write_build(
    config: Config, path: Path | str, out_dir: Path | None = None, force: bool = False
) -> tuple[Outputs, list[check.Finding]]:
    """Build an issue and write <slug>.html, .txt and .eml; refuse on check errors unless forced.

    All three files are written or none is.
    """
    built = build_issue(config, load_issue(path))
    filled = sample(config, built)
    findings = check_built(config, built, filled)
    if check.has_errors(findings) and not force:
        first = next(f for f in findings if f.level == "error")
        count = sum(f.level == "error" for f in findings)
        raise CheckFailed(
            f"{built.issue.path}: {count} check error(s), nothing written"
            f" (first: {first.message}); run `newsletter check` for all, or --force"
        )
    out_dir = out_dir or config.output_dir
    slug = built.issue.slug
    outputs = Outputs(
        html=out_dir / f"{slug}.html", text=out_dir / f"{slug}.txt", eml=out_dir / f"{slug}.eml"
    )
    if out_dir.exists() and not out_dir.is_dir():
        raise NewsletterError(f"{out_dir}: exists and is not a folder")
    write_files(
        {
            outputs.html: filled.html.encode("utf-8"),
            outputs.text: filled.text.encode("utf-8"),
            outputs.eml: filled.message,
        }
    )
    return outputs, findings
