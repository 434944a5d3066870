"""Loaded by the `newsletter` processes that tests/test_readme_runs.py starts (it puts this
folder on PYTHONPATH): doctor's DNS lookups answer "unreachable" at once, as the in-process
tests' `no_dns` fixture makes them, so the README's commands send nothing past 127.0.0.1."""

from __future__ import annotations


def _unreachable(name: str, rdtype: str) -> list[str]:
    from newsletter.setup import dns_checks

    raise dns_checks.DnsUnreachable(f"{name}: no DNS in the tests")


try:
    from newsletter.setup import dns_checks as _dns_checks
except ImportError:  # not the newsletter's own interpreter
    pass
else:
    _dns_checks.lookup_dns = _unreachable
