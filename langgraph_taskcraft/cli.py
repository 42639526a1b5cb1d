"""`taskcraft` command line: generate tasks, and inspect or export what was generated."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from langgraph_taskcraft.context import Context, parse_field_value

app = typer.Typer(
    help="Generate verified agentic tasks (TaskCraft) from documents, web pages and corpora.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def build_context(overrides: dict[str, Any], assignments: list[str] | None = None) -> Context:
    """A Context from CLI options (None = not given) and `--set name=value` pairs."""
    hints = get_type_hints(Context, include_extras=True)
    names = {f.name for f in fields(Context)}
    values = {k: v for k, v in overrides.items() if v is not None}
    for assignment in assignments or []:
        name, sep, raw = assignment.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in names:
            raise typer.BadParameter(
                f"--set {assignment!r}: expected NAME=VALUE, NAME one of {', '.join(sorted(names))}"
            )
        values[name] = parse_field_value(raw, hints[name], name)
    return Context(**values)


def _enable_llm_cache(data_dir: Path) -> None:
    """Cache LLM replies in SQLite so that an identical rerun costs nothing."""
    from langchain_community.cache import SQLiteCache
    from langchain_core.globals import set_llm_cache

    data_dir.mkdir(parents=True, exist_ok=True)
    set_llm_cache(SQLiteCache(database_path=str(data_dir / "llm_cache.sqlite")))


@app.command()
def generate(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Files, folders, globs, URLs, `.urls` files (one URL a line) or JSONL corpora "
            "of {id, title, text}."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output JSONL of accepted tasks.")
    ] = Path("tasks.jsonl"),
    model: Annotated[
        str | None, typer.Option(help="Model for every role, e.g. openai:gpt-4.1-mini.")
    ] = None,
    generator_model: Annotated[str | None, typer.Option(help="Model of the generator.")] = None,
    agent_model: Annotated[str | None, typer.Option(help="Model of the verifier agent.")] = None,
    judge_model: Annotated[str | None, typer.Option(help="Model of the judge.")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint for `openai:` models.")
    ] = None,
    search: Annotated[str | None, typer.Option(help="Search backend: local or tavily.")] = None,
    corpus: Annotated[
        str | None, typer.Option(help="Corpus the local search indexes (default: the inputs).")
    ] = None,
    target_hops: Annotated[int | None, typer.Option(help="Depth target (1 = atomic).")] = None,
    target_width: Annotated[int | None, typer.Option(help="Width target (1 = none).")] = None,
    strategy: Annotated[str | None, typer.Option(help="depth, width or both.")] = None,
    concurrency: Annotated[int, typer.Option(help="Documents processed at once.")] = 4,
    data_dir: Annotated[
        str | None, typer.Option(help="Folder for SQLite state and caches (.taskcraft).")
    ] = None,
    cache: Annotated[bool, typer.Option(help="Cache LLM replies in SQLite.")] = True,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any configuration field: --set judge_samples=3."),
    ] = None,
) -> None:
    """Generate verified tasks; rerunning the same command resumes where it stopped."""
    from langgraph_taskcraft.runner import ItemResult, OutputFiles, run_batch

    context = build_context(
        {
            "generator_model": generator_model or model,
            "agent_model": agent_model or model,
            "judge_model": judge_model or model,
            "base_url": base_url,
            "search_backend": search,
            "corpus_path": corpus,
            "target_hops": target_hops,
            "target_width": target_width,
            "extension_strategy": strategy,
            "data_dir": data_dir,
        },
        set_,
    )
    if cache:
        _enable_llm_cache(Path(context.data_dir))
    stages: Counter[str] = Counter()

    with Progress(
        TextColumn("[bold]documents"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("", total=None)
        totals: Counter[str] = Counter()

        def describe() -> str:
            return (
                f"accepted {totals['accepted']} · rejected {totals['rejected']} · "
                f"failed docs {totals['failed']} · tokens {totals['tokens']:,}"
            )

        def on_result(result: ItemResult) -> None:
            totals["accepted"] += len(result.tasks)
            totals["rejected"] += len(result.rejected)
            totals["failed"] += result.status == "failed"
            totals["tokens"] += sum(u.input_tokens + u.output_tokens for u in result.usage.values())
            for rejection in result.rejected:
                stages[f"{rejection.stage}: {rejection.reason}"] += 1
            if result.status == "failed":
                progress.console.print(f"[red]failed[/red] {result.key}: {result.message}")
            for error in result.errors:
                progress.console.print(f"[yellow]error[/yellow] {error.source}: {error.message}")
            progress.update(bar, advance=1, description=describe())

        def on_event(key: str, event: dict[str, Any]) -> None:
            if event.get("stage") == "retrieve" and event.get("status") == "started":
                return
            progress.update(bar, description=describe())

        summary = asyncio.run(
            run_batch(
                inputs,
                context,
                out,
                concurrency=concurrency,
                on_result=on_result,
                on_event=on_event,
            )
        )
        progress.update(bar, total=summary.items, completed=summary.items)
    files = OutputFiles(out)
    console.print(
        f"{summary.tasks} tasks accepted → {files.tasks}; {summary.rejected} rejected → "
        f"{files.rejected}; {summary.failed} documents failed, {summary.skipped} already done."
    )
    for line, count in stages.most_common():
        console.print(f"  rejected at {line}: {count}")
    if summary.failed:
        console.print("Rerun the same command to retry the failed documents.")
    raise typer.Exit(code=0)


@app.command()
def stats(
    tasks: Annotated[Path, typer.Argument(help="A tasks JSONL written by `generate`.")],
) -> None:
    """Acceptance per stage, difficulty histogram, rejection reasons and tokens."""
    from langgraph_taskcraft.runner import OutputFiles, read_jsonl

    files = OutputFiles(tasks)
    accepted = list(read_jsonl(files.tasks))
    rejected = list(read_jsonl(files.rejected))
    errors = list(read_jsonl(files.errors))
    table = Table(
        title=f"{tasks}: {len(accepted)} accepted, {len(rejected)} rejected, "
        f"{len(errors)} document errors"
    )
    table.add_column("what")
    table.add_column("count", justify="right")
    for (kind, hops, width), count in sorted(
        Counter((t["kind"], t["hops"], t["width"]) for t in accepted).items()
    ):
        table.add_row(f"accepted {kind}, hops={hops}, width={width}", str(count))
    for (stage, reason), count in Counter(
        (r["stage"], r["reason"]) for r in rejected
    ).most_common():
        table.add_row(f"rejected at {stage}: {reason}", str(count))
    for error, count in Counter(e["error"] for e in errors).most_common():
        table.add_row(f"document error: {error}", str(count))
    usage: Counter[str] = Counter()
    for record in (*accepted, *rejected):
        for key, value in record.get("usage", {}).items():
            usage[key] += value["input_tokens"] + value["output_tokens"]
    for key, value in sorted(usage.items()):
        table.add_row(f"tokens {key}", f"{value:,}")
    Console().print(table)
