"""Jinja2 over templates/: the issue's HTML and text, with per-recipient slots.

The layout is rendered once per issue. What differs per recipient (name,
address, unsubscribe and view-online links, merge fields: see fields.py) is left
as a slot marker: a plain token made of characters that survive HTML escaping,
premailer and URL percent-encoding untouched (premailer turns ``{{ x }}`` inside an href into
``{{%20x%20}}``). `SlotTemplate.fill` then only joins strings.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2

from newsletter.errors import TemplateError
from newsletter.issue.fields import is_field_slot

SLOTS = ("name", "email", "unsubscribe_url", "view_online_url")
HTML_TEMPLATE = "email.html"
TEXT_TEMPLATE = "email.txt"


def marker(slot: str) -> str:
    return f"__nlslot_{slot}__"


MARKER = re.compile(r"__nlslot_([a-z0-9_]+?)__")
_LINK_SLOT = re.compile(r"link\d+")


class SlotTemplate:
    """A rendered document with slot markers, split once so that filling is a join."""

    __slots__ = ("_parts", "_slot_at", "_escape", "source")

    def __init__(self, source: str, escape: Callable[[str], str] | None = None) -> None:
        self.source = source
        self._escape = escape
        pieces = MARKER.split(source)
        # split() alternates literal text and slot names: even indexes are text.
        self._parts = pieces
        self._slot_at = [(i, pieces[i]) for i in range(1, len(pieces), 2)]
        unknown = {
            name
            for _, name in self._slot_at
            if name not in SLOTS and not _LINK_SLOT.fullmatch(name) and not is_field_slot(name)
        }
        if unknown:
            raise TemplateError(f"unknown slot marker(s) in template output: {sorted(unknown)}")

    @property
    def escape(self) -> Callable[[str], str] | None:
        """How a value is escaped in this document (None: as it is)."""
        return self._escape

    def derive(self, source: str) -> SlotTemplate:
        """Another template (a part of this one) with the same escaping."""
        return SlotTemplate(source, self._escape)

    @property
    def slots(self) -> set[str]:
        return {name for _, name in self._slot_at}

    def fill(self, values: Mapping[str, str]) -> str:
        parts = self._parts.copy()
        escape = self._escape
        for i, name in self._slot_at:
            value = values[name]
            parts[i] = escape(value) if escape else value
        return "".join(parts)


def has_slots(text: str) -> bool:
    return MARKER.search(text) is not None


def escape_html(value: str) -> str:
    """html.escape(value, quote=True), which costs about 1.3 us on an unsubscribe link;
    most values have nothing to escape, and five `in` tests say so in 0.2 us."""
    if "&" in value or "<" in value or ">" in value or '"' in value or "'" in value:
        return html.escape(value, quote=True)
    return value


def html_slots(source: str) -> SlotTemplate:
    return SlotTemplate(source, escape=escape_html)


def text_slots(source: str) -> SlotTemplate:
    return SlotTemplate(source)


def environment(templates_dir: Path) -> jinja2.Environment:
    if not templates_dir.is_dir():
        raise TemplateError(f"{templates_dir}: templates folder not found")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=jinja2.select_autoescape(["html", "htm"], default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["slot"] = {name: marker(name) for name in SLOTS}
    return env


def render(env: jinja2.Environment, name: str, context: Mapping[str, Any]) -> str:
    """Render one template; any Jinja2 failure becomes one line naming the template and line."""
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        where = _template_path(env, exc.name or name)
        raise TemplateError(
            f"{where}:{exc.lineno}: template syntax error: {exc.message}"
        ) from None
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(
            f"{_template_path(env, name)}: template not found: {exc.name}"
        ) from None
    except jinja2.UndefinedError as exc:
        where = _where_in_template(env, exc.__traceback__) or str(_template_path(env, name))
        raise TemplateError(f"{where}: undefined variable: {exc.message}") from None
    except jinja2.TemplateError as exc:
        where = _where_in_template(env, exc.__traceback__) or str(_template_path(env, name))
        raise TemplateError(f"{where}: template error: {exc}") from None


def _template_path(env: jinja2.Environment, name: str) -> Path | str:
    loader = env.loader
    if isinstance(loader, jinja2.FileSystemLoader) and loader.searchpath:
        return Path(loader.searchpath[0]) / name
    return name


def _where_in_template(env: jinja2.Environment, tb: TracebackType | None) -> str | None:
    """The innermost template frame: Jinja2 rewrites tracebacks to point at template lines."""
    found = None
    loader = env.loader
    roots = (
        [str(Path(p).resolve()) for p in loader.searchpath]
        if isinstance(loader, jinja2.FileSystemLoader)
        else []
    )
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if any(str(Path(filename).resolve()).startswith(root) for root in roots):
            found = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found
