"""Issue 19 end to end, as a marketer moving over does it with the CLI: a Mailchimp export
(semicolons, a BOM, "Email Address" + "First Name" + "Last Name") imported with a tag, a
segment over that tag and an attribute, an issue with merge fields in its subject and body,
sent through the real SMTP server; each recipient's message is checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from campaign_support import Publication, make_publication
from click.testing import CliRunner, Result
from smtp_fixtures import SmtpServer
from test_merge_fields import with_fields

from newsletter.cli import cli

EXPORT = (
    "\ufeffEmail Address;First Name;Last Name;City;Company\r\n"
    "ann@example.com;Ann;Lee;Zürich;<b>&\r\n"
    "bob@example.com;Bob;Ray;Tustin;Acme\r\n"
    "cat@example.com;Cat;;Irvine;\r\n"
    "not-an-address;Bad;Row;Nowhere;\r\n"
)


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    publication = make_publication(tmp_path, database_url, smtp_server.port)
    with_fields(
        publication.issue,
        subject='For {{ subscriber.first_name }} in {{ subscriber.city | default("town") }}',
        line='Hello {{ subscriber.company | default("friend") }} of {{ subscriber.city }}.',
    )
    return publication


def invoke(pub: Publication, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(pub.config_path), *args], env=pub.env)


def test_an_export_imported_tagged_and_sent_to_a_segment_with_merge_fields(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    export = pub.root / "mailchimp_subscribed.csv"
    export.write_bytes(EXPORT.encode("utf-8"))
    imported = invoke(pub, "subscribers", "import", str(export), "--tag", "spring")
    assert imported.exit_code == 0, imported.output  # a partial import: the bad row named
    assert "3 added, 0 updated, 1 rejected" in imported.stdout
    assert f"{export}:5:" in imported.stderr

    segment = 'tag:spring and attr:city != "Tustin"'
    assert invoke(pub, "subscribers", "count", "--segment", segment).stdout.strip() == "2"
    sent = invoke(pub, "send", str(pub.issue), "--all", "--segment", segment, "--yes")
    assert sent.exit_code == 0, sent.output
    assert "2 sent, 0 deferred, 0 failed" in sent.stdout

    got = {r.rcpt_tos[0]: r.parse() for r in smtp_server.received}
    assert sorted(got) == ["ann@example.com", "cat@example.com"]  # Tustin left out
    ann, cat = got["ann@example.com"], got["cat@example.com"]
    assert str(ann["Subject"]) == "For Ann in Zürich"
    assert "=?utf-8?" in ann.as_string().split("\nSubject: ", 1)[1].split("\n", 1)[0]
    assert str(cat["Subject"]) == "For Cat in Irvine"
    ann_html = ann.get_body(("html",)).get_content()
    ann_text = ann.get_body(("plain",)).get_content()
    assert "Hello &lt;b&gt;&amp; of Zürich." in ann_html  # an attribute is text, not markup
    assert "Hello <b>& of Zürich." in ann_text
    cat_text = cat.get_body(("plain",)).get_content()
    assert "Hello friend of Irvine." in cat_text  # no company: the default
    assert "Lee" in str(ann["To"]) and "Ann Lee" in str(ann["To"])
