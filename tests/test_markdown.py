"""The issue body as HTML (CommonMark) and as readable plain text."""

from __future__ import annotations

from newsletter.issue import markdown

BODY = """\
Intro paragraph with a [link](https://example.com/a) and `code`.

## Section One

- first item
- second item

1. one
2. two

> quoted words

### Smaller heading

See <https://example.com/b> for more.
"""


def test_html_renders_commonmark():
    html = markdown.to_html(BODY)
    assert '<a href="https://example.com/a">link</a>' in html
    assert "<h2>Section One</h2>" in html
    assert "<h3>Smaller heading</h3>" in html
    assert "<li>first item</li>" in html
    assert "<ol>" in html and "<blockquote>" in html


def test_raw_html_in_an_issue_is_escaped():
    html = markdown.to_html("Hello <script>alert(1)</script> world\n")
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_text_underlines_headings_and_spells_out_links():
    text = markdown.to_text(BODY)
    assert "Section One\n-----------\n" in text
    assert "Smaller heading\n---------------\n" in text
    assert "with a link (https://example.com/a) and code." in text
    # An autolink is not written twice.
    assert "See https://example.com/b for more." in text
    assert "<" not in text and "](" not in text


def test_text_keeps_list_markers_and_quotes():
    lines = markdown.to_text(BODY).split("\n")
    for line in ("- first item", "- second item", "1. one", "2. two", "> quoted words"):
        assert line in lines


def test_text_wraps_paragraphs_at_72_columns_without_breaking_words():
    words = " ".join(f"word{n}" for n in range(60))
    url = "https://example.com/" + "x" * 90
    text = markdown.to_text(f"{words}\n\nVisit {url} now.\n")
    lines = text.rstrip("\n").split("\n")
    assert " ".join(" ".join(lines).split()) == f"{words} Visit {url} now."
    assert all(len(line) <= 72 for line in lines if url not in line)
    assert any(line == url or line.startswith(url) for line in lines)
    assert max(len(line) for line in lines[:3]) > 60  # wrapped, not one word a line


def test_text_wraps_list_items_under_their_marker():
    item = " ".join(["words"] * 30)
    text = markdown.to_text(f"- {item}\n")
    first, second = text.split("\n")[:2]
    assert first.startswith("- words") and second.startswith("  words")


def test_h1_is_underlined_with_equals_signs():
    assert markdown.to_text("# Top\n") == "Top\n===\n"
