"""Segments: who of the list a campaign goes to, as an expression over tags and attributes.

    tag:vip and not tag:churned
    attr:city = "Irvine" or (attr:plan != "free" and tag:beta)

The grammar, parsed by recursive descent into a small tree (this module is pure; the
ledger turns the tree into a SQLAlchemy condition, never into SQL text):

    expression := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" expression ")" | tag | attribute
    tag        := "tag:" NAME
    attribute  := "attr:" (NAME | "QUOTED") ("=" | "!=") ("QUOTED" | WORD)

`not` binds tighter than `and`, which binds tighter than `or`, as in SQL and Python.
Keywords are case-insensitive; tags are folded to lower case (VIP and vip are one
tag); attribute names are lower case, as the import stores them; values compare
exactly. A subscriber without the attribute does not match `=` and does match `!=`
(`!=` is `not =`). A name from `[segments]` stands for its expression.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from newsletter.errors import UsageError

# A tag or an attribute name: letters, digits and _ . - (no spaces, quotes, parentheses).
TAG_PATTERN = re.compile(r"[^\W_][\w.\-]*")
MAX_TAG = 64  # the tags table's column
MAX_LENGTH = 2000  # an expression longer than this is not one a person wrote
MAX_DEPTH = 50  # nesting: a recursive parser's stack stays small


class SegmentError(UsageError):
    """A segment expression that does not parse (exit 2): says where."""


@dataclass(frozen=True)
class Tag:
    tag: str


@dataclass(frozen=True)
class Attr:
    name: str
    value: str
    negated: bool = False  # `!=`


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]


Node = Tag | Attr | Not | And | Or


@dataclass(frozen=True)
class Segment:
    """A parsed segment: the expression as given (or as `[segments]` has it) and its tree."""

    expression: str
    tree: Node
    name: str | None = None  # the `[segments]` key it came from

    def describe(self) -> str:
        return f"{self.name} ({self.expression})" if self.name else self.expression


def normalize_tag(text: str) -> str:
    """A tag as stored: stripped, lower case; ValueError when it is not a tag."""
    tag = text.strip().lower()
    if not TAG_PATTERN.fullmatch(tag):
        raise ValueError(
            "a tag is letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    if len(tag) > MAX_TAG:
        raise ValueError(f"a tag is at most {MAX_TAG} characters")
    return tag


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<op>!=|=|\(|\))
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<word>[^\s()="!]+)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # op, string, word, end
    text: str
    pos: int  # 0-based offset in the expression


def _tokens(text: str) -> list[_Token]:
    found: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            char = text[pos]
            if char == '"':
                raise SegmentError(_at(text, pos, "a quoted value is not closed"))
            raise SegmentError(_at(text, pos, f"unexpected {char!r}"))
        kind = match.lastgroup or "space"
        if kind != "space":
            found.append(_Token(kind, match.group(), pos))
        pos = match.end()
    found.append(_Token("end", "", len(text)))
    return found


def _at(text: str, pos: int, message: str) -> str:
    # Column counted from 1, as editors do.
    return f"segment {text!r}: column {pos + 1}: {message}"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.index = 0
        self.depth = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def fail(self, message: str, token: _Token | None = None) -> SegmentError:
        return SegmentError(_at(self.text, (token or self.token).pos, message))

    def keyword(self, word: str) -> bool:
        if self.token.kind == "word" and self.token.text.lower() == word:
            self.index += 1
            return True
        return False

    def parse(self) -> Node:
        if self.token.kind == "end":
            raise self.fail('empty: expected tag:NAME or attr:NAME = "VALUE"')
        node = self.expression()
        if self.token.kind != "end":
            what = "')' without its '('" if self.token.text == ")" else repr(self.token.text)
            raise self.fail(f"unexpected {what}; expected 'and', 'or' or the end")
        return node

    def expression(self) -> Node:
        operands = [self.term()]
        while self.keyword("or"):
            operands.append(self.term())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def term(self) -> Node:
        operands = [self.factor()]
        while self.keyword("and"):
            operands.append(self.factor())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def factor(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nested more than {MAX_DEPTH} deep")
        try:
            if self.keyword("not"):
                return Not(self.factor())
            token = self.token
            if token.text == "(":
                self.index += 1
                node = self.expression()
                if self.token.text != ")":
                    raise self.fail(f"expected ')' to close the '(' at column {token.pos + 1}")
                self.index += 1
                return node
            return self.condition()
        finally:
            self.depth -= 1

    def condition(self) -> Node:
        token = self.token
        if token.kind == "end":
            raise self.fail("unexpected end; expected tag:NAME or attr:NAME")
        if token.kind != "word":
            raise self.fail(f"unexpected {token.text!r}; expected tag:NAME or attr:NAME")
        prefix, colon, rest = token.text.partition(":")
        prefix = prefix.lower()
        if colon and prefix == "tag":
            self.index += 1
            try:
                return Tag(normalize_tag(rest))
            except ValueError as exc:
                raise self.fail(f"tag {rest!r}: {exc}", token) from None
        if colon and prefix == "attr":
            return self.attribute(token, rest)
        if token.text.lower() in ("and", "or"):
            raise self.fail(f"'{token.text}' needs a condition before it")
        raise self.fail(f"unknown {token.text!r}; expected tag:NAME or attr:NAME")

    def attribute(self, token: _Token, rest: str) -> Node:
        self.index += 1
        if not rest and self.token.kind == "string" and self.token.pos == token.pos + 5:
            rest = _unquote(self.token.text)  # attr:"first name"
            self.index += 1
        elif not TAG_PATTERN.fullmatch(rest):
            raise self.fail(f'attr:{rest}: expected attr:NAME or attr:"NAME"', token)
        name = rest.strip().lower()
        if not name or '"' in name:
            raise self.fail("an attribute name is not empty and has no '\"'", token)
        op = self.token
        if op.text not in ("=", "!="):
            raise self.fail(f"expected '=' or '!=' after attr:{name}")
        self.index += 1
        value = self.token
        if value.kind == "string":
            text = _unquote(value.text)
        elif value.kind == "word" and value.text.lower() not in ("and", "or", "not"):
            text = value.text
        else:
            raise self.fail(f'expected a value after attr:{name} {op.text} (a "quoted" one)')
        self.index += 1
        return Attr(name, text, negated=op.text == "!=")


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted[1:-1])


def parse(text: str) -> Node:
    """The tree of a segment expression; SegmentError (one line, with the column) if bad."""
    if len(text) > MAX_LENGTH:
        raise SegmentError(f"segment: longer than {MAX_LENGTH} characters")
    return _Parser(text).parse()


SEGMENT_NAME = re.compile(r"[A-Za-z0-9][\w-]*")  # a key of [segments]


def resolve(text: str, named: Mapping[str, str]) -> Segment:
    """`--segment TEXT`: a name from `[segments]` first, else an expression."""
    text = text.strip()
    if text in named:
        return Segment(named[text], parse(named[text]), name=text)
    if SEGMENT_NAME.fullmatch(text) and text.lower() not in ("and", "or", "not"):
        close = difflib.get_close_matches(text, list(named), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(named))}"
        raise SegmentError(
            f"segment {text!r}: no such name in [segments] ({hint if named else 'none set'}),"
            ' and not an expression (tag:NAME, attr:NAME = "VALUE")'
        )
    return Segment(text, parse(text))
