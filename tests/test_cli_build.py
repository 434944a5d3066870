"""`newsletter import` and `newsletter build` as a user runs them, the seed end to end."""

from __future__ import annotations

import errno
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import lxml.html
import pytest

SEED = Path(__file__).resolve().parents[1] / "examples" / "article.txt"
SLUG = "motivated-biden-authorize-ukraines-use-atacms"
TITLE = "What Motivated Biden to Authorize Ukraine’s Use of ATACMS Against Russia?"
SUBHEADINGS = [
    "Strategic Timing Amid Political Transition",
    "A Calculated Move with Strategic Implications",
    "Criticism from Trump Allies",
    "Escalating Battlefield Challenges",
    "Potential Risks and Russian Reactions",
]
SOURCE = "Al Jazeera, ABC News, Washington Post"
MESSAGE_START = "Whenever you need a reliable shuttle service, book with Hello Shuttle."


class Seed:
    """The seed article imported and built through the CLI."""

    def __init__(self, publication: Path, run_cli) -> None:
        assert SEED.is_file(), f"the seed article is missing: {SEED}"
        (publication.parent / "issues" / f"2024-11-25-{SLUG}.md").unlink()
        self.imported = run_cli("import", SEED, "--date", "2024-11-25")
        assert self.imported.exit_code == 0, self.imported.output
        self.issue = Path(self.imported.stdout.strip())
        self.out = publication.parent / "out"
        self.built = run_cli("build", self.issue, "-o", self.out)
        assert self.built.exit_code == 0, self.built.output
        self.html = (self.out / f"{SLUG}.html").read_text(encoding="utf-8")
        self.text = (self.out / f"{SLUG}.txt").read_text(encoding="utf-8")
        self.doc = lxml.html.document_fromstring(self.html)
        (self.sponsor,) = self.doc.xpath('//*[@data-block="sponsor"]')
        (self.article,) = self.doc.find_class("article")


@pytest.fixture
def seed(publication, run_cli) -> Seed:
    return Seed(publication, run_cli)


def words(text: str) -> str:
    return " ".join(text.split())


def test_import_writes_the_issue_and_explains_what_it_did(seed, publication):
    assert seed.issue == publication.parent / "issues" / f"2024-11-25-{SLUG}.md"
    notes = seed.imported.stderr.splitlines()
    assert all(line.startswith("note: ") for line in notes)
    assert any("removed the closing advertisement for Hello Shuttle" in n for n in notes)
    assert any(SOURCE in n for n in notes)
    # The committed sample is what the import makes of the seed.
    from_repo = Path(__file__).parents[1] / "issues" / f"2024-11-25-{SLUG}.md"
    assert seed.issue.read_text(encoding="utf-8") == from_repo.read_text(encoding="utf-8")


def test_import_lists_each_line_it_made_a_heading(seed):
    lines = SEED.read_text(encoding="utf-8").split("\n")
    made = [n for n in seed.imported.stderr.splitlines() if "made a heading" in n]
    assert len(made) == len(SUBHEADINGS)
    for note, heading in zip(made, SUBHEADINGS, strict=True):
        number = lines.index(heading) + 1
        assert note == f"note: {SEED}:{number}: made a heading: {heading}"


def test_import_says_which_lines_of_markup_it_left_out(publication, run_cli, tmp_path):
    article = tmp_path / "article.txt"
    article.write_text(
        "A Title\n\nThe first paragraph, as prose.\n\n<script>\n\nA heading\n", encoding="utf-8"
    )
    result = run_cli("import", article, "--date", "2024-05-01")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"note: {article}:7: made a heading: A heading",
        f"note: {article}:5: left out, only markup: <script>",
    ]
    assert "script" not in Path(result.stdout.strip()).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("date", "message"),
    [
        ("2026-02-30", "2026-02-30 is not a valid date: February 2026 has 28 days"),
        ("30.02.2026", "expected YYYY-MM-DD, got '30.02.2026'"),
    ],
)
def test_import_date_says_what_is_wrong_with_it(publication, run_cli, date, message):
    result = run_cli("import", SEED, "--date", date)
    assert result.exit_code == 2
    assert f"Invalid value for '--date': {message}" in result.stderr
    assert "Traceback" not in result.output


def test_the_preheader_is_padded_so_the_inbox_line_stops_there(seed):
    (preheader,) = seed.doc.find_class("preheader")
    meta = seed.issue.read_text(encoding="utf-8").split("\npreheader: ", 1)[1].split("\n")[0]
    assert preheader.text_content() == meta
    # Right after it, hidden like it, before any text a client could show next.
    padding = preheader.getnext()
    assert padding.get("class") == "preheader-padding"
    assert padding.get("style") == preheader.get("style")
    assert "display:none" in padding.get("style")
    text = padding.text_content()
    assert text == "\u200c\u00a0" * 90
    # The padding is for the HTML part's inbox line only: the text part has none of it.
    assert "\u200c" not in seed.text


def test_no_preheader_no_padding(publication, sample_issue, run_cli):
    lines = sample_issue.read_text(encoding="utf-8").split("\n")
    sample_issue.write_text(
        "\n".join(line for line in lines if not line.startswith("preheader: ")), encoding="utf-8"
    )
    out = publication.parent / "out"
    assert run_cli("build", sample_issue, "-o", out, "--force").exit_code == 0
    html = (out / f"{SLUG}.html").read_text(encoding="utf-8")
    assert "preheader-padding" not in html and "\u200c" not in html


def test_seed_title_comes_from_the_first_line(seed):
    assert SEED.read_text(encoding="utf-8").split("\n", 1)[0] == TITLE
    (h1,) = seed.doc.iter("h1")
    assert h1.text_content() == TITLE
    assert seed.doc.findtext(".//title") == TITLE
    assert f"\n{TITLE}\n{'=' * 72}\n" in seed.text


def test_every_subheading_is_a_heading_in_both_parts(seed):
    assert [h.text_content() for h in seed.doc.iter("h2")] == SUBHEADINGS
    for heading in SUBHEADINGS:
        assert f"\n\n{heading}\n{'-' * len(heading)}\n\n" in seed.text
        assert seed.text.count(heading) == 1


def test_the_source_line_is_kept_as_the_source(seed):
    (source,) = seed.doc.find_class("source")
    assert source.text_content() == f"Source: {SOURCE}"
    assert f"\n\nSource: {SOURCE}\n" in seed.text
    assert "According to" not in seed.html + seed.text


def test_the_articles_own_advertisement_is_gone(seed):
    for part in (seed.html, seed.text):
        assert "www.helloshuttle.com or call" not in part
        assert "strive to bring the latest updates" not in part
    assert "Hello Shuttle" not in seed.article.text_content()
    body = seed.text.split(f"{'=' * 72}\n", 1)[1].split(f"Source: {SOURCE}")[0]
    assert "Hello Shuttle" not in body
    assert words(body).endswith("Lieven cautioned.")


def test_the_sponsor_advertisement_appears_exactly_once(seed):
    # From the config, once in each part: the block, its message, its phone number.
    assert words(seed.sponsor.text_content()).count("Hello Shuttle") == 2  # name, message
    html_words = words(seed.doc.body.text_content())
    for needle in (MESSAGE_START, "Book a ride", "(949) 800-5678", "24/7", "Serving LAX"):
        assert html_words.count(needle) == 1, needle
    text_words = words(seed.text)
    for needle in (MESSAGE_START, "Book a ride:", "(949) 800-5678", "24/7", "Serving: LAX"):
        assert text_words.count(needle) == 1, needle
    assert seed.text.count("(ADVERTISEMENT)") == 1


def test_the_sponsor_block_is_labelled_in_both_parts(seed):
    label = words(seed.sponsor.find_class("sponsor-label")[0].text_content())
    assert label == "Sponsored · Advertisement"
    assert seed.sponsor.get("aria-label") == "Advertisement"
    assert "\n---- SPONSORED (ADVERTISEMENT) ----\nHello Shuttle\n" in seed.text
    # The block sits after the article and before the footer.
    assert seed.text.index("(ADVERTISEMENT)") > seed.text.index(f"Source: {SOURCE}")
    assert seed.text.index("(ADVERTISEMENT)") < seed.text.index("Unsubscribe: ")


def test_the_phone_is_a_tel_link(seed):
    phones = [a for a in seed.sponsor.iter("a") if a.get("href", "").startswith("tel:")]
    assert [(a.get("href"), a.text_content()) for a in phones] == [
        ("tel:+19498005678", "(949) 800-5678")
    ]


def tracking_off(publication: Path) -> None:
    """Build the direct links (the default build shows the tracked ones readers get)."""
    with publication.open("a", encoding="utf-8") as fh:
        fh.write('\n[tracking]\nclicks = "off"\n')


@pytest.fixture
def untracked_seed(publication, run_cli) -> Seed:
    tracking_off(publication)
    return Seed(publication, run_cli)


def test_build_shows_the_tracked_sponsor_links_readers_get(seed):
    web = [a.get("href") for a in seed.sponsor.iter("a") if a.get("href").startswith("http")]
    assert web and all(h.startswith("https://news.helloshuttle.com/c/") for h in web)
    assert "www.helloshuttle.com" not in seed.html and "www.helloshuttle.com" not in seed.text
    assert f"Book a ride: {web[0]}" in seed.text


def test_sponsor_links_carry_utm_parameters(untracked_seed):
    seed = untracked_seed
    web = [a.get("href") for a in seed.sponsor.iter("a") if a.get("href").startswith("http")]
    text_links = [
        w
        for line in seed.text.split("\n")
        if line.startswith("Book a ride:")
        for w in line.split()
    ][-1:]
    assert web and text_links
    for href in web + text_links:
        parts = urlsplit(href)
        assert parts.netloc == "www.helloshuttle.com"
        assert parse_qs(parts.query) == {
            "utm_source": ["hello-shuttle-briefing"],
            "utm_medium": ["email"],
            "utm_campaign": [SLUG],
        }


def test_utm_tagging_can_be_disabled(publication, sample_issue, run_cli, edit_file):
    edit_file(publication, "enabled = true", "enabled = false")
    tracking_off(publication)
    out = publication.parent / "out"
    assert run_cli("build", sample_issue, "-o", out).exit_code == 0
    html = (out / f"{SLUG}.html").read_text(encoding="utf-8")
    text = (out / f"{SLUG}.txt").read_text(encoding="utf-8")
    assert "utm_" not in html and "utm_" not in text
    assert 'class="button" href="https://www.helloshuttle.com"' in html
    assert "Book a ride: https://www.helloshuttle.com\n" in text


def test_every_element_in_the_body_carries_inline_styles(seed):
    elements = list(seed.doc.body.iter("p", "h1", "h2", "a", "td"))
    assert len(elements) > 40
    unstyled = [(el.tag, el.get("class")) for el in elements if not el.get("style", "").strip()]
    assert unstyled == []
    assert seed.doc.body.get("style")
    # The rules really went inline (a descendant rule, too).
    assert "font-size:21px" in next(seed.doc.iter("h2")).get("style")


def test_the_media_query_survives_in_a_style_block(seed):
    styles = seed.doc.xpath("//head/style")
    assert len(styles) == 1
    css = styles[0].text
    assert "@media only screen and (max-width: 620px)" in css
    assert "width: 100% !important" in css
    assert ".sponsor-label" not in css  # inlined, not kept


def test_check_passes_on_the_built_seed(seed, run_cli):
    result = run_cli("check", seed.issue)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{seed.issue}: 0 error(s), 0 warning(s)"
    assert seed.built.stderr == ""


def test_import_refuses_to_overwrite_an_issue(
    publication, sample_issue, run_cli, assert_user_error
):
    before = sample_issue.read_bytes()
    result = run_cli("import", SEED, "--date", "2024-11-25")
    assert_user_error(result, str(sample_issue), "already exists", "--force")
    assert sample_issue.read_bytes() == before
    forced = run_cli("import", SEED, "--date", "2024-11-25", "--force")
    assert forced.exit_code == 0, forced.output


def test_import_of_a_missing_article(publication, run_cli, assert_user_error):
    result = run_cli("import", publication.parent / "nope.txt")
    assert_user_error(result, "nope.txt: no such file")


def test_an_imported_article_with_a_long_paragraph_builds(publication, run_cli, tmp_path):
    article = tmp_path / "long.txt"
    paragraph = " ".join(["A fairly ordinary sentence in a very long paragraph."] * 25)
    article.write_text(f"A Long Read\n\n{paragraph}\n\nThe end.\n", encoding="utf-8")
    issue = tmp_path / "2024-01-02-long-read.md"
    assert run_cli("import", article, "-o", issue).exit_code == 0
    out = tmp_path / "out"
    result = run_cli("build", issue, "-o", out)
    assert result.exit_code == 0, result.output
    eml = (out / "long-read.eml").read_bytes()
    assert max(len(line) for line in eml.split(b"\r\n")) <= 998
    assert paragraph in (out / "long-read.html").read_text(encoding="utf-8")


# --- build -o: outputs -------------------------------------------------------------------


def test_build_prints_the_three_paths_and_writes_them(publication, sample_issue, run_cli):
    out = publication.parent / "out"
    result = run_cli("build", sample_issue, "-o", out)
    assert result.exit_code == 0, result.output
    expected = [out / f"{SLUG}.html", out / f"{SLUG}.txt", out / f"{SLUG}.eml"]
    assert result.stdout.splitlines() == [str(p) for p in expected]
    assert sorted(out.iterdir()) == sorted(expected)
    assert expected[0].read_text(encoding="utf-8").startswith("<!DOCTYPE html>\n")
    assert expected[1].read_text(encoding="utf-8").startswith("Hello Shuttle News Briefing |")
    assert expected[2].read_bytes().startswith(b"From: ")


def test_build_without_o_writes_to_the_configured_folder(publication, sample_issue, run_cli):
    result = run_cli("build", sample_issue)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == str(publication.parent / "build" / f"{SLUG}.html")


def test_a_rebuild_replaces_the_files(publication, sample_issue, run_cli, edit_file):
    out = publication.parent / "out"
    assert run_cli("build", sample_issue, "-o", out).exit_code == 0
    edit_file(sample_issue, "Lieven cautioned.", "Lieven cautioned, again.")
    assert run_cli("build", sample_issue, "-o", out).exit_code == 0
    assert "Lieven cautioned, again." in (out / f"{SLUG}.html").read_text(encoding="utf-8")
    assert "Lieven cautioned, again." in words((out / f"{SLUG}.txt").read_text(encoding="utf-8"))
    assert len(list(out.iterdir())) == 3


def test_writes_are_all_or_nothing_when_a_target_is_a_folder(
    publication, sample_issue, run_cli, assert_user_error
):
    out = publication.parent / "out"
    (out / f"{SLUG}.eml").mkdir(parents=True)
    result = run_cli("build", sample_issue, "-o", out)
    assert_user_error(result, f"{SLUG}.eml", "cannot write")
    assert [p.name for p in out.iterdir()] == [f"{SLUG}.eml"]


def test_writes_are_all_or_nothing_when_the_disk_fills(
    publication, sample_issue, run_cli, assert_user_error, monkeypatch
):
    real_mkstemp = tempfile.mkstemp
    calls = []

    def mkstemp(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", kwargs.get("dir"))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = publication.parent / "out"
    out.mkdir()
    result = run_cli("build", sample_issue, "-o", out)
    assert_user_error(result, "No space left on device", out_dir=out)
    assert len(calls) == 3


def test_an_output_folder_that_is_a_file(publication, sample_issue, run_cli, assert_user_error):
    blocker = publication.parent / "blocker"
    blocker.write_text("not a folder")
    result = run_cli("build", sample_issue, "-o", blocker / "out")
    assert_user_error(result, "blocker", "cannot write")
    assert blocker.read_text() == "not a folder"


# --- bad input: one line on stderr, non-zero exit, no traceback, nothing written ----------

GOOD_FRONT = "---\ntitle: A title\nsubject: A subject\n---\n\nSome body text.\n"


def bad_issue(folder: Path, data: str | bytes) -> Path:
    path = folder / "issues" / "2024-05-01-bad.md"
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        (GOOD_FRONT.encode().replace(b"Some", b"S\xf6me"), [":6: not UTF-8"]),
        ("---\ntitle: A\nsubject: [B\n---\n\nBody.\n", [":3: malformed front matter"]),
        ("---\ntitle: A\nsubject: B\nauthor: x: y\n---\n\nB.\n", [":4: malformed front matter"]),
        (GOOD_FRONT.replace("title: A title\n", ""), ["front matter: missing title"]),
        (GOOD_FRONT.replace("subject: A subject\n", ""), ["front matter: missing subject"]),
        (
            GOOD_FRONT.replace("subject: A subject", 'subject: "A\\nBcc: x@example.com"'),
            ["front matter subject: must not contain a line break"],
        ),
        (
            GOOD_FRONT.replace("subject: A subject", 'subject: "A\\r\\nBcc: x@example.com"'),
            ["front matter subject: must not contain a line break"],
        ),
        (
            GOOD_FRONT.replace("---\n\n", "sponsor: acme\n---\n\n"),
            ["front matter sponsor: unknown sponsor 'acme'", "helloshuttle"],
        ),
        (GOOD_FRONT.replace("---\n\n", "date: 2024-02-30\n---\n\n"), ["invalid date"]),
    ],
    ids=[
        "not-utf8",
        "yaml-flow",
        "yaml-mapping",
        "no-title",
        "no-subject",
        "lf-in-subject",
        "crlf-in-subject",
        "unknown-sponsor",
        "impossible-date",
    ],
)
def test_bad_issue_files(publication, run_cli, assert_user_error, data, needles):
    path = bad_issue(publication.parent, data)
    out = publication.parent / "out"
    result = run_cli("build", path, "-o", out)
    assert_user_error(result, str(path), *needles, out_dir=out)


def test_a_missing_issue_file(publication, run_cli, assert_user_error):
    out = publication.parent / "out"
    path = publication.parent / "issues" / "2024-05-01-nope.md"
    result = run_cli("build", path, "-o", out)
    assert_user_error(result, f"{path}: no such file", out_dir=out)


def test_an_unreadable_issue_path(publication, run_cli, assert_user_error):
    # chmod 000 does not stop root, who runs these tests: a folder cannot be read as a
    # file by anyone, so it stands in for the unreadable file.
    out = publication.parent / "out"
    folder = publication.parent / "issues" / "2024-05-01-folder.md"
    folder.mkdir()
    result = run_cli("build", folder, "-o", out)
    assert_user_error(result, str(folder), "is a folder", out_dir=out)


@pytest.mark.parametrize(
    ("template", "old", "new", "needles"),
    [
        ("email.html", "{{ issue.title }}</h1>", "{{ issue.title }</h1>", ["syntax error"]),
        ("sponsor.txt", "{{ sponsor.name }}", "{% if %}", ["sponsor.txt:2: template syntax"]),
        ("style.css", ".footer a {", "{{ .footer a {", ["style.css:", "template syntax error"]),
        (
            "email.html",
            "{{ issue.title }}</h1>",
            "{{ issue.titel }}</h1>",
            ["undefined variable", "titel"],
        ),
        ("sponsor.html", "{{ sponsor.name }}", "{{ sponsr.name }}", ["sponsor.html:7: undefined"]),
        (
            "email.txt",
            "{{ body_text }}",
            "{{ body_txt }}",
            ["email.txt:", "'body_txt' is undefined"],
        ),
    ],
    ids=[
        "html-syntax",
        "sponsor-syntax",
        "css-syntax",
        "html-undefined",
        "sponsor-undefined",
        "txt-undefined",
    ],
)
def test_template_errors_name_the_template(
    publication, sample_issue, run_cli, edit_file, assert_user_error, template, old, new, needles
):
    path = publication.parent / "templates" / template
    edit_file(path, old, new)
    out = publication.parent / "out"
    result = run_cli("build", sample_issue, "-o", out)
    line = assert_user_error(result, str(path), *needles, out_dir=out)
    lines = path.read_text(encoding="utf-8").split("\n")
    where = next(n for n, text in enumerate(lines, start=1) if new.split("\n")[0] in text)
    assert f"{template}:{where}:" in line


def test_a_user_error_from_the_real_command_has_no_traceback(publication, tmp_path):
    """The installed entry point (python -m newsletter), not the test runner, prints the error."""
    missing = publication.parent / "issues" / "2024-05-01-nope.md"
    proc = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(publication), "build", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2  # a missing issue file is a usage error
    assert proc.stdout == ""
    assert proc.stderr == f"Error: {missing}: no such file\n"


def test_a_config_error_from_the_real_command_exits_2(publication, sample_issue, edit_file):
    edit_file(publication, "port = 1025", 'port = "abc"')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "newsletter",
            "--config",
            str(publication),
            "check",
            str(sample_issue),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "[smtp] port: expected an integer" in proc.stderr
