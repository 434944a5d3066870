"""A sender that marks its rows `sending` a group at a time ([database] mark_ahead = N).

`runner.Runner` pays one commit per message: the reply to the message before it
recorded and its own row marked (`Ledger.commit`). `GroupRunner` marks up to N rows
in one statement, sends them one by one, and records their replies in the statement
that marks the next group: one commit per N messages (`ledger/marked_groups`).

The ledger's rules stay as they are, with a bound of N rows in doubt a connection in
place of one: a message goes out only once its row is committed `sending`; each reply
is recorded as by `Runner` (sent, deferred, failed, in doubt: `_record_params`,
`_account`), a reply of one recipient does not end the group; a crash leaves at most
the N rows of a group `sending` (the next resume reports them in doubt and sends them
again); a sender that stops sending (a stop, SIGTERM, the server refusing the session,
a connection it cannot open, a fetch that failed) gives back the rows it marked and did not try,
each to its status before, in the statement that records the replies it holds.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from typing import Any

from newsletter.errors import NewsletterError
from newsletter.ledger.delivery_rows import Item
from newsletter.ledger.marked_groups import GroupLedger
from newsletter.ledger.tables import FAILED, utcnow
from newsletter.mail import transport
from newsletter.send.runner import Made, Runner, RunSettings


def runner_for(settings: RunSettings) -> Runner:
    """The runner [database] mark_ahead asks for: one commit a message (1), or a group."""
    if settings.config.database.mark_ahead > 1:
        return GroupRunner(settings)
    return Runner(settings)


class _Held:
    """One sender's rows in the ledger: marked and not yet tried (in order, with the
    status each had), and the replies not yet recorded."""

    def __init__(self) -> None:
        self.rows: collections.deque[Item] = collections.deque()
        self.was: dict[int, str] = {}
        self.replies: list[tuple[Item, transport.SendResult]] = []

    def first(self, item: Item) -> bool:
        """`item` is the next marked row."""
        return bool(self.rows) and self.rows[0] is item

    def holds(self, item: Item) -> bool:
        """`item` is marked and not yet tried (given back if the sender stops)."""
        return any(row is item for row in self.rows)


class GroupRunner(Runner):
    """A Runner whose senders mark up to `[database] mark_ahead` rows at once."""

    def __init__(self, settings: RunSettings) -> None:
        super().__init__(settings)
        self.group_size = settings.config.database.mark_ahead

    @contextlib.contextmanager
    def _group_ledger(self, db: Any) -> Iterator[GroupLedger]:
        ledger = GroupLedger(
            db, self.rows.MARK, self.turns, self.config.database.synchronous_commit
        )
        try:
            yield ledger
        finally:
            ledger.close()

    def _halt(self, exc: NewsletterError) -> None:
        """The server refused us: the run stops (the rows held are given back)."""
        with self.lock:
            self.fatal = self.fatal or exc
            self.changed.notify_all()

    def _write(
        self,
        ledger: GroupLedger,
        held: _Held,
        group: list[Item] | None = None,
        give_back: bool = False,
    ) -> None:
        """One transaction: the replies held recorded; the rows held and not tried
        given back (`give_back`); the rows of `group` marked, those that were held."""
        now = utcnow()
        recorded = []
        for item, res in held.replies:
            params, retry_at = self._record_params(ledger, now, item, res)
            recorded.append((item, res, params, retry_at))
        returned = (
            [(i.delivery_id, held.was[i.delivery_id]) for i in held.rows] if give_back else []
        )
        group = group or []
        marked = ledger.commit_group(
            [params for _, _, params, _ in recorded],
            self.rows.mark_params(ledger.time, now) if group else None,
            [i.delivery_id for i in group],
            returned,
        )
        held.replies = []
        for item, res, _, retry_at in recorded:
            self._account(item, res, retry_at)
            if res.stage == "rcpt" and res.status == transport.FAILED:
                self._bounced(item, res)
        if give_back:
            for item in held.rows:
                held.was.pop(item.delivery_id, None)
                self._drop(item)
            held.rows.clear()
        for item in group:
            if item.delivery_id in marked:
                held.rows.append(item)
                held.was[item.delivery_id] = marked[item.delivery_id]
            else:
                self._drop(item)  # skipped since it was fetched, or another worker's

    def _work(self) -> None:
        with self.lock:
            lane = self.lanes[next(self._lane_numbers) % len(self.lanes)]
        smtp = transport.SmtpConnection(lane.settings)
        held = _Held()
        # As in Runner._work: the next row's envelope follows a message (pipelined), and
        # its message is made while the server answers; its content goes out only once
        # its row is marked (it is held).
        following: Item | None = None
        made: Made | None = None
        ahead: tuple[Item, Made | None] | None = None
        trouble: list[Exception] = []

        def prepare() -> None:
            nonlocal made
            if following is not None:
                made = self._make(following)

        try:
            with self.store.writer() as db, self._group_ledger(db) as ledger:
                while True:
                    if self.fatal is not None or self.stop.is_set():
                        if ahead is not None:
                            smtp.abandon_ahead()
                            if not held.holds(ahead[0]):
                                self._drop(ahead[0])
                            ahead = None
                        if held.rows or held.replies:
                            self._write(ledger, held, give_back=True)
                        return
                    prepared: Made | None = None
                    if ahead is not None:
                        (item, prepared), ahead = ahead, None
                    elif held.rows:
                        item = held.rows[0]
                    else:
                        taken = self._take(idle=not held.replies)
                        if taken is None:
                            if not held.replies:
                                return
                            self._write(ledger, held)  # nothing to send next: record now
                            continue
                        item = taken
                    try:
                        smtp.connect()
                    except transport.SmtpError as exc:
                        if not held.holds(item):
                            self._drop(item)
                        self._halt(exc)
                        continue
                    data, fault = prepared or self._make(item)
                    if fault is None:
                        lane.rate.acquire()
                    if not held.first(item):
                        # A new group: this row and up to N - 1 more at hand, marked in
                        # the transaction that records the replies to the last group.
                        group = [item]
                        try:
                            while len(group) < self.group_size:
                                more = self._take(idle=False)
                                if more is None:
                                    break
                                group.append(more)
                        except Exception:
                            self._write(ledger, held)
                            for taken_item in group:
                                self._drop(taken_item)
                            raise
                        self._write(ledger, held, group)
                        if not held.first(item):
                            smtp.abandon_ahead()  # not marked: it is not ours to send
                            continue
                    held.rows.popleft()
                    was = held.was.pop(item.delivery_id)
                    if fault is not None:
                        # This recipient's message cannot be made: its row fails alone.
                        smtp.abandon_ahead()
                        held.replies.append(
                            (item, transport.SendResult(FAILED, None, fault, fault=True))
                        )
                        continue
                    following, made = (held.rows[0] if held.rows else None), None
                    if following is None:
                        try:
                            following = self._take(idle=False)
                        except Exception as exc:  # raised once the replies are recorded
                            trouble.append(exc)
                    then = (
                        (self._envelope_sender(following), following.email)
                        if following is not None
                        else None
                    )
                    try:
                        res = smtp.send(
                            self._envelope_sender(item), item.email, data, prepare, then
                        )
                        held.replies.append((item, res))
                    except transport.SmtpError as exc:
                        # The server refused us, not this recipient: the row goes back
                        # with the others held, blaming nobody.
                        held.rows.appendleft(item)
                        held.was[item.delivery_id] = was
                        self._halt(exc)
                    if following is not None:
                        ahead, following = (following, made), None
                    if trouble:
                        self._write(ledger, held, give_back=True)
                        raise trouble[0]
        finally:
            smtp.close()
