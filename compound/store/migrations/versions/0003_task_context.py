"""task context and answer_max_tokens (the chat door)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 14:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('context', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('answer_max_tokens', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_column('answer_max_tokens')
        batch_op.drop_column('context')
