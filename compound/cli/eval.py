"""`compound eval DATASET`: plan quality and routed cost over a dataset, against the
configured models (or a recording of them)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer

FORMAT_HELP = "own (compound's dataset), worfbench (graph_eval.json), teval (plan set), taskbench (data.json)"


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        dataset: str = typer.Argument(..., help="a dataset file, or `own` for the dataset shipped with compound"),
        fmt: str = typer.Option("own", "--format", help=FORMAT_HELP),
        limit: int | None = typer.Option(None, "--limit", min=1, help="only the first N items"),
        concurrency: int = typer.Option(4, "--concurrency", min=1, help="items in flight at once"),
        out: Path | None = typer.Option(None, "--out", help="write report.md, plots and results.jsonl here"),
        record: Path | None = typer.Option(None, "--record", help="store every model answer in this file"),
        replay: Path | None = typer.Option(None, "--replay", help="answer every call from this recording"),
        judge: str | None = typer.Option(None, "--judge", help="a model to judge compound against one direct "
                                                               "call of the strongest tier"),
        matcher: str = typer.Option("lexical", "--matcher", help="step matching: lexical or embedding"),
        as_json: bool = typer.Option(False, "--json", help="print only the summary as one JSON object"),
    ) -> None:
        """Run a dataset through compound and score the plans and the cost."""
        from rich.console import Console

        from compound.cli.common import settings_or_exit
        from compound.core.errors import CompoundError
        from compound.evals.runner import EvalRun
        from compound.llm.pricing import price_of

        err = Console(stderr=True)
        if record and replay:
            typer.echo("error: --record and --replay exclude each other", err=True)
            raise typer.Exit(2)
        settings = settings_or_exit(priced=True)
        path, items, match, client = _setup(settings, dataset=dataset, fmt=fmt, limit=limit, matcher=matcher,
                                            judge=judge, record=record, replay=replay)
        run = EvalRun(settings=settings, client=client, matcher=match, price_of=lambda m: price_of(m, settings),
                      concurrency=concurrency, judge_model=judge)
        try:
            results = asyncio.run(_with_progress(run, items, err, label=path.name))
        except CompoundError as exc:  # e.g. the embedding matcher's extra is missing
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(2) from None
        summary = _summary(results, client, settings, matcher=match.name, dataset=dataset, fmt=fmt,
                           judge=judge, record=record, replay=replay)
        if out is not None:
            from compound.evals.report import write

            written = write(out, results, summary)
            err.print(f"wrote {', '.join(str(p) for p in written)}", markup=False, highlight=False)
        if as_json:
            typer.echo(json.dumps(summary))
        else:
            _print_summary(summary)


def _setup(settings: Any, *, dataset: str, fmt: str, limit: int | None, matcher: str, judge: str | None,
           record: Path | None, replay: Path | None) -> tuple[Path, list[Any], Any, Any]:
    """The dataset's path and items, the step matcher and the client, each checked
    before any item runs; exits with the problem when one is refused."""
    from compound.core.errors import CompoundError
    from compound.evals.datasets import load
    from compound.evals.similarity import matcher_named
    from compound.llm.pricing import price_of

    try:
        _require_extras(matcher)  # before any item runs
        path = _dataset_path(dataset)
        items = load(path, fmt)[:limit] if limit else load(path, fmt)
        match = matcher_named(matcher)
        if judge:
            price_of(judge, settings)  # an unpriced judge is refused now, not after the whole run
        client = _client(settings, record=record, replay=replay, judge=judge)
    except CompoundError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    return path, items, match, client


def _summary(results: list[Any], client: Any, settings: Any, *, matcher: str, dataset: str, fmt: str,
             judge: str | None, record: Path | None, replay: Path | None) -> dict[str, Any]:
    """The run's summary, with how the models answered structured output and, for a
    replay, the calls the recording missed; a recording is written out."""
    from compound.evals.replay import structured_output_of
    from compound.evals.runner import summarize

    summary: dict[str, Any] = summarize(results, matcher=matcher, dataset=dataset, fmt=fmt, settings=settings,
                                        judge_model=judge)
    summary["structured_output"] = structured_output_of(client)
    if record is not None:
        client.finish()
    if replay is not None:
        summary["replay"] = {"file": str(replay), "misses": getattr(client, "misses", 0)}
    return summary


def _require_extras(matcher: str) -> None:
    from compound.core.extras import require

    require("evals", needed_by="compound eval")
    if matcher == "embedding":
        require("evals-embed", needed_by="--matcher embedding")


def _dataset_path(name: str) -> Path:
    """A path, or `own`: the dataset in the package (the repository's evals/datasets/)."""
    from compound.core.errors import UserInputError

    if name == "own":
        from importlib.resources import files

        return Path(str(files("compound.evals") / "datasets" / "own.jsonl"))
    path = Path(name)
    if not path.is_file():
        raise UserInputError(f"no dataset file at {name} (give a path, or `own`)")
    return path


def _client(settings: Any, *, record: Path | None, replay: Path | None, judge: str | None) -> Any:
    from compound.core.errors import UserInputError
    from compound.evals.replay import RecordingClient, ReplayClient

    header = {"planner": settings.planner_model, "tier1": settings.tier1_models, "tier2": settings.tier2_models,
              "tier3": settings.tier3_models, "synthesis_tier": settings.synthesis_tier, "judge": judge}
    if replay is not None:
        client = ReplayClient(replay)
        differ = {k: (v, header[k]) for k, v in client.header.items()
                  if k in header and header[k] != v and k != "judge"}
        if differ:
            named = "; ".join(f"{k}: recorded {a}, configured {b}" for k, (a, b) in differ.items())
            raise UserInputError(f"the recording {replay} was made with other models ({named}); "
                                 "set the same COMPOUND_* models to replay it")
        return client
    from compound.llm import build_client

    inner = build_client(settings)
    return RecordingClient(inner, record, header=header) if record is not None else inner


async def _with_progress(run: Any, items: list[Any], console: Any, *, label: str) -> list[Any]:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bar = progress.add_task(f"eval {escape(label)}", total=len(items))

        def done(result: Any) -> None:
            progress.update(bar, advance=1, description=f"eval {escape(label)}: {escape(result.id)} {result.status}")

        run.on_done = done
        try:
            results: list[Any] = await run.run(items)
        finally:
            await run.client.aclose()  # the SDKs' HTTP sessions close on the loop they ran on
        return results


def _print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("measure", "value", title=escape(f"compound eval: {s['dataset']} ({s['format']})"))
    for key, value in s.items():
        if key in ("models", "dataset", "format"):
            continue
        shown = json.dumps(value) if isinstance(value, dict | list) else (
            f"{value:.6g}" if isinstance(value, float) else str(value))
        table.add_row(key, escape(shown))
    Console().print(table)
