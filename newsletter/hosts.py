"""Host names as the tool judges them: is this one reached from this machine only?"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: a host no other machine reaches (a preview bound to
    it needs no Host check; an SMTP server on it needs no TLS)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
