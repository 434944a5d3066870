"""Issues (front matter + Markdown) and the plain-text article importer."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from newsletter.errors import ContentError
from newsletter.issue import content

SEED = Path(__file__).resolve().parents[1] / "examples" / "article.txt"
SUBHEADINGS = [
    "Strategic Timing Amid Political Transition",
    "A Calculated Move with Strategic Implications",
    "Criticism from Trump Allies",
    "Escalating Battlefield Challenges",
    "Potential Risks and Russian Reactions",
]

GOOD = "---\ntitle: Hello\nsubject: Hello there\n---\n\nBody text.\n"


def write_issue(folder: Path, text: str | bytes, name: str = "2024-03-01-hello.md") -> Path:
    path = folder / name
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def read_error(path: Path) -> str:
    with pytest.raises(ContentError) as info:
        content.read_issue(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_sample_issue_reads(sample_issue):
    issue = content.read_issue(sample_issue)
    assert issue.slug == "motivated-biden-authorize-ukraines-use-atacms"
    assert issue.date == dt.date(2024, 11, 25)
    assert issue.title.startswith("What Motivated Biden")
    assert issue.subject == issue.title
    assert issue.source == "Al Jazeera, ABC News, Washington Post"
    assert issue.sponsor is None
    assert "## Strategic Timing Amid Political Transition" in issue.body


def test_a_minimal_issue_takes_slug_and_date_from_its_name(tmp_path):
    issue = content.read_issue(write_issue(tmp_path, GOOD))
    assert (issue.slug, issue.date, issue.title, issue.subject) == (
        "hello",
        dt.date(2024, 3, 1),
        "Hello",
        "Hello there",
    )
    assert issue.body.strip() == "Body text."


def test_front_matter_date_and_sponsor(tmp_path):
    text = GOOD.replace("---\n\n", "date: 2024-04-02\nsponsor: none\nauthor: Ann\n---\n\n")
    issue = content.read_issue(write_issue(tmp_path, text, "undated.md"))
    assert issue.date == dt.date(2024, 4, 2)
    assert issue.slug == "undated"
    assert issue.sponsor == "none"
    assert issue.author == "Ann"


def test_crlf_and_bom_are_accepted(tmp_path):
    data = b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode()
    assert content.read_issue(write_issue(tmp_path, data)).subject == "Hello there"


def test_missing_file(tmp_path):
    assert read_error(tmp_path / "2024-01-01-none.md").endswith(": no such file")


def test_a_folder_is_not_an_issue(tmp_path):
    # Tests run as root, where chmod 000 does not stop reading: a folder is the
    # unreadable path that behaves the same for every user.
    folder = tmp_path / "2024-01-01-folder.md"
    folder.mkdir()
    assert "is a folder" in read_error(folder)


def test_a_path_through_a_file_cannot_be_read(tmp_path):
    (tmp_path / "plain").write_text("x")
    assert "cannot read" in read_error(tmp_path / "plain" / "2024-01-01-x.md")


def test_not_utf8_names_the_line(tmp_path):
    path = write_issue(tmp_path, GOOD.encode().replace(b"Body", b"B\xe9dy"))
    assert f"{path}:6: not UTF-8 (byte 0xe9)" == read_error(path)


@pytest.mark.parametrize(
    ("front", "line", "expected"),
    [
        ("title: a\nsubject: [b\n", 3, "malformed front matter"),
        ("title: a\nsubject: b\nauthor: x: y\n", 4, "mapping values are not allowed"),
        ("title: a\n  subject: b\n", 3, "malformed front matter"),
        # The scanner notices these on the next line; the line to fix is the one before.
        ("title: a\nsubject b\ndate: 2024-01-01\n", 3, "could not find expected ':'"),
        ("title: a\nsubject: b\nauthor\n", 4, "could not find expected ':'"),
        ("title: 'a\nsubject: b\n", 2, "malformed front matter"),
        ("title: a\n- b\n", 3, "malformed front matter"),
        ("title: a\nsubject: b\ntitle: !!python/object:os.system x\n", 4, "malformed"),
        ("- title\n- subject\n", 2, "front matter must be 'key: value' lines"),
    ],
)
def test_malformed_front_matter_names_the_line(tmp_path, front, line, expected):
    path = write_issue(tmp_path, f"---\n{front}---\n\nBody.\n")
    message = read_error(path)
    assert message.startswith(f"{path}:{line}: ")
    assert expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Just text.\n", ":1: expected front matter starting with '---'"),
        ("---\ntitle: a\nsubject: b\n\nBody.\n", ":1: front matter is not closed"),
        ("---\nsubject: b\n---\n\nBody.\n", "front matter: missing title"),
        ("---\ntitle: a\n---\n\nBody.\n", "front matter: missing subject"),
        ("---\ntitle: '  '\nsubject: b\n---\n\nBody.\n", "missing title"),
        (
            "---\ntitle: a\nsubject: b\nsubjet: c\n---\n\nB.\n",
            "'subjet' (did you mean 'subject'?)",
        ),
        ("---\ntitle: [a, b]\nsubject: b\n---\n\nBody.\n", "front matter title: expected text"),
        ("---\ntitle: a\nsubject: b\n---\n\n  \n", "the issue has no body"),
        ("---\ntitle: a\nsubject: b\ndate: 2024-13-01\n---\n\nB.\n", "invalid date"),
        ("---\ntitle: a\nsubject: b\ndate: soon\n---\n\nB.\n", "date: expected YYYY-MM-DD"),
        (
            "---\ntitle: a\nsubject: b\ndate: '2026-02-30'\n---\n\nB.\n",
            "front matter date: 2026-02-30 is not a valid date: February 2026 has 28 days",
        ),
    ],
)
def test_bad_issues_are_one_line_errors(tmp_path, text, expected):
    assert expected in read_error(write_issue(tmp_path, text))


@pytest.mark.parametrize("key", ["subject", "title", "preheader"])
@pytest.mark.parametrize("brk", ["\\n", "\\r", "\\r\\n"])
def test_a_line_break_in_a_header_field_is_refused(tmp_path, key, brk):
    text = GOOD.replace("---\n\n", f'{key}: "Hi{brk}Bcc: victim@example.com"\n---\n\n')
    text = text.replace(f"{key}: Hello there\n", "").replace(f"{key}: Hello\n", "")
    message = read_error(write_issue(tmp_path, text))
    assert f"front matter {key}: must not contain a line break" in message


@pytest.mark.parametrize(
    ("escape", "reason"),
    [
        ("\\t", "a control character (U+0009)"),
        ("\\0", "a control character (U+0000)"),
        ("\\v", "a control character (U+000B)"),
        ("\\x1d", "a control character (U+001D)"),
        ("\\x7f", "a control character (U+007F)"),
        ("\\N", "a control character (U+0085)"),
        ("\\L", "a line separator (U+2028)"),
        ("\\P", "a paragraph separator (U+2029)"),
    ],
)
def test_the_subject_follows_the_header_rule(tmp_path, escape, reason):
    text = GOOD.replace("subject: Hello there\n", f'subject: "Hello{escape}Bcc: x@example.com"\n')
    path = write_issue(tmp_path, text)
    assert read_error(path) == f"{path}: front matter subject: must not contain {reason}"


def test_a_subject_with_ordinary_unicode_is_kept(tmp_path):
    text = GOOD.replace("subject: Hello there", 'subject: "Zoë\u00a0— 東京 🚐"')
    assert content.read_issue(write_issue(tmp_path, text)).subject == "Zoë\u00a0— 東京 🚐"


def test_cli_reports_a_control_character_in_the_subject_in_one_line(
    sample_issue, run_cli, edit_file, assert_user_error
):
    text = sample_issue.read_text(encoding="utf-8")
    line = next(x for x in text.split("\n") if x.startswith("subject: "))
    edit_file(sample_issue, line, 'subject: "Hello\\Nthere"')
    out = sample_issue.parent.parent / "out"
    result = run_cli("build", sample_issue, "-o", out)
    reason = "must not contain a control character (U+0085)"
    assert_user_error(result, f"{sample_issue.name}: front matter subject: {reason}", out_dir=out)


@pytest.mark.parametrize(
    "nested", ["[" * 100_000 + "]" * 100_000, "{a: " * 100_000 + "1" + "}" * 100_000]
)
def test_deeply_nested_front_matter_is_a_one_line_error(tmp_path, nested):
    path = write_issue(tmp_path, GOOD.replace("title: Hello", f"title: {nested}"))
    assert read_error(path) == f"{path}: front matter: lists or mappings nested too deeply"


def test_a_file_name_with_an_impossible_date(tmp_path):
    path = write_issue(tmp_path, GOOD, "2026-02-30-hello.md")
    assert read_error(path) == (
        f"{path}: file name: 2026-02-30 is not a valid date: February 2026 has 28 days"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-02-30", "2026-02-30 is not a valid date: February 2026 has 28 days"),
        ("2024-02-30", "2024-02-30 is not a valid date: February 2024 has 29 days"),
        ("2024-04-31", "2024-04-31 is not a valid date: April 2024 has 30 days"),
        ("2024-13-01", "2024-13-01 is not a valid date: there is no month 13"),
        ("2024-01-00", "2024-01-00 is not a valid date: January 2024 has 31 days"),
        ("0000-01-01", "0000-01-01 is not a valid date: year 0 is out of range"),
        ("2024-2-3", "expected YYYY-MM-DD, got '2024-2-3'"),
        ("soon", "expected YYYY-MM-DD, got 'soon'"),
    ],
)
def test_parse_date_tells_a_wrong_format_from_a_wrong_date(text, message):
    with pytest.raises(ValueError) as info:
        content.parse_date(text)
    assert str(info.value) == message
    assert content.parse_date("2024-02-29") == dt.date(2024, 2, 29)


def test_the_body_line_is_the_files_line_of_the_body(tmp_path):
    issue = content.read_issue(write_issue(tmp_path, GOOD))
    assert issue.body_line == 5  # the blank line after the closing '---'
    assert issue.body.split("\n")[1] == GOOD.split("\n")[6 - 1] == "Body text."


def test_an_undated_file_needs_a_date(tmp_path):
    assert "missing date" in read_error(write_issue(tmp_path, GOOD, "hello.md"))


def test_a_slug_must_be_url_safe(tmp_path):
    assert "slug 'Hello_World'" in read_error(
        write_issue(tmp_path, GOOD, "2024-01-01-Hello_World.md")
    )


# --- importing a plain-text article ------------------------------------------------------


@pytest.fixture(scope="module")
def seed_text() -> str:
    assert SEED.is_file(), f"the seed article is missing: {SEED}"
    return SEED.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def imported(seed_text) -> content.ImportedArticle:
    return content.import_article(seed_text, dt.date(2024, 11, 25), ["Hello Shuttle"])


def front_matter(markdown: str) -> dict:
    head, _, _ = markdown.removeprefix("---\n").partition("\n---\n")
    return yaml.safe_load(head)


def test_import_takes_the_title_from_the_first_line(imported, seed_text):
    meta = front_matter(imported.markdown)
    first_line = seed_text.split("\n", 1)[0].strip()
    assert meta["title"] == first_line
    assert meta["subject"] == first_line
    assert meta["date"] == dt.date(2024, 11, 25)
    assert imported.slug == "motivated-biden-authorize-ukraines-use-atacms"
    assert first_line not in imported.markdown.split("\n---\n", 1)[1]


def test_import_turns_short_unpunctuated_lines_into_subheadings(imported):
    headings = [line for line in imported.markdown.split("\n") if line.startswith("#")]
    assert headings == [f"## {h}" for h in SUBHEADINGS]


def test_import_keeps_the_source_line_as_the_source(imported):
    assert front_matter(imported.markdown)["source"] == "Al Jazeera, ABC News, Washington Post"
    assert "According to" not in imported.markdown
    assert any("source" in note for note in imported.notes)


def test_import_drops_the_closing_sponsor_advertisement_and_says_so(imported):
    assert "Hello Shuttle" not in imported.markdown
    assert "www.helloshuttle.com" not in imported.markdown
    assert any("Hello Shuttle" in n and "advertisement" in n for n in imported.notes)
    # The last real paragraph of the article is still there.
    assert imported.markdown.rstrip().endswith("Lieven cautioned.")


def test_import_keeps_a_closing_paragraph_that_names_no_sponsor(seed_text):
    result = content.import_article(seed_text, dt.date(2024, 11, 25), ["Acme Rides"])
    assert "www.helloshuttle.com or call" in result.markdown
    assert not any("advertisement" in n for n in result.notes)


def test_import_preheader_is_the_first_sentences(imported):
    preheader = front_matter(imported.markdown)["preheader"]
    assert len(preheader) <= content.PREHEADER_MAX
    assert preheader.startswith("The evolving battlefield dynamics")


def test_the_imported_seed_reads_back_as_an_issue(imported, tmp_path):
    path = write_issue(tmp_path, imported.markdown, f"2024-11-25-{imported.slug}.md")
    issue = content.read_issue(path)
    assert issue.source == "Al Jazeera, ABC News, Washington Post"
    assert issue.body.count("\n## ") == len(SUBHEADINGS)


def test_the_committed_sample_is_the_imported_seed(imported, sample_issue):
    assert sample_issue.read_text(encoding="utf-8") == imported.markdown


def test_import_escapes_markdown_syntax_in_the_text():
    text = "Title\n\n# not a heading, *not emphasis* and <b>not html</b>.\n\n1. not a list item."
    markdown = content.import_article(text, dt.date(2024, 1, 1)).markdown
    body = markdown.split("\n---\n", 1)[1]
    assert "\\# not a heading, \\*not emphasis\\* and \\<b\\>not html\\</b\\>." in body
    assert "1\\. not a list item." in body


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "the article is empty"), ("Only a title\n", "a title but no paragraphs")],
)
def test_import_refuses_an_empty_article(text, expected):
    with pytest.raises(ContentError, match=expected):
        content.import_article(text, dt.date(2024, 1, 1))


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        (
            "What Motivated Biden to Authorize Ukraine’s Use of ATACMS Against Russia?",
            "motivated-biden-authorize-ukraines-use-atacms",
        ),
        ("Café Déjà Vu: the best of 2024", "cafe-deja-vu-best-2024"),
        ("The A to Z", "z"),
        ("!!!", "issue"),
    ],
)
def test_slugify(title, slug):
    assert content.slugify(title) == slug


# --- what import guesses, and what it says about it -------------------------------------


def test_import_lists_the_lines_it_made_headings(imported, seed_text):
    lines = seed_text.split("\n")
    assert [h.text for h in imported.headings] == SUBHEADINGS
    for heading in imported.headings:
        assert lines[heading.number - 1].strip() == heading.text
    assert imported.skipped == []


ARTICLE_WITH_MARKUP = """\
<html>
The Title
<div class="story">

The first paragraph, long enough to read as prose.

<script>

A short line

<b>Bold and short</b>

<script>alert(1)</script>

</div>
The end.
"""


def test_import_leaves_out_lines_of_markup_and_makes_no_heading_of_them():
    result = content.import_article(ARTICLE_WITH_MARKUP, dt.date(2024, 1, 1))
    assert [(line.number, line.text) for line in result.skipped] == [
        (1, "<html>"),
        (3, '<div class="story">'),
        (7, "<script>"),
        (15, "</div>"),
    ]
    assert [(h.number, h.text) for h in result.headings] == [(9, "A short line")]
    body = result.markdown.split("\n---\n", 1)[1]
    assert front_matter(result.markdown)["title"] == "The Title"
    assert body.strip().split("\n\n") == [
        "The first paragraph, long enough to read as prose.",
        "## A short line",
        "\\<b\\>Bold and short\\</b\\>",
        "\\<script\\>alert(1)\\</script\\>",
        "The end.",
    ]


def test_import_leaves_urls_as_written_so_they_become_links():
    text = "Title\n\nSee https://example.com/a_b*c?x=[1] and www.example.org/x_y, *not* <b>.\n"
    body = content.import_article(text, dt.date(2024, 1, 1)).markdown.split("\n---\n", 1)[1]
    assert (
        "See https://example.com/a_b*c?x=[1] and www.example.org/x_y, \\*not\\* \\<b\\>." in body
    )
