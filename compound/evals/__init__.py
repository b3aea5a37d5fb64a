"""Evals: plan quality and routed cost, measured (datasets, scorers, runner, reports).
The datasets live in the repository's top-level evals/ (see evals/README.md)."""
