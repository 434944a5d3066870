"""The only premailer call: move the CSS into style attributes, keep media queries."""

from __future__ import annotations

import logging

import premailer

from newsletter.errors import TemplateError


def inline_css(html: str) -> str:
    """Inline the document's <style> rules; rules that cannot be inlined stay in <style>.

    No network (no external stylesheets fetched) and `!important` kept, because
    the mobile media query needs it to beat the inlined widths.
    """
    try:
        inliner = premailer.Premailer(
            html,
            allow_network=False,
            strip_important=False,
            keep_style_tags=False,
            disable_validation=True,
            cssutils_logging_level=logging.CRITICAL,
        )
        out = inliner.transform(pretty_print=False)
    except premailer.premailer.ExternalNotFoundError as exc:
        raise TemplateError(f"inlining CSS: external stylesheet not allowed: {exc}") from None
    except Exception as exc:  # premailer/lxml raise many types on bad CSS or markup
        raise TemplateError(f"inlining CSS failed: {exc}") from None
    if html.lstrip().lower().startswith("<!doctype") and not out.lstrip().lower().startswith(
        "<!doctype"
    ):
        out = "<!DOCTYPE html>\n" + out
    # premailer drops the final newline; the message's HTML part always ends with one,
    # so without it the written .html would differ from what readers get.
    if html.endswith("\n") and not out.endswith("\n"):
        out += "\n"
    return out
