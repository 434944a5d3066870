"""Who is asking, and how often: the client address of a request, and sliding windows that
count what each client (or mailbox, or the whole site) did in the last while.

The client is the socket peer. Behind a reverse proxy every request comes from the
proxy, which names the client in a header such as X-Forwarded-For; anyone can send that
header, so it is read only when the peer is one of the configured trusted proxies, and
then from the right (the entry the nearest proxy added) leftwards, past the entries of
further trusted proxies, to the first address that is not one: entries to the left of
it were written by the client and prove nothing.

An IPv6 client counts by its /64: one host is usually given a whole /64, so counting
single addresses would give it 2**64 budgets.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable, Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN = "unknown"  # no peer address (not a TCP connection): all such requests are one client
_IPV6_CLIENT_PREFIX = 64


def networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """[signup] trusted_proxies as networks (checked when the configuration was read)."""
    return tuple(ipaddress.ip_network(text) for text in texts)


def parse_address(text: str) -> Address | None:
    """An address as a proxy header or a peer gives it ("203.0.113.9", "2001:db8::1",
    "[2001:db8::1]:443", "203.0.113.9:8080"), or None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port; IPv6 has two colons at least
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:203.0.113.9 is 203.0.113.9
    return address


def is_trusted(address: Address | None, trusted: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in trusted)


def client_address(
    peer: str | None, forwarded: Sequence[str], trusted: Sequence[Network]
) -> Address | None:
    """The client of a request from `peer` whose proxy header lines are `forwarded`
    (in the order received): the peer, unless it is a trusted proxy (module docstring).
    None when the peer is not an IP address."""
    client = parse_address(peer) if peer else None
    if not is_trusted(client, trusted):
        return client
    entries = [entry for line in forwarded for entry in line.split(",")]
    for entry in reversed(entries):
        named = parse_address(entry)
        if named is None:
            # A trusted proxy passed on something that is not an address: the proxy we
            # reached is the last one we can believe, so it is the client.
            return client
        client = named
        if not is_trusted(client, trusted):
            return client
    return client


def client_key(address: Address | None) -> str:
    """What one client's requests are counted under (an IPv6 client by its /64)."""
    if address is None:
        return UNKNOWN
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((address, _IPV6_CLIENT_PREFIX), strict=False)
        return str(network)
    return str(address)


class Window:
    """At most `limit` events per key in any `seconds`: a sliding window, kept in memory.

    Memory is bounded: each key keeps at most `limit` times, and at most `max_keys` keys
    are kept; when that many are busy, a new key is refused (a flood from that many
    clients is a flood, and the site-wide cap would stop it anyway). Not thread-safe:
    the caller holds a lock.
    """

    def __init__(self, limit: int, seconds: float, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.seconds = seconds
        self.max_keys = max_keys
        self._times: dict[str, deque[float]] = {}

    def allows(self, key: str, now: float) -> bool:
        """Whether one more event for `key` at `now` is within the limit."""
        times = self._times.get(key)
        if times is None:
            return len(self._times) < self.max_keys or self._sweep(now)
        while times and times[0] <= now - self.seconds:
            times.popleft()
        return len(times) < self.limit

    def take(self, key: str, now: float) -> bool:
        """Count one event for `key` at `now` if the limit allows it; whether it did."""
        if not self.allows(key, now):
            return False
        self._times.setdefault(key, deque()).append(now)
        return True

    def give_back(self, key: str, when: float) -> None:
        """Forget an event taken at `when` that came to nothing (nothing was sent)."""
        times = self._times.get(key)
        if times is not None and when in times:
            times.remove(when)

    def _sweep(self, now: float) -> bool:
        """Drop the keys with nothing left in the window; whether there is room now."""
        cutoff = now - self.seconds
        for key in [k for k, times in self._times.items() if not times or times[-1] <= cutoff]:
            del self._times[key]
        return len(self._times) < self.max_keys
