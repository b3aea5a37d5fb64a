"""task.warnings: what the planner's plan needed fixing without a model

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.add_column(sa.Column('warnings', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_column('warnings')
