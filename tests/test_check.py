"""`check`: every rule of issue 2 fires on a crafted input; `build` obeys it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from newsletter import config
from newsletter.issue import check, publish

ADDRESS = "Hello Shuttle, Westminster, CA 92683, USA"


@pytest.fixture
def clean(publication, sample_issue) -> check.Subject:
    """The sample issue as check sees it; it has no findings at all."""
    cfg = config.load(publication)
    built = publish.build_issue(cfg, publish.load_issue(sample_issue))
    filled = publish.sample(cfg, built)
    subject = publish.check_subject(cfg, built, filled)
    assert check.check(subject) == []
    return subject


def before_body_end(html: str, extra: str) -> str:
    assert html.count("</body>") == 1
    return html.replace("</body>", extra + "</body>")


def once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, (old, text.count(old))
    return text.replace(old, new)


def codes(findings, level: str) -> list[str]:
    return [f.code for f in findings if f.level == level]


def unlabel_text(s: check.Subject) -> check.Subject:
    plain = once(s.sponsor_text, "---- SPONSORED (ADVERTISEMENT) ----\n", "")
    return dataclasses.replace(s, sponsor_text=plain, text=once(s.text, s.sponsor_text, plain))


# (name, change to the clean subject, code, level, where)
RULES = [
    ("subject empty", lambda s: dataclasses.replace(s, subject=" "), "subject-empty", "error"),
    (
        "subject with LF",
        lambda s: dataclasses.replace(s, subject="Hi\nBcc: x@example.com"),
        "subject-line-break",
        "error",
    ),
    (
        "subject with CR",
        lambda s: dataclasses.replace(s, subject="Hi\rthere"),
        "subject-line-break",
        "error",
    ),
    (
        "no unsubscribe link in html",
        lambda s: dataclasses.replace(
            s, html=once(s.html, f'href="{s.unsubscribe_url}"', 'href="https://x.example/"')
        ),
        "no-unsubscribe",
        "error",
    ),
    (
        "no unsubscribe link in text",
        lambda s: dataclasses.replace(s, text=once(s.text, s.unsubscribe_url, "(gone)")),
        "no-unsubscribe",
        "error",
    ),
    (
        "no postal address configured",
        lambda s: dataclasses.replace(s, postal_address=""),
        "no-postal-address",
        "error",
    ),
    (
        "no postal address in html",
        lambda s: dataclasses.replace(s, html=once(s.html, ADDRESS, "")),
        "no-postal-address",
        "error",
    ),
    (
        "no postal address in text",
        lambda s: dataclasses.replace(s, text=once(s.text, ADDRESS, "")),
        "no-postal-address",
        "error",
    ),
    (
        "no sponsor block in html",
        lambda s: dataclasses.replace(s, html=once(s.html, 'data-block="sponsor"', "")),
        "sponsor-missing",
        "error",
    ),
    (
        "no sponsor block in text",
        lambda s: dataclasses.replace(s, text=once(s.text, s.sponsor_text, "")),
        "sponsor-missing",
        "error",
    ),
    (
        "sponsor block in html without its label",
        lambda s: dataclasses.replace(s, html=once(s.html, "Sponsored · Advertisement", "")),
        "sponsor-unlabelled",
        "error",
    ),
    ("sponsor block in text without its label", unlabel_text, "sponsor-unlabelled", "error"),
    (
        "html over 102 KB",
        lambda s: dataclasses.replace(s, html=before_body_end(s.html, "<p>padding</p>\n" * 7000)),
        "html-too-large",
        "error",
    ),
    (
        "style over 16 KB",
        lambda s: dataclasses.replace(
            s,
            html=once(s.html, "</head>", "<style>\n" + ".x { color: red; }\n" * 1000 + "</style>"),
        ),
        "style-too-large",
        "error",
    ),
    (
        "img without alt",
        lambda s: dataclasses.replace(
            s, html=before_body_end(s.html, '<img src="https://x.example/a.png" width="10">')
        ),
        "img-no-alt",
        "error",
    ),
    (
        "message line over 998",
        lambda s: dataclasses.replace(s, message=s.message + b"x" * 999 + b"\r\n"),
        "line-too-long",
        "error",
    ),
    (
        "no preheader",
        lambda s: dataclasses.replace(s, preheader=""),
        "no-preheader",
        "warning",
    ),
    (
        "subject over 78",
        lambda s: dataclasses.replace(s, subject="x" * 79),
        "subject-long",
        "warning",
    ),
    (
        "link not https",
        lambda s: dataclasses.replace(
            s, html=before_body_end(s.html, '<a href="http://x.example/">x</a>')
        ),
        "link-not-https",
        "warning",
    ),
    (
        "img with empty alt, not marked decorative",
        lambda s: dataclasses.replace(
            s, html=before_body_end(s.html, '<img src="https://x.example/a.png" alt="" width="1">')
        ),
        "img-alt-empty",
        "warning",
    ),
    (
        "img with a file name as alt",
        lambda s: dataclasses.replace(
            s,
            html=before_body_end(
                s.html, '<img src="https://x.example/a.png" alt="IMG_1234.jpg" width="1">'
            ),
        ),
        "img-alt-meaningless",
        "warning",
    ),
    (
        "img with its own file name as alt",
        lambda s: dataclasses.replace(
            s,
            html=before_body_end(
                s.html, '<img src="https://x.example/DSC%200042.png" alt="DSC 0042" width="1">'
            ),
        ),
        "img-alt-meaningless",
        "warning",
    ),
    (
        "img with a placeholder alt",
        lambda s: dataclasses.replace(
            s,
            html=before_body_end(
                s.html, '<img src="https://x.example/a.png" alt="Image" width="1">'
            ),
        ),
        "img-alt-meaningless",
        "warning",
    ),
    (
        "img not https",
        lambda s: dataclasses.replace(
            s, html=before_body_end(s.html, '<img src="http://x.example/a.png" alt="A" width="1">')
        ),
        "img-not-https",
        "warning",
    ),
    (
        "tel link without country code",
        lambda s: dataclasses.replace(
            s, html=before_body_end(s.html, '<a href="tel:9498005678">call</a>')
        ),
        "tel-no-country",
        "warning",
    ),
    (
        "img without width",
        lambda s: dataclasses.replace(
            s, html=before_body_end(s.html, '<img src="https://x.example/a.png" alt="a">')
        ),
        "img-no-width",
        "warning",
    ),
]


@pytest.mark.parametrize(
    ("change", "code", "level"), [r[1:] for r in RULES], ids=[r[0] for r in RULES]
)
def test_each_rule_fires(clean, change, code, level):
    findings = check.check(change(clean))
    assert code in codes(findings, level), findings
    # Nothing else fires along with it at the other level, except where size brings lines.
    other = "warning" if level == "error" else "error"
    assert codes(findings, other) == []


@pytest.mark.parametrize(
    "change",
    [
        lambda s: dataclasses.replace(s, subject="x" * 78),
        lambda s: dataclasses.replace(s, message=s.message + b"x" * 998 + b"\r\n"),
        # A long paragraph is one long source line of HTML, but quoted-printable on the wire.
        lambda s: dataclasses.replace(
            s, html=before_body_end(s.html, "<p>" + "y " * 800 + "</p>")
        ),
        lambda s: dataclasses.replace(
            s,
            html=before_body_end(
                s.html, '<img src="https://x/a.png" alt="" role="presentation" width="1">'
            ),
        ),
        lambda s: dataclasses.replace(
            s,
            html=before_body_end(
                s.html, '<img src="https://x/a.png" alt="" aria-hidden="true" width="1">'
            ),
        ),
        lambda s: dataclasses.replace(
            s,
            html=before_body_end(
                s.html, '<img src="https://x/a.png" alt="A map of the route" width="1">'
            ),
        ),
        lambda s: dataclasses.replace(
            s, html=before_body_end(s.html, '<a href="tel:+19498005678">call</a>')
        ),
        lambda s: dataclasses.replace(
            s,
            sponsor_name=None,
            html=once(s.html, 'data-block="sponsor"', ""),
            text=once(s.text, s.sponsor_text, ""),
        ),
    ],
    ids=[
        "subject of 78",
        "message line of 998",
        "long html line",
        "decorative img (role)",
        "decorative img (aria-hidden)",
        "img with alt text",
        "tel link with country code",
        "no sponsor",
    ],
)
def test_edges_that_are_fine(clean, change):
    assert check.check(change(clean)) == []


def test_a_non_https_link_is_reported_once(clean):
    html = before_body_end(
        clean.html, '<a href="http://x.example/">a</a><a href="http://x.example/">b</a>'
    )
    findings = check.check(dataclasses.replace(clean, html=html))
    assert codes(findings, "warning") == ["link-not-https"]


def test_errors_come_before_warnings(clean):
    # The subject warning is found first, the postal address error later.
    crafted = dataclasses.replace(clean, subject="x" * 90, postal_address="", preheader="")
    findings = check.check(crafted)
    levels = [f.level for f in findings]
    assert levels == ["error", "warning", "warning"]
    assert [f.code for f in findings] == ["no-postal-address", "subject-long", "no-preheader"]


# --- through the CLI ----------------------------------------------------------------------


def test_check_passes_on_the_sample(run_cli, sample_issue):
    result = run_cli("check", sample_issue)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("0 error(s), 0 warning(s)")


def test_check_json(run_cli, sample_issue):
    lines = sample_issue.read_text(encoding="utf-8").split("\n")
    kept = [line for line in lines if not line.startswith("preheader: ")]
    assert len(kept) == len(lines) - 1
    sample_issue.write_text("\n".join(kept), encoding="utf-8")
    result = run_cli("check", sample_issue, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["errors"] == 0 and data["warnings"] == 1
    assert [f["code"] for f in data["findings"]] == ["no-preheader"]
    assert data["findings"][0]["level"] == "warning"


@pytest.fixture
def without_unsubscribe(publication, edit_file):
    templates = publication.parent / "templates"
    edit_file(
        templates / "email.html",
        ' &middot; <a href="{{ slot.unsubscribe_url }}">Unsubscribe</a>',
        "",
    )
    edit_file(templates / "email.txt", "Unsubscribe: {{ slot.unsubscribe_url }}\n", "")
    return publication


def test_check_exits_1_on_errors_and_lists_them(without_unsubscribe, run_cli, sample_issue):
    result = run_cli("check", sample_issue, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["errors"] == 2 and data["warnings"] == 0
    assert [(f["code"], f["where"]) for f in data["findings"]] == [
        ("no-unsubscribe", "html"),
        ("no-unsubscribe", "text"),
    ]
    plain = run_cli("check", sample_issue)
    assert plain.exit_code == 1
    assert "error: the HTML part has no unsubscribe link [html]" in plain.stdout


def test_build_refuses_to_write_on_errors(
    without_unsubscribe, run_cli, sample_issue, assert_user_error
):
    out = without_unsubscribe.parent / "out"
    result = run_cli("build", sample_issue, "-o", out)
    line = assert_user_error(result, str(sample_issue), "2 check error(s)", "--force", out_dir=out)
    assert "nothing written" in line
    assert result.exit_code == 1


def test_build_force_writes_and_reports_the_errors(without_unsubscribe, run_cli, sample_issue):
    out = without_unsubscribe.parent / "out"
    result = run_cli("build", sample_issue, "-o", out, "--force")
    assert result.exit_code == 0, result.output
    assert sorted(p.suffix for p in out.iterdir()) == [".eml", ".html", ".txt"]
    assert result.stderr.count("error: ") == 2
    assert "unsubscribe" in result.stderr


# --- what the issue file says that does not show as written -------------------------------


def append_to_body(issue, text: str) -> int:
    """Add text at the end of the issue; the file's line number of its first line."""
    before = issue.read_text(encoding="utf-8")
    assert before.endswith("\n")
    issue.write_text(before + "\n" + text, encoding="utf-8")
    return before.count("\n") + 2


def findings_of(run_cli, issue) -> list[dict]:
    result = run_cli("check", issue, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["findings"]


def test_raw_html_in_the_body_is_a_warning_at_its_line(run_cli, sample_issue):
    first = append_to_body(
        sample_issue,
        "Some <b>bold</b> words, `<code>` and <https://example.com/x>.\n"
        "\n"
        '<div class="note">\n'
        "A note.\n"
        "</div>\n"
        "\n"
        "Fine: a < b, and 3 > 2.\n",
    )
    found = [
        (f["code"], f["level"], f["where"], f["message"])
        for f in findings_of(run_cli, sample_issue)
    ]
    assert found == [
        (
            "raw-html",
            "warning",
            f"{sample_issue}:{first}",
            "raw HTML shows as text, not markup: <b>",
        ),
        (
            "raw-html",
            "warning",
            f"{sample_issue}:{first + 2}",
            'raw HTML shows as text, not markup: <div class="note">',
        ),
    ]
    plain = run_cli("check", sample_issue)
    assert f"warning: raw HTML shows as text, not markup: <b> [{sample_issue}:{first}]" in (
        plain.stdout.splitlines()
    )


def test_the_line_of_raw_html_counts_the_front_matter_and_wrapped_lines(tmp_path):
    from newsletter.issue.content import read_issue

    path = tmp_path / "2024-01-01-x.md"
    path.write_text(
        "---\ntitle: T\nsubject: S\n---\n\nFirst line\nsecond line <i>x</i>\n", encoding="utf-8"
    )
    (finding,) = check.source_findings(read_issue(path))
    assert finding.where == f"{path}:7"


@pytest.mark.parametrize(
    ("markdown", "code"),
    [
        ("![](https://x.example/map.png)", "img-alt-empty"),
        ("![IMG_1234.jpg](https://x.example/map.png)", "img-alt-meaningless"),
        ("![A map](http://x.example/map.png)", "img-not-https"),
    ],
)
def test_markdown_images_without_meaningful_alt_text_are_warned(
    run_cli, sample_issue, markdown, code
):
    append_to_body(sample_issue, markdown + "\n")
    codes = {f["code"] for f in findings_of(run_cli, sample_issue)}
    # Markdown gives every image an alt attribute; width is a template's matter.
    assert codes == {code, "img-no-width"}


def test_an_image_marked_decorative_may_have_no_alt_text(run_cli, sample_issue):
    append_to_body(sample_issue, "![decorative](https://x.example/rule.png)\n")
    assert {f["code"] for f in findings_of(run_cli, sample_issue)} == {"img-no-width"}


def test_a_sponsor_phone_without_country_code_is_warned(run_cli, publication, sample_issue):
    edit = publication.read_text(encoding="utf-8")
    publication.write_text(edit.replace('phone_country_code = "1"\n', ""), encoding="utf-8")
    (finding,) = findings_of(run_cli, sample_issue)
    assert finding["code"] == "tel-no-country"
    assert "tel:9498005678" in finding["message"]
