"""Merge fields: `{{ subscriber.company | default("there") }}` in an issue's body and subject.

Render-once holds: at build time each expression becomes a slot, like the name's,
whose name spells the expression ("m" and the hex of its canonical JSON), so a
campaign's snapshot carries its fields and a worker or a resume needs nothing
else. Per recipient a slot is filled with the subscriber's value, filters
applied; the part's SlotTemplate escapes it for HTML (or not, in the text part),
and MessageTemplate encodes the subject (RFC 2047).

`{{` always starts a field in the body and the subject: anything else between
`{{` and `}}` is an error naming the file and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from newsletter.errors import TemplateError

# The filters, applied left to right. `default` stands in for a missing or empty value.
FILTERS: dict[str, Callable[[str], str]] = {
    "upper": str.upper,
    "lower": str.lower,
    "title": str.title,
    "capitalize": str.capitalize,
    "first_word": lambda v: v.split(maxsplit=1)[0] if v.split() else "",
}
DEFAULT = "default"
# subscriber.<key> beyond the attributes: what every subscriber row holds.
BUILTIN = ("name", "email", "first_name")

_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_KEY = re.compile(r"\s*subscriber\.([A-Za-z_][A-Za-z0-9_]*)\s*")
_FILTER = re.compile(
    r"\|\s*([A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?:\(\s*(?:\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)')\s*\)\s*)?"
)
_SLOT = re.compile(r"m(?:[0-9a-f]{2})+")
# A stand-in Markdown leaves alone (no "_" or "*"), swapped for the slot marker after it.
_STAND_IN = "zqnlfield{}qz"
_STAND_IN_RE = re.compile(r"zqnlfield(\d+)qz")


class FieldError(TemplateError):
    """A merge field that cannot be read: bad syntax or an unknown filter."""


@dataclass(frozen=True)
class Field:
    """One merge field: the subscriber's key and the filters applied to its value."""

    key: str
    filters: tuple[tuple[str, str], ...] = ()  # (filter, argument; "" without one)

    @property
    def slot(self) -> str:
        canonical = json.dumps([self.key, [list(f) for f in self.filters]], ensure_ascii=False)
        return "m" + canonical.encode("utf-8").hex()

    @property
    def has_default(self) -> bool:
        return any(name == DEFAULT for name, _ in self.filters)

    @property
    def text(self) -> str:
        """The field as an editor writes it."""
        parts = [f"subscriber.{self.key}"]
        for name, arg in self.filters:
            parts.append(
                f"{name}({json.dumps(arg, ensure_ascii=False)})" if name == DEFAULT else name
            )
        return "{{ " + " | ".join(parts) + " }}"

    def value(self, subscriber: Subscriber) -> str:
        value = subscriber.get(self.key)
        for name, arg in self.filters:
            if name == DEFAULT:
                value = value or arg
            else:
                value = FILTERS[name](value)
        return value


class Subscriber:
    """What the fields read of one subscriber: name, address, and stored attributes
    (the JSON text of subscribers.attributes, parsed only when a field asks)."""

    __slots__ = ("email", "name", "_attributes", "_parsed")

    def __init__(self, email: str, name: str, attributes: str | Mapping[str, Any] = "") -> None:
        self.email = email
        self.name = name
        self._attributes = attributes
        self._parsed: Mapping[str, Any] | None = None

    def attributes(self) -> Mapping[str, Any]:
        if self._parsed is None:
            raw = self._attributes
            self._parsed = parse_attributes(raw) if isinstance(raw, str) else raw
        return self._parsed

    def get(self, key: str) -> str:
        """The value of `key`: "" when the subscriber has none. An attribute is found
        by its key as stored, else as a field spells it (`Company Name` is company_name)."""
        if key == "name":
            return self.name
        if key == "email":
            return self.email
        if key == "first_name":
            return self.name.split(maxsplit=1)[0] if self.name.split() else ""
        return attribute(self.attributes(), key)


# raw_decode's scanner, without its wrapping (an attribute typeshed does not declare).
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_EMPTY: Mapping[str, Any] = {}


def parse_attributes(text: str) -> Mapping[str, Any]:
    """subscribers.attributes, the JSON object the store writes ({} when it is not one).
    The scanner alone: json.loads adds some 1.5 us a call to check what the store wrote."""
    if len(text) < 3:  # "", "{}"
        return _EMPTY
    try:
        loaded = _SCAN(text, 0)[0]
    except (ValueError, StopIteration):
        return _EMPTY
    return loaded if isinstance(loaded, dict) else _EMPTY


def attribute(attributes: Mapping[str, Any], key: str) -> str:
    """An attribute's value, found by its key as stored, else as a field spells it
    (`Company Name` is company_name); "" when there is none."""
    value = attributes.get(key)
    if value is None:
        for stored, found in attributes.items():
            if field_key(stored) == key:
                value = found
                break
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else str(value).strip()


def field_key(attribute: str) -> str:
    """An attribute's name as a field spells it: lowercase, words joined by "_"."""
    return re.sub(r"\W+", "_", attribute.strip().lower()).strip("_")


def parse(expression: str, where: str) -> Field:
    """`subscriber.KEY | filter | default("x")` (the text between `{{` and `}}`)."""
    shown = "{{" + expression + "}}"
    match = _KEY.match(expression)
    if not match:
        raise FieldError(
            f"{where}: merge field {shown}: expected subscriber.<key>"
            f' (e.g. {{{{ subscriber.company | default("there") }}}})'
        )
    key = match.group(1)
    filters: list[tuple[str, str]] = []
    pos = match.end()
    while pos < len(expression):
        found = _FILTER.match(expression, pos)
        if not found:
            raise FieldError(f"{where}: merge field {shown}: cannot read {expression[pos:]!r}")
        name, double, single = found.groups()
        has_arg = double is not None or single is not None
        arg = _unescape(double if double is not None else single or "")
        if name == DEFAULT:
            if not has_arg:
                raise FieldError(
                    f'{where}: merge field {shown}: default needs a value: default("x")'
                )
        elif name in FILTERS:
            if has_arg:
                raise FieldError(f"{where}: merge field {shown}: {name} takes no value")
        else:
            known = ", ".join([DEFAULT, *FILTERS])
            raise FieldError(
                f"{where}: merge field {shown}: unknown filter {name!r} (filters: {known})"
            )
        filters.append((name, arg))
        pos = found.end()
    return Field(key, tuple(filters))


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


@dataclass(frozen=True)
class Marked:
    """A text with its fields replaced by stand-ins (`stand_ins`) or slot markers."""

    text: str
    fields: tuple[Field, ...]
    places: tuple[str, ...] = ()  # where each field is written, for an error


def mark(text: str, where: Callable[[int], str], marker: Callable[[int, Field], str]) -> Marked:
    """Each `{{ ... }}` of `text` replaced by `marker(n, field)`; `where(offset)` names the
    place for an error. An unclosed `{{` is an error too."""
    fields: list[Field] = []
    places: list[str] = []

    def replace(match: re.Match[str]) -> str:
        place = where(match.start())
        field = parse(match.group(1), place)
        fields.append(field)
        places.append(place)
        return marker(len(fields) - 1, field)

    marked = _EXPRESSION.sub(replace, text)
    leftover = marked.find("{{")
    if leftover != -1:
        # Where it is in the original: the first "{{" not part of a field.
        spans = [m.span() for m in _EXPRESSION.finditer(text)]
        offset = next(i for i in _find_all(text, "{{") if not any(a <= i < b for a, b in spans))
        raise FieldError(f"{where(offset)}: merge field without its closing }}}}")
    return Marked(marked, tuple(fields), tuple(places))


def _find_all(text: str, needle: str) -> Iterable[int]:
    start = text.find(needle)
    while start != -1:
        yield start
        start = text.find(needle, start + 1)


def stand_in(n: int, field: Field) -> str:
    return _STAND_IN.format(n)


# A stand-in inside a link's or an image's address: Markdown put a field there.
_IN_ADDRESS = re.compile(r"""(?:href|src)\s*=\s*["'][^"']*?zqnlfield(\d+)qz""")


def refuse_in_addresses(html: str, marked: Marked) -> None:
    """A field in a link's address would be filled unencoded (a space breaks the link)
    and tracked links would lead to the marker: not supported, said where it is."""
    found = _IN_ADDRESS.search(html)
    if found:
        n = int(found.group(1))
        raise FieldError(
            f"{marked.places[n]}: merge field {marked.fields[n].text}: not allowed in a link's"
            " or an image's address"
        )


def swap_stand_ins(text: str, fields: tuple[Field, ...], marker: Callable[[str], str]) -> str:
    """The stand-ins Markdown kept, made the fields' slot markers."""
    return _STAND_IN_RE.sub(lambda m: marker(fields[int(m.group(1))].slot), text)


def is_field_slot(slot: str) -> bool:
    return _SLOT.fullmatch(slot) is not None


def from_slot(slot: str) -> Field:
    key, filters = json.loads(bytes.fromhex(slot[1:]).decode("utf-8"))
    return Field(key, tuple((name, arg) for name, arg in filters))


def in_slots(slots: Iterable[str]) -> tuple[Field, ...]:
    """The merge fields among a template's slots, in a stable order."""
    return tuple(from_slot(s) for s in sorted(set(slots)) if is_field_slot(s))


class Values:
    """Fills the field slots for one subscriber: {slot: value}. Runs per recipient, so
    it does what Field.value does with less: the attributes' JSON is parsed only when
    a field reads an attribute, and a field without filters costs a lookup."""

    def __init__(self, fields: Iterable[Field]) -> None:
        self._fields = [
            (
                f.slot,
                f.key,
                f.key not in BUILTIN,
                [(FILTERS.get(n), a) for n, a in f.filters],
            )
            for f in dict.fromkeys(fields)
        ]

    def __bool__(self) -> bool:
        return bool(self._fields)

    def fill(
        self,
        out: dict[str, str],
        email: str,
        name: str,
        attributes: str | Mapping[str, Any],
    ) -> None:
        """Add each field's slot and value for this subscriber to `out`."""
        parsed: Mapping[str, Any] | None = None
        for slot, key, stored, filters in self._fields:
            if stored:
                if parsed is None:
                    parsed = (
                        parse_attributes(attributes) if isinstance(attributes, str) else attributes
                    )
                value = parsed.get(key)
                # The usual case inline: a string stored under the field's own key.
                value = value.strip() if type(value) is str else attribute(parsed, key)
            else:
                value = Subscriber(email, name).get(key)
            for apply, arg in filters:
                if apply is None:  # default
                    value = value or arg
                else:
                    value = apply(value)
            out[slot] = value


def line_at(text: str, offset: int) -> int:
    """The 0-based line of `offset` in `text`."""
    return text.count("\n", 0, offset)
