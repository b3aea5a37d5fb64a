"""task.end_reason and subtask.end_reason: why a task or a subtask ended, typed
(core/status.py's EndReason); rows that ended before are filled from what they show

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 08:30:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# What an old row shows of its end: its status, and for a task the executor's own
# wording of a budget stop ("could not plan within the budget", "budget of $x exhausted").
TASK_BACKFILL = (
    "UPDATE task SET end_reason = CASE "
    "WHEN status = 'completed' THEN 'completed' "
    "WHEN status = 'canceled' THEN 'canceled' "
    "WHEN status IN ('failed', 'partial') AND lower(COALESCE(error, '')) LIKE '%budget%' THEN 'budget' "
    "WHEN status = 'failed' AND COALESCE(error, '') LIKE 'could not plan: the planner model failed%' "
    "THEN 'failed_provider' "
    "WHEN status = 'failed' AND COALESCE(error, '') LIKE 'could not plan:%' THEN 'failed_plan' "
    "WHEN status = 'failed' AND COALESCE(error, '') LIKE 'internal error%' THEN 'internal' "
    "ELSE 'failed_subtasks' END "
    "WHERE status IN ('completed', 'partial', 'failed', 'canceled')"
)
SUBTASK_BACKFILL = (
    "UPDATE subtask SET end_reason = CASE "
    "WHEN status = 'completed' THEN 'completed' "
    "WHEN status = 'canceled' THEN 'canceled' "
    "WHEN status = 'skipped' AND lower(COALESCE(error, '')) LIKE '%budget%' THEN 'budget' "
    "WHEN status = 'skipped' THEN 'skipped_dependency' "
    "ELSE 'failed_provider' END "
    "WHERE status IN ('completed', 'failed', 'skipped', 'canceled')"
)


def upgrade() -> None:
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('end_reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    with op.batch_alter_table('subtask', schema=None) as batch_op:
        batch_op.add_column(sa.Column('end_reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    op.execute(TASK_BACKFILL)
    op.execute(SUBTASK_BACKFILL)


def downgrade() -> None:
    with op.batch_alter_table('subtask', schema=None) as batch_op:
        batch_op.drop_column('end_reason')
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_column('end_reason')
