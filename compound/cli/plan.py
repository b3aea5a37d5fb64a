"""`compound plan "request"`: decompose only, and show the plan as a tree by waves,
its critical path, its likely cost and its worst-case cost."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer

TYPICAL_ANSWER_TOKENS = 400  # a typical answer; the worst case assumes max_tokens


def likely_cost(plan: Any, settings: Any, price_of: Any, *, request: str = "") -> float:
    """The plan's cost if every answer has a typical length and a token is ~4 bytes
    (the worst case assumes max_tokens and 1 byte a token)."""
    from compound.planner.router import route
    from compound.prompts import render

    answer = "x" * (TYPICAL_ANSWER_TOKENS * 4)

    def one(messages: Any, model: str) -> float:
        price = price_of(model)
        tokens_in = sum(len(m["content"].encode("utf-8")) for m in messages) / 4
        return float(tokens_in * price.input + TYPICAL_ANSWER_TOKENS * price.output)

    total, results = 0.0, []
    for r in route(plan, settings):
        sub = plan.subtasks[r.index]
        msgs = render("subtask", request=request, description=sub.description,
                      dependencies=[(d, answer) for d in sub.needs])
        total += one(msgs, r.models[0])
        results.append((r.index, sub.description, answer))
    synth = render("synthesize", request=request, results=results)
    return total + one(synth, settings.tier_models(settings.synthesis_tier)[0])


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        request: str | None = typer.Argument(None, help="what you want done (`-`: read it from stdin)"),
        file: Path | None = typer.Option(None, "--file", "-f", help=(
            "read the request from this file (`-`: stdin); or give `-` as the request")),
        as_json: bool = typer.Option(False, "--json", help="print the plan (PlanIn) as JSON only"),
    ) -> None:
        """Decompose a request into a plan without running it."""
        from compound.cli.common import read_prompt, settings_or_exit
        from compound.core.errors import PlanInvalid, ProviderError

        settings = settings_or_exit(priced=True)
        prompt = read_prompt(request, file, settings.max_prompt_chars)
        spent: list[float] = []
        try:
            result = asyncio.run(_decompose(settings, prompt, spent))
        except PlanInvalid as exc:
            typer.echo("error: the planner gave no valid plan:\n" + "\n".join(f"  - {e}" for e in exc.errors), err=True)
            raise typer.Exit(1) from None
        except ProviderError as exc:
            typer.echo(f"error: the planner model failed: {exc.message}", err=True)
            raise typer.Exit(1) from None
        if as_json:
            typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))
            return
        _show_plan(result, settings, prompt=prompt, planning_cost=sum(spent))


async def _decompose(settings: Any, prompt: str, spent: list[float]) -> Any:
    """The planner's plan for the prompt, seeing the configured MCP servers' tools and
    the plugins' step kinds; each planner call's cost goes on `spent`."""
    from compound.llm import build_client
    from compound.planner.decompose import decompose

    client = build_client(settings)

    async def call(messages: Any, schema: Any) -> Any:
        out = await client.complete(model=settings.planner_model, messages=messages,
                                    max_tokens=settings.planner_max_tokens, json_schema=schema,
                                    timeout_s=settings.call_timeout_s)
        spent.append(out.cost_usd)
        return out

    servers = None
    try:
        catalogue = None
        if settings.mcp_servers:  # the planner sees the configured servers' tools
            from compound.tools.servers import ToolServers

            servers = ToolServers(settings.mcp_servers)
            await servers.start()
            catalogue = servers.catalogue()
        from compound.plugins import load_plugins

        plugins = load_plugins(settings.plugins)  # the planner sees the step kinds' cards
        return await decompose(call, prompt, max_subtasks=settings.max_subtasks, fallback=False,
                               tools=catalogue, steps=plugins.cards(), kinds=plugins.kinds())
    finally:
        if servers is not None:
            await servers.stop()
        await client.aclose()  # the SDKs' HTTP sessions close on the loop they ran on


def _show_plan(result: Any, settings: Any, *, prompt: str, planning_cost: float) -> None:
    """The plan as a tree by waves, its critical path, and its likely, worst-case and
    planning costs."""
    from rich.console import Console
    from rich.text import Text
    from rich.tree import Tree

    from compound.llm.pricing import price_of
    from compound.planner.estimate import estimate_cost
    from compound.planner.plan import critical_path, waves
    from compound.planner.router import route

    routes = route(result, settings)
    deps = result.deps()
    tree = Tree(Text.assemble(("plan", "bold"), f": {result.reasoning or ''}"))
    for w, members in enumerate(waves(deps)):
        branch = tree.add(Text(f"wave {w}"))
        for i in members:
            branch.add(Text(f"[{i}] tier {routes[i].tier_assigned} {routes[i].models[0]}: "
                            f"{_subtask_line(result.subtasks[i])}"))
    console = Console()
    console.print(tree)
    console.print(Text(f"critical path: {' -> '.join(map(str, critical_path(deps)))}"))
    worst = estimate_cost(result, settings, lambda m: price_of(m, settings), request=prompt)
    likely = likely_cost(result, settings, lambda m: price_of(m, settings), request=prompt)
    console.print(Text(f"likely cost: ${likely:.6f} (answers of ~{TYPICAL_ANSWER_TOKENS} tokens); "
                       f"worst case: ${worst:.6f} (every answer at max_tokens, the most the budget "
                       f"holds back); planning cost: ${planning_cost:.6f}"))


def _subtask_line(s: Any) -> str:
    """A subtask's description, what it waits for (`d?`: optional) and what it acts with."""
    after = (f"  (after {', '.join(f'{d}?' if d in s.optional else str(d) for d in s.needs)})"
             if s.needs else "")
    acts = f"  tools: {', '.join(s.tools)}" if s.tools else ""
    if s.kind == "tool":
        acts = f"  calls {s.tool} {json.dumps(s.arguments, ensure_ascii=False)}"
    return f"{s.description}{after}{acts}"
