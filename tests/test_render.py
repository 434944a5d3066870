"""Jinja2 over templates/, and the per-recipient slots that survive premailer."""

from __future__ import annotations

import html as html_lib

import jinja2
import lxml.html
import premailer
import pytest

from newsletter import config
from newsletter.errors import TemplateError
from newsletter.issue import inline, markdown, publish, render


@pytest.fixture
def templates(tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    return folder


def render_error(folder, name, context=None) -> str:
    env = render.environment(folder)
    with pytest.raises(TemplateError) as info:
        render.render(env, name, context or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_syntax_error_names_the_template_and_line(templates):
    (templates / "email.html").write_text("<p>one</p>\n<p>two</p>\n<p>{{ oops }</p>\n")
    message = render_error(templates, "email.html", {"oops": 1})
    assert message.startswith(f"{templates / 'email.html'}:3: template syntax error")


def test_a_syntax_error_in_an_included_template_names_that_template(templates):
    (templates / "email.html").write_text('<style>\n{% include "style.css" %}\n</style>\n')
    (templates / "style.css").write_text("p { color: red; }\n{% if %}\n")
    message = render_error(templates, "email.html")
    assert message.startswith(f"{templates / 'style.css'}:2: template syntax error")


def test_an_undefined_variable_names_the_template_and_line(templates):
    (templates / "email.txt").write_text("Hello\n\n{{ issue.title }}\n{{ issue.titel }}\n")
    message = render_error(templates, "email.txt", {"issue": {"title": "T"}})
    assert "email.txt:4: undefined variable" in message
    assert "titel" in message


def test_an_undefined_variable_in_an_included_template(templates):
    (templates / "email.html").write_text('<p>x</p>\n{% include "part.html" %}\n')
    (templates / "part.html").write_text("<p>{{ nobody }}</p>\n")
    message = render_error(templates, "email.html")
    assert "part.html:1: undefined variable" in message
    assert "'nobody' is undefined" in message


def test_a_missing_template_is_named(templates):
    assert "template not found: email.html" in render_error(templates, "email.html")


def test_a_missing_templates_folder(tmp_path):
    with pytest.raises(TemplateError, match="templates folder not found"):
        render.environment(tmp_path / "nowhere")


def test_html_is_autoescaped_and_text_is_not(templates):
    (templates / "a.html").write_text("<p>{{ v }}</p>")
    (templates / "a.txt").write_text("{{ v }}")
    env = render.environment(templates)
    assert render.render(env, "a.html", {"v": "<b>&"}) == "<p>&lt;b&gt;&amp;</p>"
    assert render.render(env, "a.txt", {"v": "<b>&"}) == "<b>&"


def test_slot_markers_are_plain_tokens():
    for name in render.SLOTS:
        token = render.marker(name)
        # Nothing that HTML escaping, premailer or percent-encoding would touch.
        assert token == html_lib.escape(token) and token.replace("_", "").isalnum()


def test_fill_joins_the_values_in_and_escapes_them_in_html():
    source = f'<p>Hi {render.marker("name")}</p><a href="{render.marker("unsubscribe_url")}">'
    tpl = render.html_slots(source)
    assert tpl.slots == {"name", "unsubscribe_url"}
    out = tpl.fill({"name": 'Ann <"&">', "unsubscribe_url": "https://x.test/u?a=1&b=2"})
    assert out == '<p>Hi Ann &lt;&quot;&amp;&quot;&gt;</p><a href="https://x.test/u?a=1&amp;b=2">'
    text = render.text_slots(f"Hi {render.marker('name')}\n")
    assert text.fill({"name": 'Ann <"&">'}) == 'Hi Ann <"&">\n'


def test_fill_leaves_the_template_reusable():
    tpl = render.text_slots(f"{render.marker('name')} and {render.marker('name')}")
    assert tpl.fill({"name": "A"}) == "A and A"
    assert tpl.fill({"name": "B"}) == "B and B"


def test_an_unknown_slot_marker_is_an_error():
    with pytest.raises(TemplateError, match="nickname"):
        render.text_slots("hello __nlslot_nickname__")


def test_a_slot_inside_an_href_survives_premailer(templates):
    (templates / "email.html").write_text(
        "<!DOCTYPE html>\n<html><head><style>a { color: red; }</style></head><body>\n"
        '<a href="{{ slot.unsubscribe_url }}">Unsubscribe</a>\n'
        '<a href="https://x.test/v?e={{ slot.email }}">View</a>\n</body></html>\n'
    )
    env = render.environment(templates)
    inlined = inline.inline_css(render.render(env, "email.html", {}))
    assert f'href="{render.marker("unsubscribe_url")}"' in inlined
    tpl = render.html_slots(inlined)
    url = "https://news.example/unsubscribe/abc.def?list=1&from=email"
    filled = tpl.fill({"unsubscribe_url": url, "email": "a+b@example.com"})
    hrefs = [a.get("href") for a in lxml.html.document_fromstring(filled).iter("a")]
    assert hrefs == [url, "https://x.test/v?e=a+b@example.com"]
    assert 'style="color:red"' in filled


# --- the sample issue: built once, filled per recipient -----------------------------------


@pytest.fixture
def built(publication, sample_issue):
    cfg = config.load(publication)
    return cfg, publish.build_issue(cfg, publish.load_issue(sample_issue))


def values(**overrides: str) -> dict[str, str]:
    base = {
        "name": "Ann",
        "email": "ann@example.com",
        "unsubscribe_url": "https://news.example/unsubscribe/t0k.en?list=briefing&src=email",
        "view_online_url": "https://news.example/issues/sample",
    }
    return base | overrides


def test_every_slot_of_the_sample_is_filled(built):
    _, issue = built
    assert issue.html.slots == set(render.SLOTS)
    assert {"name", "email", "unsubscribe_url"} <= issue.text.slots
    for part in (issue.html.fill(values()), issue.text.fill(values())):
        assert "__nlslot_" not in part and "nlslot" not in part


def test_the_sample_unsubscribe_href_is_the_exact_url(built):
    _, issue = built
    url = values()["unsubscribe_url"]
    filled = issue.html.fill(values())
    assert f'href="{html_lib.escape(url)}"' in filled
    doc = lxml.html.document_fromstring(filled)
    links = {a.text_content(): a.get("href") for a in doc.iter("a")}
    assert links["Unsubscribe"] == url
    assert links["View in browser"] == values()["view_online_url"]
    assert f"Unsubscribe: {url}\n" in issue.text.fill(values())


def test_a_name_with_markup_is_escaped_in_html(built):
    _, issue = built
    filled = issue.html.fill(values(name="<b>Bob</b> & Co"))
    assert "Hi &lt;b&gt;Bob&lt;/b&gt; &amp; Co," in filled
    doc = lxml.html.document_fromstring(filled)
    assert not list(doc.iter("b"))
    assert "Hi <b>Bob</b> & Co," in issue.text.fill(values(name="<b>Bob</b> & Co"))


def test_filling_does_not_rerun_markdown_jinja_or_premailer(built, monkeypatch):
    cfg, issue = built
    template = publish.message_template(cfg, issue)

    def forbidden(*args, **kwargs):
        raise AssertionError("per-recipient work re-ran an issue-level step")

    monkeypatch.setattr(premailer, "Premailer", forbidden)
    monkeypatch.setattr(premailer.premailer.Premailer, "transform", forbidden)
    monkeypatch.setattr(inline, "inline_css", forbidden)
    monkeypatch.setattr(markdown, "to_html", forbidden)
    monkeypatch.setattr(markdown, "to_text", forbidden)
    monkeypatch.setattr(render, "render", forbidden)
    monkeypatch.setattr(jinja2.Environment, "get_template", forbidden)
    monkeypatch.setattr(jinja2.Template, "render", forbidden)
    seen = set()
    for n in range(300):
        v = values(name=f"Reader {n}", email=f"r{n}@example.com")
        html = issue.html.fill(v)
        text = issue.text.fill(v)
        message = template.render(v["email"], v["name"], v, f"tok{n}")
        assert f"Hi Reader {n}," in html and f"Hi Reader {n}," in text
        assert f"r{n}@example.com".encode() in message
        seen.add(html)
    assert len(seen) == 300
    # The check really guards: the issue-level step now fails.
    with pytest.raises(AssertionError):
        publish.build_issue(cfg, issue.issue)
