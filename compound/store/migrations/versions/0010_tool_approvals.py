"""tool_call's decision on a call held for approval: approved or denied, by whom, when,
the arguments approved and a denial's message

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 08:30:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tool_call', schema=None) as batch_op:
        batch_op.add_column(sa.Column('decision', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('decided_by', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('decided_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('decided_arguments', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('decision_message', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tool_call', schema=None) as batch_op:
        batch_op.drop_column('decision_message')
        batch_op.drop_column('decided_arguments')
        batch_op.drop_column('decided_at')
        batch_op.drop_column('decided_by')
        batch_op.drop_column('decision')
