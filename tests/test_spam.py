"""`check --spam`: SpamAssassin (local rules) scores the built message, rule by rule."""

from __future__ import annotations

import lxml.html

from newsletter import config
from newsletter.issue import publish


def test_the_preheader_stays_hidden_after_inlining(publication, sample_issue):
    """Hidden without a colour: display none, no height, and Outlook's mso-hide."""
    cfg = config.load(publication)
    built = publish.build_issue(cfg, publish.load_issue(sample_issue))
    html = publish.sample(cfg, built).html
    (div,) = lxml.html.document_fromstring(html).find_class("preheader")
    assert div.text_content() == built.issue.preheader
    style = {
        name.strip(): value.strip()
        for name, _, value in (d.partition(":") for d in div.get("style", "").split(";"))
    }
    assert style == {
        "display": "none",
        "max-height": "0",
        "overflow": "hidden",
        "mso-hide": "all",
    }
    # The preheader is the first thing in the body, before any visible text.
    assert div.getparent().tag == "body" and div.getprevious() is None
