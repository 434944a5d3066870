"""Thin Click commands: parse, call one function of the library, report.

The only package that imports click. One module per command group:

    root       the `newsletter` group, its options, and the error edge
    issue      import, build, check, preview
    audience   subscribers (import, add, remove, list, count), unsubscribe
    sending    send, resume, close, status, smtpd, workers
    schedule   schedule (create, list, cancel, move), run-due, worker
    setup      init, doctor, completion, dkim, db
    site       serve, archive, sponsors
    bounces    bounces (ingest, fetch)
"""

from newsletter.cli import audience, bounces, issue, schedule, sending, setup, site  # noqa: F401
from newsletter.cli.root import cli

__all__ = ["cli", "main"]


def main() -> None:
    """The `newsletter` command (the console script's entry point)."""
    cli(prog_name="newsletter")
