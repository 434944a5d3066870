"""The starter publication that `newsletter init` writes into a new folder.

The starter is made from the repository's sample publication: its newsletter.toml
(every key and comment), the templates and the sample subscriber list. The wheel
carries copies made at build time (pyproject's force-include puts them in
``newsletter/starter_files/``), and an editable install, which has no such copies,
reads them from the source tree.

What init writes is the new publication's own, nothing of the sample's ("Hello
Shuttle" is the repository's demo): [publication] from the answers, the List-Id and
utm_source derived from them, an example sponsor on example.com marked as one, and a
short welcome issue instead of the sample's article.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import tempfile
import tomllib
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.headerregistry import AddressHeader, HeaderRegistry
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from newsletter import config as config_mod
from newsletter.audience.subscribers import normalize_email
from newsletter.errors import ConfigError, NewsletterError
from newsletter.fileio import write_files

PACKAGED_DIR = "starter_files"
SAMPLE_ISSUE = "issues/2024-11-25-motivated-biden-authorize-ukraines-use-atacms.md"
# What the starter is made of, as paths relative to the repository root. pyproject.toml
# force-includes exactly these (a test checks). init writes all but the sample issue,
# and the config made the publication's own.
STARTER_PATHS = (config_mod.CONFIG_NAME, "templates", SAMPLE_ISSUE, "subscribers.csv")
EXAMPLE_RECIPIENT = "you@example.com"
WELCOME_SLUG = "welcome"

_IGNORED = ("__pycache__", ".DS_Store")

# What init offers when nothing is given: neutral, on the example domain (RFC 2606).
DEFAULT_NAME = "My Newsletter"
DEFAULT_DOMAIN = "example.com"
DEFAULT_POSTAL_ADDRESS = "1 Example Street, Example City, Country"


@dataclass(frozen=True)
class Identity:
    """The [publication] values `init` asks for; None takes the default (`resolved`)."""

    name: str | None = None
    from_addr: str | None = None
    postal_address: str | None = None
    base_url: str | None = None
    reply_to: str | None = None

    def kept(self) -> list[str]:
        """The [publication] keys not given, which take init's default."""
        return [key for key, value in self._keys().items() if value is None]

    def _keys(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "from": self.from_addr,
            "postal_address": self.postal_address,
            "base_url": self.base_url,
            "reply_to": self.reply_to,
        }

    def resolved(self) -> Identity:
        """Every value set: the given ones checked, the others init's defaults, each
        derived from what was given (the web address from the sender's domain)."""
        try:
            name = _one_line(self.name, "the publication name") if self.name else DEFAULT_NAME
            from_addr = parse_sender(self.from_addr) if self.from_addr else default_sender(name)
            postal = self.postal_address
            postal = _one_line(postal, "the address") if postal else DEFAULT_POSTAL_ADDRESS
            base_url = (
                parse_base_url(self.base_url)
                if self.base_url
                else default_base_url(address_domain(from_addr))
            )
            reply_to = parse_reply_to(self.reply_to) if self.reply_to else ""
        except ValueError as exc:
            raise NewsletterError(f"init: {exc}") from None
        return Identity(name, from_addr, postal, base_url, reply_to)


def slug(name: str) -> str:
    """The publication's name as a DNS label and utm_source: "The Weekly" -> "the-weekly"."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    label = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:40].strip("-")
    return label or "newsletter"


# RFC 5322 section 3.2.3: a display name with any of these must be a quoted string.
_SPECIALS = set('()<>[]:;@\\,."')


def default_sender(name: str) -> str:
    """ "<name> <news@example.com>", the name quoted when it holds specials (a comma)."""
    if any(c in _SPECIALS for c in name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <news@{DEFAULT_DOMAIN}>"


def default_base_url(domain: str) -> str:
    return f"https://news.{domain}"


def address_domain(sender: str) -> str:
    return _from_header(sender).addresses[0].domain.lower()


def base_url_domain(base_url: str) -> str:
    return (urlsplit(base_url).hostname or "").lower()


def list_id(name: str, base_url: str) -> str:
    """RFC 2919 section 3: a List-Id is a dot-atom under a domain the publisher holds;
    here the name's slug under base_url's host (news.example.org -> weekly.news.example.org)."""
    return f"{slug(name)}.{base_url_domain(base_url)}"


def parse_base_url(text: str) -> str:
    """A web address for the links: http(s), a host name, no query. Raises ValueError."""
    value = _one_line(text, "the web address").rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"not a web address: {value!r} (use: https://news.example.org)")
    if parts.query or parts.fragment:
        raise ValueError(f"the web address may not have a query or a fragment: {value!r}")
    return value


def parse_reply_to(text: str) -> str:
    """One address for Reply-To, "Name <address>" or bare. Raises ValueError."""
    return parse_sender(text)


@dataclass(frozen=True)
class Created:
    folder: Path
    files: tuple[Path, ...]  # relative to folder
    sample_issue: Path  # relative to folder
    publication: config_mod.Publication  # as written
    overwritten: tuple[Path, ...]  # relative to folder
    test_recipient: str  # who the suggested test send goes to: the sender, if one was given
    utm_source: str = ""  # as written: the name's slug

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
    """The [publication] of the repository's sample config (the demo init does not copy)."""
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


def check_target(
    folder: Path, force: bool = False, files: Mapping[str, bytes] | None = None
) -> list[Path]:
    """The files init would write (`files`; by default the starter's) already in `folder`
    (relative paths). Refuses, naming the first of them, unless `force`.
    """
    if folder.exists() and not folder.is_dir():
        raise NewsletterError(f"{folder}: exists and is not a folder")
    names = files if files is not None else _files_to_write(Identity().resolved(), dt.date.today())
    existing = [Path(rel) for rel in names if (folder / rel).exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more starter file(s))" if len(existing) > 1 else ""
        raise NewsletterError(
            f"{folder / existing[0]}: already exists{more}; use --force to overwrite"
        )
    return existing


def create(
    folder: Path,
    identity: Identity | None = None,
    force: bool = False,
    today: dt.date | None = None,
) -> Created:
    """Write a new publication into `folder`: `identity` (defaults for what it leaves
    open), the templates, the sample list and a welcome issue dated `today`.

    Refuses to overwrite a file unless `force`; writes every file or none.
    """
    given = identity or Identity()
    chosen = given.resolved()
    assert chosen.name and chosen.from_addr and chosen.base_url  # resolved() sets them
    files = _files_to_write(chosen, today or dt.date.today())
    existing = check_target(folder, force, files)
    written = _validated(files[config_mod.CONFIG_NAME].decode("utf-8"))
    write_files({folder / rel: data for rel, data in files.items()})
    recipient = EXAMPLE_RECIPIENT
    if given.from_addr is not None:
        recipient = _from_header(chosen.from_addr).addresses[0].addr_spec
    issue = next(rel for rel in files if rel.startswith("issues/"))
    return Created(
        folder=folder,
        files=tuple(Path(rel) for rel in files),
        sample_issue=Path(issue),
        publication=written.publication,
        overwritten=tuple(existing),
        test_recipient=recipient,
        utm_source=written.utm.source,
    )


def _files_to_write(identity: Identity, today: dt.date) -> dict[str, bytes]:
    """Relative path -> content: what init writes for this (resolved) identity."""
    assert identity.name and identity.from_addr and identity.base_url
    packaged = starter_files()
    files = {
        rel: data
        for rel, data in packaged.items()
        if rel.startswith("templates/") or rel == "subscribers.csv"
    }
    files[config_mod.CONFIG_NAME] = starter_config(
        packaged[config_mod.CONFIG_NAME].decode("utf-8"), identity
    ).encode("utf-8")
    files[f"issues/{today.isoformat()}-{WELCOME_SLUG}.md"] = welcome_issue(
        identity.name, today
    ).encode("utf-8")
    return dict(sorted(files.items()))


def starter_config(sample_text: str, identity: Identity) -> str:
    """The sample config made the publication's: [publication] and [utm] from `identity`,
    and the sample's sponsor replaced by an example one."""
    assert identity.name and identity.from_addr and identity.base_url
    publication = {
        "name": identity.name,
        "from": identity.from_addr,
        "reply_to": identity.reply_to or "",
        "postal_address": identity.postal_address or DEFAULT_POSTAL_ADDRESS,
        "base_url": identity.base_url,
        "list_id": list_id(identity.name, identity.base_url),
    }
    text = set_values(sample_text, "publication", publication)
    text = set_values(text, "utm", {"source": slug(identity.name)})
    head, sep, _ = text.partition("\n[sponsors]\n")
    if not sep:
        raise NewsletterError(f"the starter {config_mod.CONFIG_NAME} has no [sponsors] section")
    _, _, body = head.partition("\n[publication]\n")
    return _CONFIG_HEAD + "\n[publication]\n" + body + "\n" + EXAMPLE_SPONSORS


_CONFIG_HEAD = """\
# This publication's configuration, made by `newsletter init`.
# Every key can be overridden by an environment variable NEWSLETTER_<SECTION>_<KEY>,
# for example NEWSLETTER_SMTP_PORT=2525 or NEWSLETTER_SPONSORS_EXAMPLE_PHONE.
# Relative paths are relative to this file.
"""

EXAMPLE_SPONSORS = """\
[sponsors]
# The sponsor of an issue whose front matter names none ("none": no sponsor block).
default = "example"

# An example: replace or delete (then set default above to your sponsor's id, or "none").
[sponsors.example]
# The sponsor's name, as the block shows it.
name = "Example Sponsor"
# The label over the block: sponsored content must say so.
label = "Sponsored"
# What the block says.
message = "An example sponsor: put your sponsor's message here, or delete this sponsor."
# The text of the block's button.
call_to_action = "Visit the sponsor"
# Where the button links (tagged with the UTM parameters set above).
url = "https://www.example.com"
# Shown in the block with a tel: link (optional); with + and the country code.
phone = "+1 555 555 0100"
# Bookings: with start and end (dates), the sponsor of the issues dated between them,
# shared by weight with other sponsors booked then (see the README's "Sponsors").
# start = 2027-01-01
# end = 2027-03-31
# weight = 1
"""


def welcome_issue(name: str, day: dt.date) -> str:
    """A short, neutral first issue: what a reader of a new publication may get first."""
    subject = f"Welcome to {name}"
    if len(subject) > 78:  # check warns over 78 characters (they are cut in inboxes)
        subject = "Welcome"
    preheader = "What to expect from this newsletter, and how to reach us."
    # A JSON string is a YAML flow scalar: any name stays one value.
    lines = [
        "---",
        f"title: {json.dumps(subject, ensure_ascii=False)}",
        f"subject: {json.dumps(subject, ensure_ascii=False)}",
        f"preheader: {json.dumps(preheader)}",
        f"date: {day.isoformat()}",
        "---",
        "",
        _WELCOME_BODY.format(name=name),
    ]
    return "\n".join(lines)


_WELCOME_BODY = """\
Thank you for subscribing to {name}.

Each issue brings you a short read, and now and then a word from a sponsor, marked as
such. Reply to this message to tell us what you would like to read about.

## What comes next

The next issue is on its way. If this is not for you, the unsubscribe link below
takes you off the list at once.
"""


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


_SECTION = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
# key = "basic string" or 'literal string', then whatever follows (spaces, a comment).
_STRING_KEY = re.compile(
    r"""^(?P<lead>\s*(?P<key>[A-Za-z0-9_-]+)\s*=\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'[^']*')(?P<rest>.*)$"""
)


def set_values(text: str, section: str, values: Mapping[str, str]) -> str:
    """The config text with these string values of [section] replaced.

    Only the value on each key's line changes: comments, order and layout stay.
    """
    lines = text.split("\n")
    current = ""
    done: set[str] = set()
    for i, line in enumerate(lines):
        header = _SECTION.match(line)
        if header:
            current = header.group(1)
            continue
        match = _STRING_KEY.match(line)
        if current == section and match and match["key"] in values:
            key = match["key"]
            # A JSON string is a valid TOML basic string (same escapes), kept readable.
            lines[i] = f"{match['lead']}{json.dumps(values[key], ensure_ascii=False)}"
            lines[i] += match["rest"]
            done.add(key)
    missing = sorted(set(values) - done)
    if missing:
        raise NewsletterError(
            f"the starter {config_mod.CONFIG_NAME} has no string key {missing[0]!r}"
            f" in [{section}] to set"
        )
    new_text = "\n".join(lines)
    parsed = tomllib.loads(new_text)[section]
    for key, value in values.items():
        if parsed.get(key) != value:  # the edit must say exactly what was asked
            raise NewsletterError(f"init: could not set [{section}] {key} to {value!r}")
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
