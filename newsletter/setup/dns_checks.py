"""What the DNS says about a publication's mail: SPF (RFC 7208) and DMARC (RFC 7489).

`doctor` reports these findings; this module only looks them up. Every lookup goes
through one `DnsLookup` function, (name, record type) -> records as text, so the
tests answer for the DNS and nothing leaves the machine. The SPF policy itself is
evaluated by pyspf, the RFC 7208 reference implementation in Python (it passes the
RFC's test suite); the organisational domain comes from the Public Suffix List
(publicsuffixlist, which ships the list: no download at run time).

DNS trouble reaches the caller as `DnsLookupError` and nothing else (pyspf's own
"temperror" aside), which doctor turns into a warning line.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from publicsuffixlist import PublicSuffixList

with warnings.catch_warnings():
    # pyspf 2.0.14, the newest on PyPI, has "\d" in its docstrings: compiling it warns
    # (DeprecationWarning; SyntaxWarning from Python 3.12), which the tests' warnings-as-
    # errors would turn into a failed import. Fixed upstream in 2025, not yet released.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", SyntaxWarning)
    import spf  # type: ignore[import-untyped]

DnsLookup = Callable[[str, str], list[str]]
"""(name, "TXT" | "A" | "AAAA" | "MX" | "PTR") -> the records, [] when there are none.

TXT records come with their strings joined (RFC 7208 section 3.3, RFC 7489 section
6.4); MX as "<preference> <exchange>"; A and AAAA as addresses."""

# Seconds one lookup may take. A run stops asking once a lookup has timed out (`Dns`),
# so a machine without DNS waits this long once, not once per name.
LOOKUP_SECONDS = 5.0

# Seconds one SPF evaluation may take in all: RFC 7208 section 4.6.4 says the limit
# on check_host()'s elapsed time should allow at least 20 before a temperror.
SPF_SECONDS = 20.0


class DnsLookupError(Exception):
    """The DNS could not answer (no resolver, timeout): not the same as "no record"."""


class DnsUnreachable(DnsLookupError):
    """No answer at all (a timeout, no resolver): asking another name would wait again."""


def lookup_dns(name: str, rdtype: str) -> list[str]:
    """The `DnsLookup` that asks the system's resolver (dnspython)."""
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name, rdtype, lifetime=LOOKUP_SECONDS)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoResolverConfiguration) as exc:
        raise DnsUnreachable(str(exc) or type(exc).__name__) from None
    except dns.exception.DNSException as exc:
        raise DnsLookupError(str(exc) or type(exc).__name__) from None
    if rdtype == "TXT":
        return [b"".join(rdata.strings).decode("ascii", "replace") for rdata in answer]
    return [rdata.to_text() for rdata in answer]


class Dns:
    """The lookups of one doctor run. Once the DNS has not answered at all, every later
    lookup fails at once with the same error instead of waiting out its own timeout."""

    def __init__(self, lookup: DnsLookup) -> None:
        self.lookup = lookup
        self.unreachable: DnsUnreachable | None = None

    def records(self, name: str, rdtype: str) -> list[str]:
        if self.unreachable is not None:
            raise self.unreachable
        try:
            return self.lookup(name, rdtype)
        except DnsUnreachable as exc:
            self.unreachable = exc
            raise

    def txt(self, name: str) -> list[str]:
        return self.records(name, "TXT")


# --- names ------------------------------------------------------------------------------

# Names reserved for documentation and tests (RFC 2606 section 3, RFC 6761 section 6):
# nobody's mail comes from them, so their DNS says nothing about a publication's setup.
_RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
_RESERVED_TLDS = ("example", "test", "invalid", "localhost")


def is_reserved(domain: str) -> bool:
    domain = domain.lower().rstrip(".")
    return domain.rpartition(".")[2] in _RESERVED_TLDS or any(
        domain == d or domain.endswith("." + d) for d in _RESERVED_DOMAINS
    )


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # parses the bundled list once (some tens of milliseconds)


def organisational_domain(domain: str) -> str:
    """RFC 7489 section 3.2: the public suffix plus one label (news.example.co.uk ->
    example.co.uk); a name that is itself a public suffix is its own."""
    domain = domain.lower().rstrip(".")
    return _public_suffixes().privatesuffix(domain) or domain


def aligned(domain: str, from_domain: str, strict: bool) -> bool:
    """RFC 7489 section 3.1: strict alignment is the same name, relaxed the same
    organisational domain."""
    domain, from_domain = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if strict:
        return domain == from_domain
    return organisational_domain(domain) == organisational_domain(from_domain)


# --- SPF (RFC 7208) ---------------------------------------------------------------------


def spf_records(domain: str, dns: Dns) -> list[str]:
    """The TXT records at `domain` that are SPF records: RFC 7208 section 4.5 keeps
    those that begin with "v=spf1" followed by a space or nothing ("v=spf10" is not)."""
    return [t for t in dns.txt(domain) if re.match(r"v=spf1(?: |$)", t, re.IGNORECASE)]


def relay_addresses(host: str, dns: Dns) -> list[str]:
    """The relay's IPv4 and IPv6 addresses (an address given as the host is itself)."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    return [*dns.records(host, "A"), *dns.records(host, "AAAA")]


# Where a relay hands mail on to another server rather than to the receivers, so the
# address SPF sees is that server's: loopback, and the private-use networks of RFC 1918,
# RFC 6598 (carrier-grade NAT) and RFC 4193 (IPv6 unique local), link-local included.
_LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def is_local_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (
        ip.is_loopback
        or ip.is_link_local
        or any(ip.version == n.version and ip in n for n in _LOCAL_NETWORKS)
    )


@dataclass(frozen=True)
class SpfResult:
    """The result RFC 7208 section 2.6 names for one relay address, and pyspf's reason."""

    address: str
    result: str  # pass, fail, softfail, neutral, none, permerror or temperror
    explanation: str
    mechanism: str | None = None  # the term that decided it ("-all"); None: the default


def evaluate_spf(address: str, sender: str, dns: Dns) -> SpfResult:
    """check_host() of RFC 7208 section 4 for mail from `sender` sent by `address`."""
    domain = sender.rpartition("@")[2]
    # h (the HELO name) only matters to a record that uses the %{h} macro.
    query = spf.query(i=address, s=sender, h=domain, querytime=SPF_SECONDS)
    with _pyspf_asking(dns):
        try:
            result, _code, explanation = query.check()
        except (spf.TempError, spf.PermError) as exc:  # check() catches these; to be sure
            kind = "temperror" if isinstance(exc, spf.TempError) else "permerror"
            result, explanation = kind, str(exc)
    return SpfResult(address, str(result), str(explanation), getattr(query, "mechanism", None))


@contextlib.contextmanager
def _pyspf_asking(dns: Dns) -> Iterator[None]:
    """pyspf asks the DNS through its module-level function `spf.DNSLookup` (it takes no
    resolver argument): point it at `dns` for one evaluation, then put it back. Doctor
    runs one check at a time, so no other evaluation sees the swap."""
    saved = spf.DNSLookup

    def lookup(name: str, qtype: str, *args: Any, **kwargs: Any) -> list[tuple[Any, Any]]:
        if qtype == "SPF":  # record type 99: RFC 7208 section 14.1 retired it
            return []
        try:
            records = dns.records(name, qtype)
        except DnsLookupError as exc:
            raise spf.TempError(f"DNS: {exc}") from None
        values: list[Any]
        if qtype == "TXT":  # pyspf joins a record's strings itself: give it one, as bytes
            values = [[text.encode("utf-8")] for text in records]
        elif qtype == "MX":
            values = [_mx(text) for text in records]
        elif qtype == "PTR":
            values = [text.rstrip(".") for text in records]
        else:
            values = records
        return [((name, qtype), value) for value in values]

    spf.DNSLookup = lookup
    try:
        yield
    finally:
        spf.DNSLookup = saved


def _mx(text: str) -> tuple[int, str]:
    preference, _, exchange = text.partition(" ")
    return int(preference), exchange.strip().rstrip(".")


# --- DMARC (RFC 7489) -------------------------------------------------------------------


@dataclass(frozen=True)
class DmarcRecords:
    """Policy discovery (RFC 7489 section 6.6.3): the names asked, in order, and the
    DMARC records at the last one (none anywhere: empty)."""

    asked: tuple[str, ...]
    records: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.asked[-1]

    @property
    def organisational(self) -> bool:
        """Found at the organisational domain in place of the From domain: for a From
        domain below it, the record's sp= applies (RFC 7489 section 6.3)."""
        return len(self.asked) > 1


def discover_dmarc(from_domain: str, dns: Dns) -> DmarcRecords:
    """_dmarc.<From domain>; when it has no DMARC record, _dmarc.<organisational domain>
    (RFC 7489 section 6.6.3 steps 1 to 4). Records not starting with v=DMARC1 are
    discarded; more than one left is for the caller to report (step 5)."""
    from_domain = from_domain.lower().rstrip(".")
    asked = [f"_dmarc.{from_domain}"]
    found = _dmarc_records(asked[0], dns)
    org = organisational_domain(from_domain)
    if not found and org != from_domain:
        asked.append(f"_dmarc.{org}")
        found = _dmarc_records(asked[-1], dns)
    return DmarcRecords(tuple(asked), tuple(found))


def _dmarc_records(name: str, dns: Dns) -> list[str]:
    # RFC 7489 section 6.4: dmarc-version = "v" *WSP "=" *WSP %x44 %x4d %x41 %x52 %x43 %x31,
    # the "DMARC1" case-sensitive; it is the first tag.
    return [t for t in dns.txt(name) if re.match(r"v\s*=\s*DMARC1\s*(?:;|$)", t.strip(), re.I)]


POLICIES = ("none", "quarantine", "reject")


def dmarc_tags(record: str) -> dict[str, str]:
    """'v=DMARC1; p=reject; rua=mailto:d@example.org' -> {'v': 'DMARC1', 'p': 'reject',
    'rua': 'mailto:d@example.org'}: tag names in lower case, values stripped."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            tags.setdefault(key.strip().lower(), value.strip())
    return tags


def effective_policy(tags: dict[str, str], subdomain: bool) -> str | None:
    """What receivers do with mail that fails DMARC: none, quarantine or reject; None when
    they apply no DMARC at all. RFC 7489 section 6.3: sp= is for subdomains and defaults
    to p=; section 6.6.3 step 6: a record without a valid p= (or with an invalid sp=)
    counts as p=none when its rua= has a valid URI, and as no record otherwise."""
    p, sp = tags.get("p", "").lower(), tags.get("sp", "").lower()
    if p not in POLICIES or ("sp" in tags and sp not in POLICIES):
        return "none" if report_uris(tags) else None
    return sp if subdomain and "sp" in tags else p


def report_uris(tags: dict[str, str]) -> list[str]:
    """The syntactically valid URIs of rua= (RFC 7489 section 6.4: a comma-separated list
    of URIs, each with an optional !size)."""
    uris = (u.strip() for u in tags.get("rua", "").split(","))
    return [u for u in uris if _REPORT_URI.fullmatch(u)]


_REPORT_URI = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:[^\s!]+(?:![0-9]+[kmgt]?)?")  # scheme:rest!size
