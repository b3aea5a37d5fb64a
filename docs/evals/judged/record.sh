#!/usr/bin/env bash
# Records the judged runs of docs/evals.md ("Cascades and replanning, judged"): each run
# against fresh simulators (their scripted answers are queues), one item at a time so
# the queues are read in the same order. Run from the repository's root.
set -euo pipefail
here=docs/evals/judged
compound=${COMPOUND:-.venv/bin/compound}
export ANTHROPIC_API_KEY=sim OPENAI_API_KEY=sim COMPOUND_CONFIG=$here/judge.toml
export ANTHROPIC_BASE_URL=http://127.0.0.1:8872

run() {  # name, main simulator's script ('' for none), then extra VAR=value settings
  local name=$1 script=$2; shift 2
  local args=(--port 8872)
  [ -n "$script" ] && args+=(--script "$here/$script")
  $compound sim "${args[@]}" & local main=$!
  $compound sim --port 8873 --script "$here/judge.json" & local judge=$!
  until curl -sf http://127.0.0.1:8872/healthz >/dev/null && curl -sf http://127.0.0.1:8873/healthz >/dev/null; do
    sleep 0.2
  done
  env "$@" $compound eval own --limit 9 --concurrency 1 --judge openai/sim-judge \
    --record "$here/$name.jsonl" --json > "$here/$name.summary.json"
  kill "$main" "$judge"
  wait "$main" "$judge" 2>/dev/null || true
}

# The synthesis on Sonnet in both cascade runs (tier 3 is Sonnet, the synthesis tier 3),
# so that only the tier-2 subtasks differ.
sonnet=anthropic/claude-sonnet-4-5
run cascade-off '' COMPOUND_SYNTHESIS_TIER=3 COMPOUND_TIER3_MODELS=$sonnet
run cascade-on cascade.json COMPOUND_SYNTHESIS_TIER=3 COMPOUND_TIER3_MODELS=$sonnet \
  COMPOUND_TIER2_MODELS=anthropic/claude-haiku-4-5,$sonnet COMPOUND_TIER2_CASCADE=true
run replan-off replan.json COMPOUND_MAX_REPLANS=0
run replan-on replan.json COMPOUND_MAX_REPLANS=1
