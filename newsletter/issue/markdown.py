"""The issue body: CommonMark to HTML, and the same content as readable plain text."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token

TEXT_WIDTH = 72

# `![decorative](url)`: an image that says nothing (a divider, a flourish). It gets
# alt="" and role="presentation", which tells screen readers to skip it and `check`
# that the empty alt text is meant.
DECORATIVE = "decorative"


def _fuzzy_links_www_only(state: StateCore) -> None:
    """Keep the scheme-less links linkify found only when they start with "www.".

    linkify-it also links bare host names, and in prose those are often not links
    at all ("Node.js", "setup.py"). A "www." name is meant as one; it gets https, as
    browsers try first, rather than the http linkify-it assumes.
    """
    for block in state.tokens:
        children = block.children
        if block.type != "inline" or not children:
            continue
        kept: list[Token] = []
        i = 0
        while i < len(children):
            token = children[i]
            label = children[i + 1] if i + 1 < len(children) else None
            href = str(token.attrGet("href") or "")
            if (
                token.type == "link_open"
                and token.markup == "linkify"
                and label is not None
                and href.startswith("http://")
                and not label.content.lower().startswith("http://")
            ):
                if label.content.lower().startswith("www."):
                    token.attrSet("href", "https://" + href.removeprefix("http://"))
                else:
                    kept.append(label)  # the text stays; link_open and link_close go
                    i += 3
                    continue
            kept.append(token)
            i += 1
        block.children = kept


def _decorative_images(state: StateCore) -> None:
    for block in state.tokens:
        for token in block.children or []:
            if token.type != "image":
                continue
            alt = "".join(c.content for c in token.children or [])
            if alt.strip().lower() == DECORATIVE:
                token.children = []
                token.content = ""
                token.attrSet("role", "presentation")


def _markdown(html: bool = False) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": html, "typographer": False, "linkify": True})
    # Bare URLs in an article become links (linkify-it), as readers expect them to be.
    md.enable("linkify")
    md.core.ruler.after("linkify", "www_only", _fuzzy_links_www_only)
    md.core.ruler.after("www_only", "decorative_images", _decorative_images)
    return md


# Raw HTML in an issue is escaped, not passed through: the layout owns the markup.
# `check` warns about it, with the line (`raw_html_lines`).
_md = _markdown()
_md_with_html = _markdown(html=True)


def to_html(markdown: str) -> str:
    return _md.render(markdown)


def raw_html_lines(markdown: str) -> list[tuple[int, str]]:
    """The lines (0-based) of the body that hold raw HTML, each with its first tag.

    CommonMark decides what is raw HTML (a block, or an inline tag or comment), so a
    `<` in prose, in code or in an autolink like <https://example.com> is not.
    """
    found: dict[int, str] = {}
    for block in _md_with_html.parse(markdown):
        if block.type == "html_block" and block.map:
            found.setdefault(block.map[0], block.content.strip().split("\n")[0])
        elif block.type == "inline" and block.map:
            line = block.map[0]
            for child in block.children or []:
                if child.type in ("softbreak", "hardbreak"):
                    line += 1
                elif child.type == "html_inline":
                    found.setdefault(line, child.content)
    return sorted(found.items())


def to_text(markdown: str, width: int = TEXT_WIDTH) -> str:
    """Plain text for the text/plain part: headings underlined, links as "text (url)"."""
    return _TextWriter(width).render(_md.parse(markdown))


class _TextWriter:
    def __init__(self, width: int) -> None:
        self.width = width
        self.blocks: list[str] = []
        # One entry per open list item or quote: [prefix for the next line, prefix after it].
        self.prefixes: list[list[str]] = []
        self.lists: list[list[int | None]] = []  # per open list: [next number] or [None]

    def render(self, tokens: Sequence[Token]) -> str:
        for i, token in enumerate(tokens):
            kind = token.type
            if kind == "heading_open":
                text = inline_text(tokens[i + 1].children or [])
                underline = "=" if token.tag == "h1" else "-"
                self._add(text + "\n" + underline * min(len(text), self.width))
            elif kind == "paragraph_open":
                self._add(inline_text(tokens[i + 1].children or []), wrap=True)
            elif kind in ("bullet_list_open", "ordered_list_open"):
                start = int(token.attrGet("start") or 1) if kind == "ordered_list_open" else None
                self.lists.append([start])
            elif kind in ("bullet_list_close", "ordered_list_close"):
                self.lists.pop()
            elif kind == "list_item_open":
                current = self.lists[-1]
                if current[0] is None:
                    marker = "- "
                else:
                    marker = f"{current[0]}. "
                    current[0] += 1
                self.prefixes.append([marker, " " * len(marker)])
            elif kind == "blockquote_open":
                self.prefixes.append(["> ", "> "])
            elif kind in ("list_item_close", "blockquote_close"):
                self.prefixes.pop()
            elif kind in ("fence", "code_block"):
                self._add(
                    "\n".join("    " + line for line in token.content.rstrip("\n").split("\n"))
                )
            elif kind == "hr":
                self._add("* * *")
        return "\n\n".join(self.blocks) + "\n"

    def _add(self, text: str, wrap: bool = False) -> None:
        first = "".join(p[0] for p in self.prefixes)
        rest = "".join(p[1] for p in self.prefixes)
        for entry in self.prefixes:
            entry[0] = entry[1]
        lines: list[str] = []
        for n, line in enumerate(text.split("\n")):
            lead = first if n == 0 else rest
            if wrap:
                lines.append(
                    textwrap.fill(
                        line,
                        width=self.width,
                        initial_indent=lead,
                        subsequent_indent=rest,
                        break_long_words=False,
                        break_on_hyphens=False,
                    )
                )
            else:
                lines.append(lead + line)
        self.blocks.append("\n".join(lines))


def inline_text(children: Sequence[Token]) -> str:
    out: list[str] = []
    links: list[tuple[str, int]] = []
    for child in children:
        kind = child.type
        if kind in ("text", "code_inline"):
            out.append(child.content)
        elif kind == "softbreak":
            out.append(" ")
        elif kind == "hardbreak":
            out.append("\n")
        elif kind == "link_open":
            links.append((str(child.attrGet("href") or ""), len(out)))
        elif kind == "link_close" and links:
            href, start = links.pop()
            label = "".join(out[start:])
            if href.partition("://")[2] == label:  # www.example.com: the URL says it all
                out[start:] = [href]
            elif href and href not in (label, "mailto:" + label):
                out.append(f" ({href})")
        elif kind == "image":
            alt = inline_text(child.children or [])
            out.append(f"[{alt}]" if alt else "")
    return "".join(out)
