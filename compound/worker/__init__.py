"""The distributed backend (COMPOUND_EXECUTION=queue): tasks go through a DBOS queue
on PostgreSQL to any number of `compound worker` processes (docs/deploy.md)."""
