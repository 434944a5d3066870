"""The starter publication that `newsletter init` writes into a new folder.

The starter is the repository's sample publication: its newsletter.toml, the
templates, the sample issue and the sample subscriber list. The repository stays
the one source: the wheel carries copies made at build time (pyproject's
force-include puts them in ``newsletter/starter_files/``), and an editable
install, which has no such copies, reads them from the source tree.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.headerregistry import AddressHeader, HeaderRegistry
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from newsletter import config as config_mod
from newsletter.audience.subscribers import normalize_email
from newsletter.errors import ConfigError, NewsletterError
from newsletter.fileio import write_files

PACKAGED_DIR = "starter_files"
SAMPLE_ISSUE = "issues/2024-11-25-motivated-biden-authorize-ukraines-use-atacms.md"
# What the starter is made of, as paths relative to the repository root and to the
# new publication alike. pyproject.toml force-includes exactly these (a test checks).
STARTER_PATHS = (config_mod.CONFIG_NAME, "templates", SAMPLE_ISSUE, "subscribers.csv")
EXAMPLE_RECIPIENT = "you@example.com"

_IGNORED = ("__pycache__", ".DS_Store")


@dataclass(frozen=True)
class Identity:
    """The [publication] values `init` asks for; None keeps the starter's sample value."""

    name: str | None = None
    from_addr: str | None = None
    postal_address: str | None = None

    def values(self) -> dict[str, str]:
        """TOML key -> value, for the values that were given."""
        return {key: value for key, value in self._keys().items() if value is not None}

    def kept(self) -> list[str]:
        """The [publication] keys that keep the sample's value."""
        return [key for key, value in self._keys().items() if value is None]

    def _keys(self) -> dict[str, str | None]:
        return {"name": self.name, "from": self.from_addr, "postal_address": self.postal_address}


@dataclass(frozen=True)
class Created:
    folder: Path
    files: tuple[Path, ...]  # relative to folder
    sample_issue: Path  # relative to folder
    publication: config_mod.Publication  # as written
    overwritten: tuple[Path, ...]  # relative to folder
    test_recipient: str  # who the suggested test send goes to: the sender, if one was given

    def summary(self) -> str:
        """ "newsletter.toml, templates/ (5 files), issues/....md, subscribers.csv"."""
        counts: dict[str, int] = {}
        for path in self.files:
            folder = path.parts[0] if len(path.parts) > 1 else ""
            key = f"{folder}/" if folder == "templates" else path.as_posix()
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{key} ({n} files)" if n > 1 else key for key, n in counts.items())


def source() -> Traversable:
    """Where the starter files are: inside the installed package, else the source tree."""
    packaged = resources.files("newsletter") / PACKAGED_DIR
    if packaged.is_dir():
        return packaged
    # An editable (development) install: force-include does not apply there, and the
    # package sits in the repository, two levels below the files.
    tree = Path(__file__).resolve().parents[2]  # newsletter/setup/starter.py -> the checkout
    if all((tree / path).exists() for path in STARTER_PATHS):
        return tree
    raise NewsletterError(
        f"this installation of newsletter has no starter publication (looked in {packaged}"
        f" and {tree}); reinstall newsletter"
    )


def starter_files(root: Traversable | None = None) -> dict[str, bytes]:
    """Every starter file: relative path (with /) -> content."""
    root = source() if root is None else root
    files: dict[str, bytes] = {}
    for path in STARTER_PATHS:
        node = root.joinpath(*path.split("/"))
        if not (node.is_dir() or node.is_file()):
            raise NewsletterError(f"the starter publication is incomplete: {path} is missing")
        for relative, item in _walk(node, path):
            files[relative] = item.read_bytes()
    return files


def _walk(node: Traversable, relative: str) -> Iterator[tuple[str, Traversable]]:
    if node.is_file():
        yield relative, node
        return
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name in _IGNORED or child.name.endswith(".pyc"):
            continue
        yield from _walk(child, f"{relative}/{child.name}")


def sample_publication() -> config_mod.Publication:
    """The [publication] of the starter config as shipped (the defaults `init` offers)."""
    text = starter_files()[config_mod.CONFIG_NAME].decode("utf-8")
    return _validated(text).publication


def _from_header(value: str) -> Any:
    """The parsed From header: an AddressHeader (and a BaseHeader: its `defects`)."""
    header = HeaderRegistry()("from", value)
    assert isinstance(header, AddressHeader)  # the registry's class for "from"
    return header


def parse_sender(text: str) -> str:
    """A From value: "Name <address>" or a bare address. Raises ValueError saying why."""
    value = _one_line(text, "the sender")
    header = _from_header(value)
    if header.defects or len(header.addresses) != 1:
        raise ValueError(f"not one email address: {value!r} (use: Name <address@example.com>)")
    address = header.addresses[0].addr_spec
    try:
        normalize_email(address)
    except ValueError as exc:
        raise ValueError(f"{address!r}: {exc}") from None
    return value


def _one_line(text: str, what: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError(f"{what} must not be empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{what} must be one line of text")
    return value


def check_target(folder: Path, force: bool = False) -> list[Path]:
    """The starter files already in `folder` (relative paths).

    Refuses, naming the first of them, unless `force`.
    """
    if folder.exists() and not folder.is_dir():
        raise NewsletterError(f"{folder}: exists and is not a folder")
    existing = [Path(rel) for rel in starter_files() if (folder / rel).exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more starter file(s))" if len(existing) > 1 else ""
        raise NewsletterError(
            f"{folder / existing[0]}: already exists{more}; use --force to overwrite"
        )
    return existing


def create(folder: Path, identity: Identity | None = None, force: bool = False) -> Created:
    """Write the starter publication into `folder`, with `identity` in its config.

    Refuses to overwrite a file unless `force`; writes every file or none.
    """
    identity = identity or Identity()
    values = _checked_values(identity)
    existing = check_target(folder, force)
    files = starter_files()
    config_text = set_publication_values(files[config_mod.CONFIG_NAME].decode("utf-8"), values)
    publication = _validated(config_text).publication
    files[config_mod.CONFIG_NAME] = config_text.encode("utf-8")
    write_files({folder / rel: data for rel, data in files.items()})
    recipient = EXAMPLE_RECIPIENT
    if "from" in values:
        recipient = _from_header(values["from"]).addresses[0].addr_spec
    return Created(
        folder=folder,
        files=tuple(Path(rel) for rel in files),
        sample_issue=Path(SAMPLE_ISSUE),
        publication=publication,
        overwritten=tuple(existing),
        test_recipient=recipient,
    )


def next_commands(created: Created, cwd: Path) -> list[str]:
    """What to run after `init`: check the setup, build the sample issue, send a test."""
    issue = created.sample_issue.as_posix()
    commands = [
        "newsletter doctor",
        f"newsletter build {issue}",
        f"newsletter send {issue} --to {shlex.quote(created.test_recipient)}",
    ]
    folder, here = created.folder.resolve(), cwd.resolve()
    if folder != here:
        relative = os.path.relpath(folder, here)
        where = str(folder) if relative.startswith("..") else relative
        commands.insert(0, f"cd {shlex.quote(where)}")
    return commands


def _checked_values(identity: Identity) -> dict[str, str]:
    values = identity.values()
    try:
        if "from" in values:
            values["from"] = parse_sender(values["from"])
        for key, what in (("name", "the publication name"), ("postal_address", "the address")):
            if key in values:
                values[key] = _one_line(values[key], what)
    except ValueError as exc:
        raise NewsletterError(f"init: {exc}") from None
    return values


_SECTION = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
# key = "basic string" or 'literal string', then whatever follows (spaces, a comment).
_STRING_KEY = re.compile(
    r"""^(?P<lead>\s*(?P<key>[A-Za-z0-9_-]+)\s*=\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'[^']*')(?P<rest>.*)$"""
)


def set_publication_values(text: str, values: Mapping[str, str]) -> str:
    """The config text with these [publication] string values replaced.

    Only the value on each key's line changes: comments, order and layout stay.
    """
    lines = text.split("\n")
    section = ""
    done: set[str] = set()
    for i, line in enumerate(lines):
        header = _SECTION.match(line)
        if header:
            section = header.group(1)
            continue
        match = _STRING_KEY.match(line)
        if section == "publication" and match and match["key"] in values:
            key = match["key"]
            # A JSON string is a valid TOML basic string (same escapes), kept readable.
            lines[i] = f"{match['lead']}{json.dumps(values[key], ensure_ascii=False)}"
            lines[i] += match["rest"]
            done.add(key)
    missing = sorted(set(values) - done)
    if missing:
        raise NewsletterError(
            f"the starter {config_mod.CONFIG_NAME} has no string key {missing[0]!r}"
            " in [publication] to set"
        )
    new_text = "\n".join(lines)
    parsed = tomllib.loads(new_text)["publication"]
    for key, value in values.items():
        if parsed.get(key) != value:  # the edit must say exactly what was asked
            raise NewsletterError(f"init: could not set [publication] {key} to {value!r}")
    return new_text


def _validated(text: str) -> config_mod.Config:
    """Load the config text as `newsletter` will, ignoring this shell's NEWSLETTER_* variables."""
    with tempfile.TemporaryDirectory(prefix="newsletter-init-") as tmp:
        path = Path(tmp) / config_mod.CONFIG_NAME
        path.write_text(text, encoding="utf-8")
        try:
            return config_mod.load(path, environ={})
        except ConfigError as exc:
            message = str(exc).replace(str(path.resolve()), f"the new {config_mod.CONFIG_NAME}")
            raise NewsletterError(f"init: {message}") from None
