"""The one plain-Python API that chains the steps; the CLI, scheduler and workers call it.

    issue file -> content -> render (+ sponsor) -> inline CSS -> message -> (send)

`build_issue` does the expensive work once per issue. `personal_values` and
`MessageTemplate.render` are all that runs per recipient.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup

from newsletter import tokens
from newsletter.config import Config, Sponsor
from newsletter.errors import CheckFailed, NewsletterError
from newsletter.fileio import write_files
from newsletter.issue import check, fields, inline, markdown, render, spam, sponsor, tracked_links
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
    subject: str  # the subject with its merge fields as slot markers
    fields: tuple[fields.Field, ...] = ()  # the merge fields of the body and the subject

    @property
    def slots(self) -> set[str]:
        return self.html.slots | self.text.slots | set(render.MARKER.findall(self.subject))


@dataclass(frozen=True)
class Outputs:
    html: Path
    text: Path
    eml: Path


def load_issue(path: Path | str) -> Issue:
    return read_issue(Path(path))


def subject_slots(subject: str, where: str = "subject") -> tuple[str, tuple[fields.Field, ...]]:
    """The subject with its merge fields as slot markers, and the fields."""
    marked = fields.mark(subject, lambda _: where, lambda _, f: render.marker(f.slot))
    return marked.text, marked.fields


def _subject_line(issue: Issue) -> str:
    """Where the subject is written, for an error: its front matter line."""
    try:
        lines = issue.path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return f"{issue.path}: subject"
    for n, line in enumerate(lines[: issue.body_line], 1):
        if line.startswith("subject:"):
            return f"{issue.path}:{n}"
    return f"{issue.path}: subject"


def build_issue(config: Config, issue: Issue) -> BuiltIssue:
    """Markdown, layout, sponsor block and premailer: once per issue. Merge fields become
    slot markers before Markdown sees them (as stand-ins it leaves alone)."""
    env = render.environment(config.templates_dir)
    chosen = sponsor.choose(config, issue)
    subject, subject_fields = (
        subject_slots(issue.subject, _subject_line(issue))
        if "{{" in issue.subject
        else (issue.subject, ())
    )
    body = fields.mark(
        issue.body,
        lambda at: f"{issue.path}:{issue.body_line + fields.line_at(issue.body, at)}",
        fields.stand_in,
    )

    def slotted(text: str) -> str:
        return fields.swap_stand_ins(text, body.fields, render.marker)

    context = {
        "publication": config.publication,
        "issue": {
            "title": issue.title,
            "subject": subject,
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
    body_html = markdown.to_html(body.text)
    if body.fields:
        fields.refuse_in_addresses(body_html, body)
    html = render.render(
        env,
        render.HTML_TEMPLATE,
        {
            **context,
            "body_html": Markup(slotted(body_html)),
            "sponsor_html": Markup(sponsor_html),
        },
    )
    text = render.render(
        env,
        render.TEXT_TEMPLATE,
        {
            **context,
            "body_text": slotted(markdown.to_text(body.text)).rstrip(),
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
        subject=subject,
        fields=tuple(dict.fromkeys(subject_fields + body.fields)),
    )


class Personalizer:
    """The slot values for one recipient: all the per-recipient work besides MIME and SMTP."""

    def __init__(
        self,
        config: Config,
        slug: str,
        signer: tokens.Signer | None = None,
        slots: Iterable[str] = (),
    ) -> None:
        self.config = config
        self.signer = signer or tokens.Signer(tokens.load_secret(config))
        self.view_online_url = tokens.view_online_url(config, slug)
        self._unsubscribe_base = tokens.unsubscribe_url(config, "")
        # The merge fields among the template's slots (`slots`), filled per recipient.
        self.fields = fields.Values(fields.in_slots(slots))
        self._has_fields = bool(self.fields)

    def values(
        self, email: str, name: str, attributes: str | Mapping[str, Any] = ""
    ) -> tuple[dict[str, str], str]:
        """(slot values, unsubscribe token) for one recipient; `attributes` (the stored
        JSON text, or a mapping) is read only when the issue has merge fields."""
        token = self.signer.sign(email)
        values = {
            "name": name or "there",
            "email": email,
            "unsubscribe_url": self._unsubscribe_base + token,
            "view_online_url": self.view_online_url,
        }
        if self._has_fields:
            self.fields.fill(values, email, name, attributes)
        return values, token


def message_template(
    config: Config, built: BuiltIssue, subject_prefix: str = ""
) -> MessageTemplate:
    return envelope_template(config, f"{subject_prefix}{built.subject}", built.html, built.text)


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
    subject: str = ""  # its merge fields filled


@dataclass(frozen=True)
class Reader:
    """Whom a sample is filled for: [sample], or a subscriber the preview picked."""

    email: str
    name: str
    attributes: str | Mapping[str, Any] = ""

    @classmethod
    def from_config(cls, config: Config) -> Reader:
        return cls(config.sample.email, config.sample.name, config.sample.attributes)


def sample(
    config: Config,
    built: BuiltIssue,
    when: dt.datetime | None = None,
    reader: Reader | None = None,
) -> Sample:
    """The message for the sample subscriber (or `reader`), with the links readers get:
    where sending tracks clicks, the tracked links of send/campaign's code path
    (tracked_links.rewrite), their tokens made for a placeholder campaign and subscriber
    (there is none yet)."""
    reader = reader or Reader.from_config(config)
    values, token = Personalizer(config, built.issue.slug, slots=built.slots).values(
        reader.email, reader.name, reader.attributes
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
    template = envelope_template(config, built.subject, html, text)
    date = None
    if when is not None:
        date = format_datetime(when)
    message = template.render(reader.email, reader.name, values, token, date=date)
    return Sample(
        html=html.fill(values),
        text=text.fill(values),
        message=message,
        unsubscribe_url=values["unsubscribe_url"],
        destinations=destinations,
        subject=template.subject(values),
    )


def check_subject(config: Config, built: BuiltIssue, filled: Sample) -> check.Subject:
    """What `check` looks at: the issue as the sample subscriber gets it."""
    return check.Subject(
        subject=filled.subject,
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


def field_findings(built: BuiltIssue, audience: Audience) -> list[check.Finding]:
    """A warning for each merge field without a default that comes out empty for some
    subscribers: they would read "Hello ," (counted over the whole list, streamed)."""
    # One warning a key, however many expressions use it without a default.
    undefaulted: dict[str, list[fields.Field]] = {}
    for field_ in built.fields:
        if not field_.has_default:
            undefaulted.setdefault(field_.key, []).append(field_)
    if not undefaulted:
        return []
    rows = audience()
    if rows is None:
        return []
    missing = dict.fromkeys(undefaulted, 0)
    total = 0
    for row in rows:
        total += 1
        reader = fields.Subscriber(row.email, row.name, row.attributes)
        for key, used in undefaulted.items():
            if not all(f.value(reader) for f in used):
                missing[key] += 1
    return [
        check.Finding(
            "warning",
            "merge-field-empty",
            f"{undefaulted[key][0].text} is empty for {count:,} of {total:,} subscriber(s)"
            f' and has no default (add one: | default("..."))',
            str(built.issue.path),
        )
        for key, count in missing.items()
        if count
    ]


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


# The subscribers `check` counts a field's missing values among (their email, name and
# attributes), or None when there is no list to count (no database yet).
Audience = Callable[[], Iterable[Any] | None]


def check_issue(
    config: Config,
    path: Path | str,
    spam_score: bool = False,
    audience: Audience | None = None,
) -> list[check.Finding]:
    """The lint's findings, errors first; with `spam_score`, then SpamAssassin's rules
    and its total, scoring the message `build` writes (an error over [check] spam_max).
    With `audience`, a warning for each merge field some subscribers have no value for."""
    built = build_issue(config, load_issue(path))
    filled = sample(config, built)
    findings = check_built(config, built, filled)
    if audience is not None:
        findings += field_findings(built, audience)
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
