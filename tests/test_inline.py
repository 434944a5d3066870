"""premailer, called once per issue: rules into style attributes, media queries kept."""

from __future__ import annotations

import lxml.html
import premailer
import pytest

from newsletter.errors import TemplateError
from newsletter.issue.inline import inline_css

PAGE = """\
<!DOCTYPE html>
<html><head><style>
p { color: #111111; margin: 0; }
.note { font-size: 12px; }
@media only screen and (max-width: 620px) { .note { font-size: 16px !important; } }
</style></head>
<body><p class="note">Hi</p><p style="padding: 1px">There</p></body></html>
"""


def test_rules_move_into_style_attributes():
    doc = lxml.html.document_fromstring(inline_css(PAGE))
    first, second = doc.body.iter("p")
    assert first.get("style") == "color:#111; margin:0; font-size:12px"
    # An existing inline style is kept and wins over the stylesheet.
    assert "padding:1px" in second.get("style") and "color:#111" in second.get("style")


def test_media_queries_stay_in_a_style_block_with_important():
    out = inline_css(PAGE)
    styles = lxml.html.document_fromstring(out).xpath("//style")
    assert len(styles) == 1
    assert "@media only screen and (max-width: 620px)" in styles[0].text
    assert "font-size: 16px !important" in styles[0].text
    # Only what cannot be inlined stays behind.
    assert "margin" not in styles[0].text


def test_doctype_and_final_newline_are_kept():
    out = inline_css(PAGE)
    assert out.startswith("<!DOCTYPE html>\n")
    assert out.endswith("</html>\n")
    assert not inline_css(PAGE.rstrip("\n")).endswith("\n")


def test_no_external_stylesheet_is_fetched(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("premailer tried to load an external stylesheet")

    monkeypatch.setattr(premailer.premailer.Premailer, "_load_external", no_network)
    page = PAGE.replace(
        "<style>", '<link rel="stylesheet" href="https://cdn.example.invalid/x.css"><style>'
    )
    out = inline_css(page)
    assert 'style="color:#111' in out


def test_a_premailer_failure_is_a_template_error():
    with pytest.raises(TemplateError, match="inlining CSS failed"):
        inline_css("")
