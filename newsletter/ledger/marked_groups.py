"""Marking rows `sending` a group at a time ([database] mark_ahead = N, N > 1).

By default (N = 1) each message costs one commit (`delivery_rows.Ledger.commit`): the
reply to the message before recorded and the next row marked. On PostgreSQL the WAL
flush of that commit sets a connection's pace. With N > 1 a sender marks up to N rows
`sending` in one statement, sends them one by one, and records their N replies in
the statement that marks the next N rows: one commit per N messages.

What still holds: no message goes out before its row is committed `sending`; a reply
is recorded as ever (sent, deferred, failed, or left `sending` in doubt); a crash
leaves at most N rows of a connection `sending` (in doubt, counted and reported by
the next resume, as the one row is by default); a sender that stops sending (a stop,
the server refusing us, an error) gives back the rows it marked and did not try,
each to the status it had, in the statement that records the replies it holds.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from newsletter.ledger.delivery_rows import Ledger, immediate


def mark_ahead_risk(n: int) -> str:
    """What [database] mark_ahead = n (n > 1) risks, printed when a send starts with it."""
    return (
        f"[database] mark_ahead = {n}: up to {n} messages per connection may be in doubt"
        " after a crash (marked `sending` before they went out; the next resume reports"
        " and sends them again)"
    )


# A row given back goes to the status it had when it was marked, if it is still ours.
_RESTORE = "UPDATE deliveries SET status = :was WHERE id = :did AND status = 'sending'"
_STATUS = "SELECT status FROM deliveries WHERE id = :did"


def _pg(sql: str) -> str:
    """A statement's :name parameters in psycopg's style."""
    return re.sub(r":(\w+)", r"%(\1)s", sql)


class GroupLedger(Ledger):
    """The writes of a sender that marks rows a group at a time (see the module).

    On PostgreSQL every write is one statement in autocommit, as `Ledger`'s: the
    replies recorded, the rows given back and the next group marked, each an UPDATE
    over arrays (unnest) in a data-modifying WITH clause; its text is the same every
    time, so the driver prepares it once. On SQLite the same writes run in one
    BEGIN IMMEDIATE transaction, in the senders' turns.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group_sql = ""
        if self.dialect == "postgresql":
            # The mark of one row, `id = :did`, made the mark of the rows in `prior`,
            # which also reads the status each had (to give it back: `_RESTORE`).
            mark = self.mark_sql.replace("WHERE id = %(did)s", "FROM prior WHERE id = prior.pid")
            assert mark != self.mark_sql, "MARK names its row as `WHERE id = :did`"
            self.group_sql = (
                "WITH recorded AS (UPDATE deliveries SET status = r.new_status,"
                " attempts = attempts + 1, last_code = r.code, last_error = r.error,"
                " sent_at = r.when_sent, next_attempt_at = r.retry_at"
                " FROM unnest(%(r_did)s::integer[], %(r_status)s::text[],"
                " %(r_code)s::integer[], %(r_error)s::text[], %(r_sent)s::timestamp[],"
                " %(r_retry)s::timestamp[]) AS r(did, new_status, code, error, when_sent,"
                " retry_at) WHERE deliveries.id = r.did),"
                " restored AS (UPDATE deliveries SET status = g.was"
                " FROM unnest(%(g_did)s::integer[], %(g_was)s::text[]) AS g(did, was)"
                " WHERE deliveries.id = g.did AND deliveries.status = 'sending'),"
                " prior AS (SELECT id AS pid, status AS was FROM deliveries"
                " WHERE id = ANY(%(m_did)s::integer[]) FOR UPDATE),"
                f" marked AS ({mark} RETURNING id, prior.was)"
                " SELECT id, was FROM marked"
            )

    def commit_group(
        self,
        records: list[dict[str, Any]],
        mark: dict[str, Any] | None,
        mark_ids: list[int],
        give_back: list[tuple[int, str]],
    ) -> dict[int, str]:
        """In one transaction: record `records` (Ledger.RECORD's parameters), give back
        the rows of `give_back` (id, the status to restore), and mark the rows of
        `mark_ids` `sending` (`mark`: Rows.mark_params, without the id).

        Returns the rows marked, each with the status it had; a row not marked (its
        subscriber left, another worker holds it) is not this sender's to send."""
        if not (records or give_back or mark_ids):
            return {}
        if self.dialect == "postgresql":
            return self._group_pg(records, mark or {}, mark_ids, give_back)
        if self.dialect != "sqlite":
            return self._group_sa(records, mark or {}, mark_ids, give_back)
        marked: dict[int, str] = {}
        with immediate(self.db, self.turns) as cur:
            if records:
                cur.executemany(self.RECORD, records)
            if give_back:
                cur.executemany(_RESTORE, [{"did": d, "was": w} for d, w in give_back])
            for did in mark_ids:
                row = cur.execute(_STATUS, {"did": did}).fetchone()
                cur.execute(self.mark_sql, {**(mark or {}), "did": did})
                if cur.rowcount == 1 and row is not None:
                    marked[did] = row[0]
        return marked

    def _group_pg(
        self,
        records: list[dict[str, Any]],
        mark: dict[str, Any],
        mark_ids: list[int],
        give_back: list[tuple[int, str]],
    ) -> dict[int, str]:
        params: dict[str, Any] = {
            "r_did": [r["did"] for r in records],
            "r_status": [r["new_status"] for r in records],
            "r_code": [r["code"] for r in records],
            "r_error": [r["error"] for r in records],
            "r_sent": [r["when_sent"] for r in records],
            "r_retry": [r["retry_at"] for r in records],
            "g_did": [d for d, _ in give_back],
            "g_was": [w for _, w in give_back],
            "m_did": mark_ids,
            # The mark's own parameters (now, or owner and until) even when there is no
            # row to mark: the statement's text, and so its plan, is always the same.
            "now": None,
            "owner": None,
            "until": None,
            **mark,
        }
        with self._raw.cursor() as cur:
            cur.execute(self.group_sql, params)
            return {int(did): str(was) for did, was in cur.fetchall()}

    def _group_sa(
        self,
        records: list[dict[str, Any]],
        mark: dict[str, Any],
        mark_ids: list[int],
        give_back: list[tuple[int, str]],
    ) -> dict[int, str]:
        """Any other database, through SQLAlchemy (the tool runs on the two above)."""
        marked: dict[int, str] = {}
        with self.db.begin():
            for record in records:
                self.db.execute(sa.text(self.RECORD), record)
            for did, was in give_back:
                self.db.execute(sa.text(_RESTORE), {"did": did, "was": was})
            for did in mark_ids:
                prior = self.db.execute(sa.text(_STATUS), {"did": did}).scalar()
                if self.db.execute(sa.text(self.mark_sql), {**mark, "did": did}).rowcount == 1:
                    marked[did] = str(prior)
        return marked
