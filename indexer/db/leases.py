"""Leases measured on the database's clock, and named service leases (one holder cluster-wide).

A lease says "process X holds this until T"; X renews it while it works, so a lease that ran out
means X died (or lost its database). Times are always the database's ``now()``, never a
machine's clock, so machines whose clocks disagree still agree on who holds what.

``service_leases`` elects one holder of a named duty (the ingest reconciler) among every process
that could do it: taking the lease is one conditional upsert, renewed by its holder.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, Session, mapped_column

from indexer.db._sql import table_of, upsert_insert
from indexer.db.base import Base, UtcDateTime, db_now


class db_in(sa.sql.functions.FunctionElement[datetime]):  # noqa: N801 - reads like func.now
    """The database's ``now()`` plus ``seconds``: when a lease taken now runs out."""

    type = UtcDateTime()
    inherit_cache = True

    def __init__(self, seconds: float) -> None:
        super().__init__(sa.literal(float(seconds), sa.Float()))


@compiles(db_in)
def _db_in_default(element: db_in, compiler: Any, **kw: Any) -> str:
    seconds = compiler.process(list(element.clauses)[0], **kw)
    return f"(now() + {seconds} * interval '1 second')"


@compiles(db_in, "sqlite")
def _db_in_sqlite(element: db_in, compiler: Any, **kw: Any) -> str:
    # The same text format as db_now() on SQLite, so the two compare as strings correctly.
    seconds = compiler.process(list(element.clauses)[0], **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', ({seconds}) || ' seconds') || '000')"


class ServiceLease(Base):
    """A duty held by one process at a time (for example ``reconcile``)."""

    __tablename__ = "service_leases"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(160))
    lease_until: Mapped[datetime] = mapped_column(UtcDateTime)


_service = table_of(ServiceLease)


def take_service_lease(session: Session, name: str, owner: str, lease_s: float) -> bool:
    """Take or renew the named lease for ``owner``; False while another owner's lease is live.

    One statement (insert, or update when the holder is us or its lease ran out), so two
    processes racing for it cannot both win.
    """
    stmt = upsert_insert(session, _service).values(
        name=name, owner=owner, lease_until=db_in(lease_s)
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"owner": stmt.excluded.owner, "lease_until": stmt.excluded.lease_until},
        where=sa.or_(_service.c.owner == owner, _service.c.lease_until < db_now()),
    ).returning(_service.c.name)
    return session.execute(stmt).first() is not None


def release_service_lease(session: Session, name: str, owner: str) -> None:
    """Give the named lease up (if ``owner`` holds it), so another process can take it at once."""
    session.execute(sa.delete(_service).where(_service.c.name == name, _service.c.owner == owner))
