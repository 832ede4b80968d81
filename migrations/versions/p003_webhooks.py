"""Events (the outbox), webhook subscriptions and their deliveries.

Jobs report their end through a trigger on ``jobs.status`` (every path that finishes a job,
ORM or Core, in any module, writes its ``job.done`` / ``concept.backfilled`` event in its own
transaction), written only while an active webhook subscribes to the type. NOTE for later
migrations: on SQLite, ``batch_alter_table("jobs")`` rebuilds the table and drops its
triggers; such a migration must create them again (``create_job_triggers`` below;
tests/test_webhooks_delivery.py::test_job_trigger_and_tags_changed_events fails without them).

Revision ID: p003
Revises: p002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from indexer.db.base import BigIntPK, JsonType, UtcDateTime

# revision identifiers, used by Alembic.
revision: str = "p003"
down_revision: str | Sequence[str] | None = "p002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINISHED = "('done', 'failed', 'cancelled')"

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION ramdex_job_finished_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhooks WHERE active AND event_types ? 'job.done') THEN
        INSERT INTO events (type, payload, created_at, fanned_out) VALUES (
            'job.done',
            jsonb_build_object('job_id', NEW.id, 'kind', NEW.kind, 'status', NEW.status,
                'total', NEW.total, 'done', NEW.done, 'failed', NEW.failed,
                'error', NEW.error),
            now(), false);
    END IF;
    IF NEW.kind = 'backfill'
        AND EXISTS (SELECT 1 FROM webhooks WHERE active AND event_types ? 'concept.backfilled')
    THEN
        INSERT INTO events (type, payload, created_at, fanned_out) VALUES (
            'concept.backfilled',
            jsonb_build_object('concept_id', NEW.params -> 'concept_id',
                'concept', (SELECT c.name FROM concepts c
                            WHERE c.id = (NEW.params ->> 'concept_id')::integer),
                'job_id', NEW.id, 'status', NEW.status, 'assets_scored', NEW.done,
                'error', NEW.error),
            now(), false);
    END IF;
    RETURN NULL;
END;
$$
"""

_PG_TRIGGER = f"""
CREATE TRIGGER trg_jobs_finished_event AFTER UPDATE OF status ON jobs
FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN {FINISHED})
EXECUTE FUNCTION ramdex_job_finished_event()
"""

_SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"
_SQLITE_WANTS = (
    "EXISTS (SELECT 1 FROM webhooks, json_each(webhooks.event_types) AS t "
    "WHERE webhooks.active AND t.value = '{type}')"
)
_SQLITE_TRIGGER = f"""
CREATE TRIGGER trg_jobs_finished_event AFTER UPDATE OF status ON jobs
FOR EACH ROW
WHEN OLD.status IS NOT NEW.status AND NEW.status IN {FINISHED}
BEGIN
    INSERT INTO events (type, payload, created_at, fanned_out)
    SELECT 'job.done',
        json_object('job_id', NEW.id, 'kind', NEW.kind, 'status', NEW.status,
            'total', NEW.total, 'done', NEW.done, 'failed', NEW.failed, 'error', NEW.error),
        {_SQLITE_NOW}, 0
    WHERE {_SQLITE_WANTS.format(type="job.done")};
    INSERT INTO events (type, payload, created_at, fanned_out)
    SELECT 'concept.backfilled',
        json_object('concept_id', json_extract(NEW.params, '$.concept_id'),
            'concept', (SELECT c.name FROM concepts c
                        WHERE c.id = json_extract(NEW.params, '$.concept_id')),
            'job_id', NEW.id, 'status', NEW.status, 'assets_scored', NEW.done,
            'error', NEW.error),
        {_SQLITE_NOW}, 0
    WHERE NEW.kind = 'backfill' AND {_SQLITE_WANTS.format(type="concept.backfilled")};
END
"""


def create_job_triggers() -> None:
    """The trigger that writes a finished job's events (both backends)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        op.execute(_SQLITE_TRIGGER)


def drop_job_triggers() -> None:
    """Drop that trigger (and on PostgreSQL its function)."""
    op.execute("DROP TRIGGER IF EXISTS trg_jobs_finished_event" + _on_jobs())
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS ramdex_job_finished_event()")


def _on_jobs() -> str:
    return " ON jobs" if op.get_bind().dialect.name == "postgresql" else ""


def upgrade() -> None:
    """Create the webhooks tables and the finished-job trigger."""
    op.create_table(
        "events",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("payload", JsonType, nullable=False),
        sa.Column("created_at", UtcDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("fanned_out", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_fanned_out_id", "events", ["fanned_out", "id"])
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(200), nullable=False),
        sa.Column("event_types", JsonType, nullable=False),
        sa.Column("collection_ids", JsonType, nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("max_events", sa.Integer(), server_default="100", nullable=False),
        sa.Column("max_wait_s", sa.Float(), server_default="5", nullable=False),
        sa.Column("created_at", UtcDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
    )
    op.create_table(
        "webhook_pending_events",
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name=op.f("fk_webhook_pending_events_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_webhook_pending_events_event_id_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("webhook_id", "event_id", name=op.f("pk_webhook_pending_events")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(160), nullable=True),
        sa.Column("created_at", UtcDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("delivered_at", UtcDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed', 'dead')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name=op.f("fk_webhook_deliveries_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        "ix_webhook_deliveries_status_next_attempt_at",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )
    op.create_index(
        "ix_webhook_deliveries_webhook_id_id", "webhook_deliveries", ["webhook_id", "id"]
    )
    create_job_triggers()


def downgrade() -> None:
    """Drop them (subscriptions, queued events and delivery history lost)."""
    drop_job_triggers()
    op.drop_index("ix_webhook_deliveries_webhook_id_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_status_next_attempt_at", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_pending_events")
    op.drop_table("webhooks")
    op.drop_index("ix_events_fanned_out_id", table_name="events")
    op.drop_table("events")
