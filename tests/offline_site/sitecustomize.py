"""Loaded by the `newsletter` processes that the tests start as subprocesses (they put
this folder on PYTHONPATH): doctor's DNS lookups and its GET of <base_url>/healthz fail at
once, as the in-process tests' `no_dns` and `no_web` fixtures make them, so nothing a test
runs sends a packet past 127.0.0.1."""

from __future__ import annotations


def _no_dns(name: str, rdtype: str) -> list[str]:
    from newsletter.setup import dns_checks

    raise dns_checks.DnsUnreachable(f"{name}: no DNS in the tests")


def _no_web(url: str, timeout: float) -> str:
    raise ConnectionRefusedError(111, "Connection refused")


try:
    from newsletter.setup import dns_checks as _dns_checks
    from newsletter.setup import doctor as _doctor
except ImportError:  # not the newsletter's own interpreter
    pass
else:
    _dns_checks.lookup_dns = _no_dns
    _doctor.get_health = _no_web
