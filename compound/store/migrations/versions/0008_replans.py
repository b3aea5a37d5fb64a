"""subtask.round and task.replans: the replanning round that added a subtask, and
each round's reason

Revision ID: 0008
Revises: 0004
Create Date: 2026-12-03 05:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('subtask', schema=None) as batch_op:
        batch_op.add_column(sa.Column('round', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('replans', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_column('replans')
    with op.batch_alter_table('subtask', schema=None) as batch_op:
        batch_op.drop_column('round')
