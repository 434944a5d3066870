"""Issues: one Markdown file with YAML front matter, or a plain-text article imported into one."""

from __future__ import annotations

import calendar
import datetime as dt
import difflib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from newsletter.config import header_value_problem
from newsletter.errors import ContentError
from newsletter.fileio import read_text

FRONT_MATTER_KEYS = ("title", "subject", "preheader", "date", "sponsor", "author", "source")
_DATED_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})-(.+)$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class Issue:
    path: Path
    slug: str
    date: dt.date
    title: str
    subject: str
    body: str
    preheader: str = ""
    sponsor: str | None = None  # None: the configured default; "none": no sponsor block
    author: str = ""
    source: str = ""
    body_line: int = 1  # the file's line number of the body's first line


def read_issue(path: Path) -> Issue:
    """Read an issue file; every problem is reported with the file and, where known, the line."""
    text = read_text(path)
    meta, body, body_line = _split_front_matter(path, text)
    unknown = [k for k in meta if k not in FRONT_MATTER_KEYS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), FRONT_MATTER_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ContentError(f"{path}: unknown front matter key {key!r}{hint}")

    values: dict[str, str] = {}
    for key in ("title", "subject", "preheader", "author", "source", "sponsor"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ContentError(f"{path}: front matter {key}: expected text, got {value!r}")
        values[key] = str(value).strip()
    for key in ("title", "subject"):
        if not values.get(key):
            raise ContentError(f"{path}: front matter: missing {key}")
    # The subject is a header: it follows the header rule newsletter.toml's values follow.
    # The title and preheader only reach the page, where a line break would still split
    # what is meant as one line.
    problem = header_value_problem(values["subject"])
    if problem:
        raise ContentError(f"{path}: front matter subject: {problem}")
    for key in ("preheader", "title"):
        if "\n" in values.get(key, "") or "\r" in values.get(key, ""):
            raise ContentError(f"{path}: front matter {key}: must not contain a line break")

    stem_match = _DATED_NAME.match(path.stem)
    slug = stem_match.group(2) if stem_match else path.stem
    if not _SLUG.match(slug):
        raise ContentError(
            f"{path}: file name: the slug {slug!r} must be lowercase letters, digits and '-'"
        )
    date = _issue_date(path, meta.get("date"), stem_match.group(1) if stem_match else None)
    if not body.strip():
        raise ContentError(f"{path}: the issue has no body")
    return Issue(
        path=path,
        slug=slug,
        date=date,
        body=body,
        title=values["title"],
        subject=values["subject"],
        preheader=values.get("preheader", ""),
        sponsor=values.get("sponsor"),
        author=values.get("author", ""),
        source=values.get("source", ""),
        body_line=body_line,
    )


def issue_files(folder: Path) -> list[Path]:
    """The issue files in `folder` (its *.md files), by name: for a dated name
    (YYYY-MM-DD-slug.md) that is by date. None when the folder is not there."""
    return sorted(folder.glob("*.md")) if folder.is_dir() else []


def newest_issue(folder: Path) -> Path | None:
    """The issue in `folder` with the latest date: the one in its name
    (YYYY-MM-DD-slug.md), else its front matter's; on a tie, the last name. A file
    whose date cannot be read is passed over (`check` names its problem)."""
    dated: list[tuple[dt.date, str, Path]] = []
    for path in issue_files(folder):
        match = _DATED_NAME.match(path.stem)
        try:
            day = parse_date(match.group(1)) if match else read_issue(path).date
        except (ValueError, ContentError):
            continue
        dated.append((day, path.name, path))
    return max(dated)[2] if dated else None


def _split_front_matter(path: Path, text: str) -> tuple[dict[str, object], str, int]:
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        raise ContentError(f"{path}:1: expected front matter starting with '---'")
    end = next((n for n, line in enumerate(lines) if n and line.strip() in ("---", "...")), 0)
    if not end:
        raise ContentError(f"{path}:1: front matter is not closed by a '---' line")
    block = "\n".join(lines[1:end])
    try:
        meta = yaml.safe_load(block) if block.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        # The scanner notices a key without ':' or an unclosed quote only on a later
        # line; its context mark is where that key or quote starts, the line to fix.
        # (A parser's context is the whole enclosing mapping: its problem mark is right.)
        if isinstance(exc, yaml.scanner.ScannerError) and exc.context_mark is not None:
            mark = exc.context_mark
        line = mark.line + 2 if mark is not None else 1
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ContentError(f"{path}:{line}: malformed front matter: {problem}") from None
    except ValueError as exc:  # well-formed YAML, impossible value: `date: 2024-13-01`
        raise ContentError(f"{path}: front matter: invalid date: {exc}") from None
    except RecursionError:  # PyYAML composes nested lists and mappings recursively
        raise ContentError(f"{path}: front matter: lists or mappings nested too deeply") from None
    if not isinstance(meta, dict):
        raise ContentError(f"{path}:2: front matter must be 'key: value' lines")
    # lines[end] is the closing '---', the file's line end + 1.
    return meta, "\n".join(lines[end + 1 :]), end + 2


def _issue_date(path: Path, value: object, from_name: str | None) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value) if value is not None else from_name
    if text is None:
        raise ContentError(
            f"{path}: front matter: missing date (or name the file YYYY-MM-DD-slug.md)"
        )
    try:
        return parse_date(text)
    except ValueError as exc:
        where = "front matter date" if value is not None else "file name"
        raise ContentError(f"{path}: {where}: {exc}") from None


_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


def parse_date(text: str) -> dt.date:
    """YYYY-MM-DD; a ValueError says whether the format or the date itself is wrong."""
    match = _ISO_DATE.match(text.strip())
    if not match:
        raise ValueError(f"expected YYYY-MM-DD, got {text!r}")
    year, month, day = (int(g) for g in match.groups())
    if not 1 <= month <= 12:
        raise ValueError(f"{text} is not a valid date: there is no month {month}")
    days = calendar.monthrange(year, month)[1] if year else 31
    if not 1 <= day <= days:
        raise ValueError(
            f"{text} is not a valid date: {calendar.month_name[month]} {year} has {days} days"
        )
    try:
        return dt.date(year, month, day)
    except ValueError as exc:  # year 0
        raise ValueError(f"{text} is not a valid date: {exc}") from None


# --- importing a plain-text article -------------------------------------------------------


@dataclass(frozen=True)
class ArticleLine:
    """A line of the imported article: its number in the file (from 1) and its text."""

    number: int
    text: str


@dataclass
class ImportedArticle:
    markdown: str
    slug: str
    date: dt.date
    notes: list[str] = field(default_factory=list)
    headings: list[ArticleLine] = field(default_factory=list)  # lines made subheadings
    skipped: list[ArticleLine] = field(default_factory=list)  # markup-only lines left out


_SOURCE_LINE = re.compile(r"^\((?:according to|source:?|sources:?)\s+(.+?)\.?\)$", re.IGNORECASE)
_END_PUNCTUATION = tuple(".!?:;,\"'”’)…")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"”’]?\s+(?=[A-Z\"“‘(])")
# An HTML tag or comment, as pasted from a web page: <script>, </div>, <br/>, <!-- x -->.
# Not an autolink (<https://...>) or an address (<ann@example.com>).
_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>")
PREHEADER_MAX = 140
SUBHEADING_MAX = 90


def import_article(
    text: str, date: dt.date, sponsor_names: Iterable[str] = (), slug: str | None = None
) -> ImportedArticle:
    """Turn a plain-text article into an issue (front matter + Markdown).

    The first line is the title; short lines without end punctuation become
    subheadings (listed in `headings`, with their line numbers); a closing
    "(According to ...)" line becomes the source; a trailing paragraph that
    advertises a configured sponsor is dropped, because the configured sponsor block
    is appended to every issue anyway. A line of nothing but markup (a stray
    `<script>` or `</div>` pasted along with the text) is left out (`skipped`), and a
    line with markup in it is never made a heading.
    """
    skipped: list[ArticleLine] = []
    blocks = _blocks(text, skipped)
    if not blocks:
        raise ContentError("the article is empty")
    first, *rest = blocks.pop(0)
    title = _one_line(first.text)
    if rest:
        blocks.insert(0, rest)
    notes: list[str] = []

    names = [n for n in sponsor_names if n]
    if blocks and any(n.lower() in _block_text(blocks[-1]).lower() for n in names):
        named = next(n for n in names if n.lower() in _block_text(blocks[-1]).lower())
        notes.append(
            f"removed the closing advertisement for {named} "
            "(the configured sponsor block is appended to every issue)"
        )
        blocks.pop()

    source = ""
    if blocks:
        match = _SOURCE_LINE.match(_one_line(_block_text(blocks[-1])))
        if match:
            source = match.group(1).strip()
            blocks.pop()
            notes.append(f"kept the source line as the issue's source: {source}")

    body: list[str] = []
    paragraphs: list[str] = []
    headings: list[ArticleLine] = []
    for block in blocks:
        line = _one_line(_block_text(block))
        if (
            len(block) == 1
            and len(line) <= SUBHEADING_MAX
            and not line.endswith(_END_PUNCTUATION)
            and not _TAG.search(line)
        ):
            headings.append(ArticleLine(block[0].number, line))
            body.append("## " + _escape_markdown(line))
        else:
            paragraphs.append(line)
            body.append(_escape_markdown(line))
    if not paragraphs:
        raise ContentError("the article has a title but no paragraphs")

    slug = slug or slugify(title)
    meta = {
        "title": title,
        "subject": title,
        "preheader": preheader_from(paragraphs[0]),
        "date": date,
    }
    if source:
        meta["source"] = source
    front = yaml.safe_dump(meta, allow_unicode=True, sort_keys=False, width=10_000)
    markdown = f"---\n{front}---\n\n" + "\n\n".join(body) + "\n"
    return ImportedArticle(
        markdown=markdown, slug=slug, date=date, notes=notes, headings=headings, skipped=skipped
    )


def _blocks(text: str, skipped: list[ArticleLine]) -> list[list[ArticleLine]]:
    """The article's paragraphs (runs of non-blank lines), each line with its number.

    Lines of nothing but markup go to `skipped` instead.
    """
    blocks: list[list[ArticleLine]] = []
    current: list[ArticleLine] = []
    for number, raw in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        line = raw.strip()
        if line and not _TAG.sub("", line).strip():
            skipped.append(ArticleLine(number, line))
        elif line:
            current.append(ArticleLine(number, line))
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def _block_text(block: list[ArticleLine]) -> str:
    return "\n".join(line.text for line in block)


def preheader_from(paragraph: str, limit: int = PREHEADER_MAX) -> str:
    """The first sentences of a paragraph that fit in `limit` characters."""
    sentences = _SENTENCE_END.split(paragraph.strip())
    text = ""
    for sentence in sentences:
        candidate = f"{text} {sentence}".strip()
        if len(candidate) > limit:
            break
        text = candidate
    if not text:
        cut = paragraph[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:")
        text = cut + "…"
    return text


_STOP_WORDS = frozenset(
    "a an and are as at be by for from has how in is it its of on or that the to was what"
    " when where which who why will with".split()
)


def slugify(title: str, max_words: int = 6, max_length: int = 50) -> str:
    """A short URL name: "What Motivated Biden to..." -> "motivated-biden-authorize-..."."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_title.lower().replace("'", ""))
    words = [w for w in words if w not in _STOP_WORDS][:max_words] or words[:max_words]
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > max_length:
            break
        slug = candidate
    return slug or "issue"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# A URL as written in the article is left unescaped, so that it becomes a link: an
# escaped "\_" inside it would end the link there.
_URL = re.compile(r"((?:https?://|www\.)[^\s<>]+)", re.IGNORECASE)


def _escape_markdown(text: str) -> str:
    # split() with a group alternates prose and URLs: odd indexes are URLs.
    parts = _URL.split(text)
    text = "".join(part if n % 2 else _escape_prose(part) for n, part in enumerate(parts))
    # A line that would start a heading, list or block quote.
    text = re.sub(r"^([#>+-])(?=\s)", r"\\\1", text)
    return re.sub(r"^(\d+)([.)])(?=\s)", r"\1\\\2", text)


def _escape_prose(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", text)
