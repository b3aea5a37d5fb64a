"""An offline provider simulator speaking the Anthropic Messages API and the OpenAI
Chat Completions API over real HTTP, with scriptable latency, usage, failures and
answers. Bodies are built with the SDKs' own response types, so the wire format is
right by construction. Tests, benchmarks and the README's tour run on it
(`compound sim`).

    script          what it answers, how slowly, which calls fail (Script, Failure, ToolUse)
    answers         the simulated model's answers, worked out from the prompt
    app             the ASGI app (Simulator): routes, request log, calls in flight, prompt cache
    anthropic_wire  the Messages API in and out
    openai_wire     the Chat Completions API in and out
    wire            what both wires share: bodies, offered tools, server-sent events, errors
    server          serving it: in a background thread (SimulatorThread) or `compound sim`
"""

from compound.simulator.answers import answer_for, example_arguments, plan_for, prompt_kind, replan_for, tool_cards
from compound.simulator.app import Simulator
from compound.simulator.script import Failure, Reply, Script, ToolUse, request_form
from compound.simulator.server import KEEP_ALIVE_S, SimulatorThread, free_port, run_simulator
from compound.simulator.wire import DroppedStream, Offered

__all__ = [
    "KEEP_ALIVE_S",
    "DroppedStream",
    "Failure",
    "Offered",
    "Reply",
    "Script",
    "Simulator",
    "SimulatorThread",
    "ToolUse",
    "answer_for",
    "example_arguments",
    "free_port",
    "plan_for",
    "prompt_kind",
    "replan_for",
    "request_form",
    "run_simulator",
    "tool_cards",
]
