"""Thin Click commands: parse, call one function of the library, report.

The only package that imports click. One module per command group:

    root       the `newsletter` group, its options, and the error edge
    issue      import, build, check, preview
    audience   subscribers (import, add, remove, list, count), unsubscribe
    sending    send, resume, close, status, smtpd, workers
    schedule   schedule (create, list, cancel, move), run-due, worker
    setup      init, doctor, completion, dkim, db
    site       serve, archive, sponsors, console
    bounces    bounces (ingest, fetch)

Each module is imported when one of its commands is used (root.COMMAND_MODULES).
"""

from newsletter.cli.root import cli

__all__ = ["cli", "main"]


def main() -> None:
    """The `newsletter` command (the console script's entry point)."""
    cli(prog_name="newsletter")
