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


# --- bare URLs -----------------------------------------------------------------------------


def test_a_bare_url_becomes_a_link_without_its_closing_punctuation():
    html = markdown.to_html("Read https://example.com/a_b?x=1&y=2. Then (https://example.org).\n")
    assert (
        '<a href="https://example.com/a_b?x=1&amp;y=2">https://example.com/a_b?x=1&amp;y=2</a>.'
        in html
    )
    assert '(<a href="https://example.org">https://example.org</a>).' in html


def test_a_www_name_becomes_an_https_link():
    html = markdown.to_html("Book at www.example.com/rides today.\n")
    assert '<a href="https://www.example.com/rides">www.example.com/rides</a>' in html
    # The text part shows the URL once, whole, so a reader can type it and tracking finds it.
    assert markdown.to_text("Book at www.example.com/rides today.\n") == (
        "Book at https://www.example.com/rides today.\n"
    )


def test_host_names_in_prose_stay_text():
    text = "Built with Node.js and setup.py, as CNN.com reported.\n"
    assert "<a" not in markdown.to_html(text)


def test_an_email_address_becomes_a_mailto_link():
    assert '<a href="mailto:ann@example.com">ann@example.com</a>' in markdown.to_html(
        "Write to ann@example.com.\n"
    )


def test_urls_in_code_and_in_written_links_are_left_as_they_are():
    html = markdown.to_html("`https://example.com/code` and [here](https://example.com/x)\n")
    assert "<code>https://example.com/code</code>" in html
    assert html.count("<a ") == 1


def test_a_bare_url_is_tracked_like_a_written_link():
    from newsletter.send import tracking

    body = "Bare https://example.com/bare and [written](https://example.com/written).\n"
    tracked = tracking.rewrite(markdown.to_html(body), markdown.to_text(body), "all")
    assert [link.url for link in tracked.links] == [
        "https://example.com/bare",
        "https://example.com/written",
    ]
    assert 'href="https://' not in tracked.html
    assert tracked.text == "Bare __nlslot_link0__ and written (__nlslot_link1__).\n"


# --- images ----------------------------------------------------------------------------------


def test_an_image_marked_decorative_has_empty_alt_text_and_says_so():
    html = markdown.to_html("![decorative](https://x.example/rule.png)\n")
    assert '<img src="https://x.example/rule.png" alt="" role="presentation" />' in html
    assert "decorative" not in markdown.to_text("![Decorative](https://x.example/rule.png)\n")


def test_other_images_keep_their_alt_text():
    html = markdown.to_html("![A map of the route](m.png) ![](n.png)\n")
    assert '<img src="m.png" alt="A map of the route" />' in html
    assert '<img src="n.png" alt="" />' in html
    assert "presentation" not in html


def test_raw_html_lines_are_found_by_commonmarks_rules():
    body = (
        "Intro <b>bold</b>\n"  # 0
        "wrapped <i>line</i>\n"  # 1
        "\n"
        "<div>\n"  # 3
        "x\n"
        "</div>\n"
        "\n"
        "`<code>` and <https://example.com> and a < b\n"  # 7
        "\n"
        "    <pre>indented code</pre>\n"  # 9
        "\n"
        "<!-- a comment -->\n"  # 11
    )
    assert markdown.raw_html_lines(body) == [
        (0, "<b>"),
        (1, "<i>"),
        (3, "<div>"),
        (11, "<!-- a comment -->"),
    ]
