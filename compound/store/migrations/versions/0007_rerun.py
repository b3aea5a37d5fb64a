"""re-runs and optional dependencies (task.rerun_of, task.tier_models, subtask.reused_from,
subtask.optional_deps)

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-03 05:30:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rerun_of', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('tier_models', sa.JSON(), nullable=True))
    with op.batch_alter_table('subtask', schema=None) as batch_op:
        batch_op.add_column(sa.Column('optional_deps', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('reused_from', sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('subtask', schema=None) as batch_op:
        batch_op.drop_column('reused_from')
        batch_op.drop_column('optional_deps')
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_column('tier_models')
        batch_op.drop_column('rerun_of')
