"""Test sends (`send --to`, the preview's button) and dry runs: nothing is recorded."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from newsletter.config import Config
from newsletter.config import load as load_config
from newsletter.issue.publish import (
    BuiltIssue,
    Personalizer,
    build_issue,
    load_issue,
    message_template,
)
from newsletter.ledger.once import Repeat, audience
from newsletter.ledger.store import Store
from newsletter.mail import transport
from newsletter.segments import Segment


def send_test(
    config: Config, built: BuiltIssue, addresses: Iterable[str]
) -> list[tuple[str, str]]:
    """Send the issue to a few addresses with "[TEST]" in the subject; nothing is recorded."""
    template = message_template(config, built, subject_prefix="[TEST] ")
    personalizer = Personalizer(config, built.issue.slug, slots=template.slots)
    conn = transport.SmtpConnection(transport.SmtpSettings.from_config(config))
    results = []
    try:
        for address in addresses:
            # Filled as for the sample subscriber, as the preview shows it.
            values, token = personalizer.values(
                address, config.sample.name, config.sample.attributes
            )
            res = conn.send(
                # Bounces of a test go where the campaign's would ([bounces] address).
                config.bounces.address or template.from_address,
                address,
                template.render(address, "", values, token),
            )
            results.append(
                (address, "sent" if res.status == transport.SENT else f"{res.status}: {res.error}")
            )
    finally:
        conn.close()
    return results


_TEST_PREFIX = "[TEST] "  # the subject's start in send_test's messages


@dataclass(frozen=True)
class RenderedTest:
    """A test message rendered and not sent (`send --to ADDR --dry-run`)."""

    to: str
    subject: str
    bytes: int


def render_test(config: Config, built: BuiltIssue, addresses: Iterable[str]) -> list[RenderedTest]:
    """The messages send_test would send, rendered the same way; no connection is made."""
    template = message_template(config, built, subject_prefix=_TEST_PREFIX)
    personalizer = Personalizer(config, built.issue.slug, slots=template.slots)
    out = []
    for address in addresses:
        values, token = personalizer.values(address, config.sample.name, config.sample.attributes)
        size = len(template.render(address, "", values, token))
        out.append(RenderedTest(address, template.subject(values), size))
    return out


def test_sender(config_path: Path, issue_path: Path) -> Callable[[], str] | None:
    """For the preview's "Send test" button: sends the issue as it is on disk now to
    [preview] test_recipients; None when that setting is empty (no button)."""
    if not load_config(config_path).preview.test_recipients:
        return None

    def send() -> str:
        config = load_config(config_path)
        built = build_issue(config, load_issue(issue_path))
        results = send_test(config, built, config.preview.test_recipients)
        return "; ".join(f"{address}: {outcome}" for address, outcome in results)

    return send


@dataclass
class DryRun:
    messages: int = 0
    bytes: int = 0


def dry_run(
    store: Store,
    config: Config,
    built: BuiltIssue,
    repeat: Repeat | None = None,
    segment: Segment | None = None,
) -> DryRun:
    """Render every message a campaign would send, and send nothing."""
    template = message_template(config, built)
    personalizer = Personalizer(config, built.issue.slug, slots=template.slots)
    report = DryRun()
    for sub in audience(store, built.issue.slug, repeat, segment):
        values, token = personalizer.values(sub.email, sub.name, sub.attributes)
        report.messages += 1
        report.bytes += len(template.render(sub.email, sub.name, values, token))
    return report
