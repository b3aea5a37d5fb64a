"""tool calls (intent and outcome of each, keyed for idempotency) and the subtask's kind, tools and partial reason

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-03 05:30:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0006'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tool_call',
        sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('task_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('subtask_index', sa.Integer(), nullable=False),
        sa.Column('turn', sa.Integer(), nullable=False),
        sa.Column('model_call_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column('tool', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('arguments', sa.JSON(), nullable=False),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('result', sa.Text(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('completed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['task_id'], ['task.id'], ),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_tool_call_task', 'tool_call', ['task_id', 'subtask_index'], unique=False)
    with op.batch_alter_table('subtask', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                      server_default='llm'))
        batch_op.add_column(sa.Column('tools', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('tool', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('arguments', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('partial_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('subtask', schema=None) as batch_op:
        batch_op.drop_column('partial_reason')
        batch_op.drop_column('arguments')
        batch_op.drop_column('tool')
        batch_op.drop_column('tools')
        batch_op.drop_column('kind')
    op.drop_index('ix_tool_call_task', table_name='tool_call')
    op.drop_table('tool_call')
