"""The issue body: CommonMark to HTML, and the same content as readable plain text."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

TEXT_WIDTH = 72

# Raw HTML in an issue is escaped, not passed through: the layout owns the markup.
_md = MarkdownIt("commonmark", {"html": False, "typographer": False})


def to_html(markdown: str) -> str:
    return _md.render(markdown)


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
            if href and href not in (label, "mailto:" + label):
                out.append(f" ({href})")
        elif kind == "image":
            alt = inline_text(child.children or [])
            out.append(f"[{alt}]" if alt else "")
    return "".join(out)
