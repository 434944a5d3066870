"""Subscribers' tags, and a segment's tree made into a SQLAlchemy condition on subscribers.

The condition is built from SQLAlchemy constructs only (bound parameters, never SQL
text): a tag is an EXISTS on `tags`, an attribute is read from the JSON text in
subscribers.attributes with the dialect's own function, SQLite's json_extract and
PostgreSQL's ->> (SQLAlchemy's JSON type compiles the index to either). Every
condition is two-valued: a missing attribute is not NULL-and-unknown but "no match",
so `not` turns it into a match, as the segment language says (newsletter/segments.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from newsletter import addresses
from newsletter.ledger.store import Store
from newsletter.ledger.tables import ACTIVE, subscribers, tags
from newsletter.segments import And, Attr, Node, Not, Or, Segment, Tag, parse

CHUNK = 500  # addresses per IN (...): well under SQLite's limit of bound parameters


@dataclass(frozen=True)
class Tagged:
    """What `subscribers tag` did."""

    subscribers: int  # known addresses it applied to
    added: int  # (subscriber, tag) pairs that are new
    removed: int  # pairs taken away
    unknown: tuple[str, ...]  # addresses not on the list, as given


def _ids(conn: sa.Connection, emails: Iterable[str]) -> dict[str, int]:
    """{email_key: subscriber id} of the known addresses among `emails`."""
    keys = sorted({addresses.key(e) for e in emails})
    found: dict[str, int] = {}
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        for sid, key in conn.execute(
            sa.select(subscribers.c.id, subscribers.c.email_key).where(
                subscribers.c.email_key.in_(chunk)
            )
        ):
            found[key] = sid
    return found


def _add(conn: sa.Connection, ids: Iterable[int], names: Iterable[str]) -> int:
    """Give every subscriber of `ids` every tag of `names`; the pairs they had are kept."""
    ids, names = sorted(set(ids)), sorted(set(names))
    added = 0
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        have = {
            (sid, tag)
            for sid, tag in conn.execute(
                sa.select(tags.c.subscriber_id, tags.c.tag).where(
                    tags.c.subscriber_id.in_(chunk), tags.c.tag.in_(names)
                )
            )
        }
        rows = [
            {"subscriber_id": sid, "tag": tag}
            for sid in chunk
            for tag in names
            if (sid, tag) not in have
        ]
        if rows:
            conn.execute(tags.insert(), rows)
            added += len(rows)
    return added


def apply(
    store: Store, emails: Iterable[str], add: Iterable[str] = (), remove: Iterable[str] = ()
) -> Tagged:
    """Add and remove tags (already normalized) on the known addresses among `emails`, in
    one transaction; the unknown ones are returned, as given, and change nothing."""
    emails = list(emails)
    add, remove = list(add), list(remove)
    with store.begin() as conn:
        ids = _ids(conn, emails)
        unknown = tuple(e for e in emails if addresses.key(e) not in ids)
        removed = 0
        if remove:
            values = sorted(set(ids.values()))
            for start in range(0, len(values), CHUNK):
                removed += conn.execute(
                    tags.delete().where(
                        tags.c.subscriber_id.in_(values[start : start + CHUNK]),
                        tags.c.tag.in_(remove),
                    )
                ).rowcount
        added = _add(conn, ids.values(), add) if add else 0
    return Tagged(len(set(ids.values())), added, removed, unknown)


def tag_addresses(store: Store, emails: Iterable[str], names: Iterable[str]) -> int:
    """Tag every known address of `emails` (an import's rows) with `names`; new pairs."""
    with store.begin() as conn:
        return _add(conn, _ids(conn, emails).values(), names)


def tags_of(store: Store, email: str) -> list[str]:
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(tags.c.tag)
                .join(subscribers, subscribers.c.id == tags.c.subscriber_id)
                .where(subscribers.c.email_key == addresses.key(email))
                .order_by(tags.c.tag)
            ).scalars()
        )


def _attribute(name: str, dialect: str) -> sa.ColumnElement[Any]:
    """The attribute's value as text, NULL when the subscriber has none."""
    document: sa.ColumnElement[Any]
    if dialect == "postgresql":
        # ->> needs a json operand; the column is TEXT: cast it (RFC 8259 text, as stored).
        document = sa.cast(subscribers.c.attributes, sa.JSON)
    else:
        # SQLite's json_extract reads the text as it is (a CAST to JSON would make it a
        # number there): only the type changes, on the Python side.
        document = sa.type_coerce(subscribers.c.attributes, sa.JSON)
    return document[name].as_string()


def condition(tree: Node, dialect: str) -> sa.ColumnElement[bool]:
    """The segment's tree as a condition on `subscribers` for `dialect` ("sqlite",
    "postgresql")."""
    if isinstance(tree, Tag):
        mine = sa.and_(tags.c.subscriber_id == subscribers.c.id, tags.c.tag == tree.tag)
        return sa.exists().where(mine).correlate(subscribers)
    if isinstance(tree, Attr):
        value = _attribute(tree.name, dialect)
        equal = sa.and_(value.is_not(None), value == tree.value)
        return sa.not_(equal) if tree.negated else equal
    if isinstance(tree, Not):
        return sa.not_(condition(tree.operand, dialect))
    if isinstance(tree, And):
        return sa.and_(*(condition(t, dialect) for t in tree.operands))
    if isinstance(tree, Or):
        return sa.or_(*(condition(t, dialect) for t in tree.operands))
    raise AssertionError(f"not a segment node: {tree!r}")


def matching(conn: sa.Connection, segment: str | Segment | None) -> sa.ColumnElement[bool]:
    """The condition of `segment` (a Segment, its expression, or None: everyone)."""
    if segment is None:
        return sa.true()
    tree = parse(segment) if isinstance(segment, str) else segment.tree
    return condition(tree, conn.dialect.name)


def count(store: Store, segment: Segment | None, status: str | None = ACTIVE) -> int:
    """How many subscribers (with `status`; None: any) the segment matches."""
    with store.engine.connect() as conn:
        where = [matching(conn, segment)]
        if status is not None:
            where.append(subscribers.c.status == status)
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(subscribers).where(*where)
            ).scalar_one()
        )
