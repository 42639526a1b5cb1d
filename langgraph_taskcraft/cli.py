"""`taskcraft` command line: generate tasks, estimate a run, and inspect or export the output."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from langgraph_taskcraft.context import Context, parse_field_value
from langgraph_taskcraft.stats import ATOMIC_STAGES, DEPTH_STAGES, WIDTH_STAGES

if TYPE_CHECKING:
    from langgraph_taskcraft.accounting import ModelPrice
    from langgraph_taskcraft.limits import LLMLimits
    from langgraph_taskcraft.records import Usage
    from langgraph_taskcraft.runner import ItemResult

app = typer.Typer(
    help="Generate verified agentic tasks (TaskCraft) from documents, web pages and corpora.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

EXIT_ITEMS_FAILED = 3
"""Exit status of a `generate` run that finished with failed work items (a rerun retries them)."""


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
        try:
            values[name] = parse_field_value(raw, hints[name], name)
        except ValueError as exc:
            raise typer.BadParameter(f"--set {assignment!r}: {exc}") from exc
    try:
        return Context(**values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _role_models(
    model: str | None, generator: str | None, agent: str | None, judge: str | None
) -> dict[str, str | None]:
    """Each role's model option: its own, else `--model` (None: not given)."""
    return {
        "generator_model": generator or model,
        "agent_model": agent or model,
        "judge_model": judge or model,
    }


def _load_prices(path: Path | None) -> dict[str, ModelPrice]:
    from langgraph_taskcraft.accounting import load_prices

    try:
        return load_prices(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise typer.BadParameter(f"--prices {path}: {exc}") from exc


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"${value:,.4f}"


def _cost_line(usage: Usage, models: Mapping[str, str], prices: Mapping[str, ModelPrice]) -> str:
    from langgraph_taskcraft.accounting import summarize

    summary = summarize(usage, models, prices)
    if not summary.rows:
        return "$0.0000"
    if summary.unpriced_models and summary.total == 0:
        return "n/a (no price for " + ", ".join(summary.unpriced_models) + ")"
    return _usd(summary.total) + (" + unpriced" if summary.unpriced_models else "")


# Shared options.

ModelOption = Annotated[
    str | None, typer.Option(help="Model for every role, e.g. openai:gpt-4.1-mini.")
]
GeneratorOption = Annotated[str | None, typer.Option(help="Model of the generator.")]
AgentOption = Annotated[str | None, typer.Option(help="Model of the verifier agent.")]
JudgeOption = Annotated[str | None, typer.Option(help="Model of the judge.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Any configuration field: --set judge_samples=3."),
]
PricesOption = Annotated[
    Path | None,
    typer.Option(
        help="JSON or TOML price table (USD per million input/output tokens per model) on top "
        "of the built-in one."
    ),
]


class ExecutorName(StrEnum):
    """Where documents run."""

    local = "local"
    ray = "ray"


@dataclass
class RunDisplay:
    """The live view of a run: documents, tasks and rejections by stage, tokens and cost."""

    models: Mapping[str, str]
    prices: Mapping[str, ModelPrice]
    limits: LLMLimits | None = None
    done: int = 0
    failed: int = 0
    skipped: int = 0
    tasks: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    live: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(stage, outcome) of the verifications, hops and merges seen so far, finished or not."""
    usage: Usage = field(default_factory=dict)

    def on_result(self, result: ItemResult) -> None:
        """Count a finished (or skipped) document."""
        from langgraph_taskcraft.records import merge_usage

        if result.status == "skipped":
            self.skipped += 1
            return
        self.done += result.status == "done"
        self.failed += result.status == "failed"
        self.tasks.update(task.kind for task in result.tasks)
        self.rejected.update(rejection.stage for rejection in result.rejected)
        self.usage = merge_usage(self.usage, result.usage)

    def on_event(self, key: str, event: Mapping[str, Any]) -> None:
        """Count a progress event of a document still running."""
        stage, status = event.get("stage"), event.get("status")
        if stage in ("verify", "depth_hop", "width_merge") and status != "started":
            self.live[(str(stage), str(status))] += 1

    def __rich__(self) -> Group:
        """Three lines under the bar."""
        # The refresh thread reads what the event loop writes: work on copies.
        tasks_by_kind, rejected, live = dict(self.tasks), dict(self.rejected), dict(self.live)
        tasks = sum(tasks_by_kind.values())
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(tasks_by_kind.items()))
        first = Text.assemble(
            ("work items ", "bold"),
            f"done {self.done} · ",
            ("failed ", "red" if self.failed else ""),
            f"{self.failed} · already done {self.skipped}   ",
            ("tasks ", "bold"),
            f"accepted {tasks}" + (f" ({kinds})" if kinds else ""),
        )
        order = {stage: i for i, stage in enumerate((*ATOMIC_STAGES, *WIDTH_STAGES))}
        stages = sorted(rejected.items(), key=lambda item: (order.get(item[0], 99), item[0]))
        second = Text.assemble(
            ("rejected ", "bold"),
            " · ".join(f"{stage} {n}" for stage, n in stages) or "none yet",
        )
        outcomes: dict[str, list[str]] = {}
        for (stage, status), count in sorted(live.items()):
            outcomes.setdefault(stage, []).append(f"{count} {status}")
        if outcomes:
            so_far = " · ".join(f"{stage} {', '.join(parts)}" for stage, parts in outcomes.items())
            second.append(f"   so far: {so_far}")
        usage = self.usage
        input_tokens = sum(u.input_tokens for u in usage.values())
        output_tokens = sum(u.output_tokens for u in usage.values())
        third = Text.assemble(
            ("tokens ", "bold"),
            f"{input_tokens + output_tokens:,} (in {input_tokens:,}, out {output_tokens:,}) · ",
            ("est. cost ", "bold"),
            _cost_line(usage, self.models, self.prices),
        )
        if self.limits is not None:
            stats = self.limits.stats
            third.append(
                f"   LLM calls {stats.calls:,} ({stats.cached:,} cached, "
                f"{stats.in_flight} in flight)"
            )
        return Group(first, second, third)


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
    model: ModelOption = None,
    generator_model: GeneratorOption = None,
    agent_model: AgentOption = None,
    judge_model: JudgeOption = None,
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
    max_llm_calls: Annotated[
        int | None, typer.Option(help="LLM requests in flight at once, over all documents.")
    ] = None,
    requests_per_minute: Annotated[
        float | None, typer.Option(help="LLM requests per minute (shared rate limiter).")
    ] = None,
    tokens_per_minute: Annotated[
        float | None, typer.Option(help="LLM tokens per minute (shared token bucket).")
    ] = None,
    dedup: Annotated[
        bool, typer.Option(help="Reject tasks whose question repeats an accepted one.")
    ] = True,
    dedup_threshold: Annotated[
        float,
        typer.Option(
            min=0.01,
            max=1.0,
            help="Near-duplicate threshold: Jaccard similarity of word bigrams (1 = exact only).",
        ),
    ] = 0.8,
    prices: PricesOption = None,
    executor: Annotated[
        ExecutorName, typer.Option(help="Run documents in this process or as Ray tasks.")
    ] = ExecutorName.local,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to use with --executor ray (default: a local Ray)."),
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option(help="Folder for SQLite state and caches (.taskcraft).")
    ] = None,
    cache: Annotated[bool, typer.Option(help="Cache LLM replies in SQLite.")] = True,
    json_summary: Annotated[
        bool, typer.Option("--json", help="Also print the run's summary as JSON on stdout.")
    ] = False,
    set_: SetOption = None,
) -> None:
    """Generate verified tasks; rerunning the same command resumes where it stopped."""
    from langgraph_taskcraft.accounting import models_by_role_of, summarize
    from langgraph_taskcraft.cache import use_llm_cache
    from langgraph_taskcraft.limits import llm_limits
    from langgraph_taskcraft.outputs import OutputFiles
    from langgraph_taskcraft.runner import run_batch

    context = build_context(
        {
            **_role_models(model, generator_model, agent_model, judge_model),
            "base_url": base_url,
            "search_backend": search,
            "corpus_path": corpus,
            "target_hops": target_hops,
            "target_width": target_width,
            "extension_strategy": strategy,
            "max_llm_calls": max_llm_calls,
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "data_dir": data_dir,
        },
        set_,
    )
    price_table = _load_prices(prices)
    models = models_by_role_of(context)
    if executor is ExecutorName.ray:
        try:
            from langgraph_taskcraft.ray_executor import RayExecutor
        except ImportError as exc:
            raise typer.BadParameter(f"--executor ray is not available: {exc}") from exc
        run_executor: Any = RayExecutor(context, address=ray_address)
    else:
        run_executor = None

    display = RunDisplay(models=models, prices=price_table)
    progress = Progress(
        TextColumn("[bold]work items"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )
    bar = progress.add_task("work items", total=None)

    def on_result(result: ItemResult) -> None:
        display.on_result(result)
        if result.status == "failed":
            console.print(f"[red]failed[/red] {result.key}: {result.message}")
        for error in result.errors:
            console.print(f"[yellow]error[/yellow] {error.source}: {error.message}")
        progress.update(bar, advance=1)

    async def run() -> Any:
        if run_executor is None:
            display.limits = llm_limits(context)
        return await run_batch(
            inputs,
            context,
            out,
            concurrency=concurrency,
            executor=run_executor,
            on_result=on_result,
            on_event=display.on_event,
            on_planned=lambda total: progress.update(bar, total=total),
            dedup_threshold=dedup_threshold if dedup else None,
        )

    with (
        use_llm_cache(context.data_dir if cache else None),
        Live(Group(progress, display), console=console, refresh_per_second=4),
    ):
        summary = asyncio.run(run())
    if not console.is_terminal:
        console.line()  # the last frame of the live view ends without one off a terminal

    files = OutputFiles(out, prepare=False)
    console.print(
        f"{summary.tasks} tasks accepted → {files.tasks}; {summary.rejected} rejected → "
        f"{files.rejected} ({summary.duplicates} duplicates); {summary.failed} work "
        f"items failed, {summary.skipped} already done."
    )
    for stage, count in _ordered_stages(summary.rejected_by_stage):
        console.print(f"  rejected at {stage}: {count}")
    if summary.usage:
        console.print("Tokens and cost of the documents processed in this run:")
        table = summarize(summary.usage, models, price_table).format_table()
        console.print(table, markup=False, highlight=False, soft_wrap=True)
    if summary.failed:
        console.print(
            f"{summary.failed} work items failed (listed in {files.failed}); rerun the same "
            "command to retry them."
        )
    if json_summary:
        typer.echo(json.dumps(summary.as_dict()))
    if summary.failed:
        # Scripts can tell "finished, some items to retry" from success and from a crash (1).
        raise typer.Exit(EXIT_ITEMS_FAILED)


def _ordered_stages(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    order = {s: i for i, s in enumerate((*ATOMIC_STAGES, *DEPTH_STAGES, *WIDTH_STAGES))}
    return sorted(counts.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))


# Estimate.


@app.command()
def estimate(
    inputs: Annotated[list[str], typer.Argument(help="The inputs of the run, as for generate.")],
    model: ModelOption = None,
    generator_model: GeneratorOption = None,
    agent_model: AgentOption = None,
    judge_model: JudgeOption = None,
    target_hops: Annotated[int | None, typer.Option(help="Depth target (1 = atomic).")] = None,
    target_width: Annotated[int | None, typer.Option(help="Width target (1 = none).")] = None,
    strategy: Annotated[str | None, typer.Option(help="depth, width or both.")] = None,
    prices: PricesOption = None,
    sample: Annotated[
        int, typer.Option(help="Documents loaded to count chunks (0 = all); the rest scale.")
    ] = 500,
    fetch_urls: Annotated[
        bool, typer.Option(help="Download URL inputs to count their chunks.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    set_: SetOption = None,
) -> None:
    """Predict LLM calls, tokens and cost of `generate` on these inputs (no LLM call is made).

    Documents are loaded (a sample of `--sample` of them) to count the chunks the generator
    reads; per-stage averages of `accounting.EstimateFactors` do the rest. URL inputs are not
    downloaded unless `--fetch-urls`: they count as the loaded documents' average.
    """
    from langgraph_taskcraft.accounting import estimate as estimate_run
    from langgraph_taskcraft.accounting import models_by_role_of, price_of
    from langgraph_taskcraft.planning import count_chunks, plan_inputs

    context = build_context(
        {
            **_role_models(model, generator_model, agent_model, judge_model),
            "target_hops": target_hops,
            "target_width": target_width,
            "extension_strategy": strategy,
        },
        set_,
    )
    price_table = _load_prices(prices)
    plan = plan_inputs(inputs)
    counted = count_chunks(plan.items, context, sample=sample, fetch_urls=fetch_urls)
    # Documents that load (per the sample) and URLs (assumed to load like the rest).
    attempted = counted.documents + counted.failed
    loadable_share = counted.documents / attempted if attempted else 1.0
    documents = round(len(plan.items) * loadable_share) if counted.documents else 0
    if not counted.documents and counted.unfetched_urls:
        documents = len(plan.items)
    chunks_per_document = counted.chunks_per_document or float(context.max_chunks_per_document)
    result = estimate_run(documents, chunks_per_document, context, prices=price_table)
    models = models_by_role_of(context)
    rows = []
    for key in sorted(result.by_key):
        entry = result.by_key[key]
        try:
            price = price_of(models.get(key.partition(":")[0], "?"), price_table)
            usd: float | None = price.cost(entry.input_tokens, entry.output_tokens)
        except KeyError:
            usd = None
        rows.append((key, entry, usd))
    if json_output:
        typer.echo(
            json.dumps(
                {
                    "items": len(plan.items),
                    "unusable_inputs": len(plan.errors),
                    "documents": documents,
                    "documents_sampled": counted.sampled,
                    "documents_failed_to_load": counted.failed,
                    "urls_not_fetched": counted.unfetched_urls,
                    "chunks_per_document": chunks_per_document,
                    "calls": result.calls,
                    "input_tokens": result.input_tokens,
                    "output_tokens": result.output_tokens,
                    "cost": result.cost,
                    "tasks": result.tasks,
                    "by_key": {
                        key: {
                            "calls": entry.calls,
                            "input_tokens": entry.input_tokens,
                            "output_tokens": entry.output_tokens,
                            "cost": usd,
                        }
                        for key, entry, usd in rows
                    },
                }
            )
        )
        return
    table = Table(
        title=f"Estimate for {documents:,} documents × {chunks_per_document:.2f} chunks "
        f"(from {counted.sampled:,} of {len(plan.items):,} inputs loaded)"
    )
    table.add_column("role:stage", no_wrap=True)
    for column in ("calls", "input tokens", "output tokens", "USD"):
        table.add_column(column, justify="right", no_wrap=True)
    for key, entry, usd in rows:
        table.add_row(
            key,
            f"{entry.calls:,.0f}",
            f"{entry.input_tokens:,.0f}",
            f"{entry.output_tokens:,.0f}",
            _usd(usd),
        )
    table.add_row(
        "total",
        f"{result.calls:,.0f}",
        f"{result.input_tokens:,.0f}",
        f"{result.output_tokens:,.0f}",
        _usd(result.cost),
        style="bold",
    )
    output = Console()
    output.print(table)
    output.print("Models: " + ", ".join(f"{role} {spec}" for role, spec in models.items()))
    output.print(f"Expected accepted atomic tasks: about {result.tasks:,.0f}.")
    notes = []
    if counted.failed:
        notes.append(f"{counted.failed} sampled documents cannot be loaded (no LLM calls)")
    if counted.unfetched_urls:
        notes.append(
            f"{counted.unfetched_urls} URLs not downloaded, counted at the average "
            "(--fetch-urls to load them)"
        )
    if plan.errors:
        notes.append(f"{len(plan.errors)} unusable input lines")
    for note in notes:
        output.print(f"Note: {note}.")
    output.print(
        "An order of magnitude: calibrate with the usage table of a small run (taskcraft stats)."
    )


# Export.


class ExportFormat(StrEnum):
    """Export formats of `taskcraft export`."""

    hf = "hf"
    parquet = "parquet"
    openai = "openai"
    sharegpt = "sharegpt"
    qa = "qa"
    all = "all"


class FinalAnswer(StrEnum):
    """What ends a chat export's conversation."""

    trajectory = "trajectory"
    golden = "golden"


@app.command()
def export(
    tasks: Annotated[Path, typer.Argument(help="A tasks JSONL written by `generate`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the dataset to.")],
    formats: Annotated[
        list[ExportFormat],
        typer.Option(
            "--format",
            "-f",
            help="hf (Parquet for Hugging Face datasets), openai (chat fine-tuning JSONL with "
            "tool calls), sharegpt, qa, or all; repeat for several.",
        ),
    ] = [ExportFormat.all],  # noqa: B006 - typer reads the default, it is never mutated
    final_answer: Annotated[
        FinalAnswer,
        typer.Option(help="Chat exports end on the agent's own answer or the golden answer."),
    ] = FinalAnswer.trajectory,
    use_final_verification: Annotated[
        bool,
        typer.Option(help="Use the final question's own verifier run when there is one."),
    ] = False,
    system_prompt: Annotated[
        str | None, typer.Option(help="System prompt of chat exports without their own.")
    ] = None,
) -> None:
    """Export tasks as a dataset, with a manifest of how they were made."""
    from langgraph_taskcraft.exports import DEFAULT_FILE_NAMES, RunInfo, export_all, load_tasks
    from langgraph_taskcraft.outputs import read_run_info

    if not tasks.is_file():
        raise typer.BadParameter(f"{tasks}: no such file")
    chosen: list[str] = []
    for fmt in formats:
        names = (
            list(DEFAULT_FILE_NAMES)
            if fmt is ExportFormat.all
            else ["parquet" if fmt is ExportFormat.hf else fmt.value]
        )
        chosen.extend(name for name in names if name not in chosen)
    loaded, bad_lines = load_tasks(tasks)
    for line in bad_lines[:10]:
        console.print(f"[yellow]skipped[/yellow] {line.path}:{line.line}: {line.message}")
    if len(bad_lines) > 10:
        console.print(f"[yellow]skipped[/yellow] {len(bad_lines) - 10} more unreadable lines")
    info = read_run_info(tasks)
    run = RunInfo(config=info.get("config"), models=info.get("models"), seed=info.get("seed"))
    if not info:
        console.print(f"Note: no run configuration beside {tasks}; the manifest has none.")
    results = export_all(
        loaded,
        out,
        chosen,
        run=run,
        system_prompt=system_prompt,
        use_final_verification=use_final_verification,
        final_answer=final_answer.value,
    )
    manifest = None
    for name, result in results.items():
        skipped = Counter(item.reason for item in result.skipped)
        note = (
            " (skipped: " + ", ".join(f"{n} {reason}" for reason, n in skipped.items()) + ")"
            if skipped
            else ""
        )
        console.print(f"{name}: {result.records} records → {result.path}{note}")
        manifest = result.manifest_path
    if manifest is not None:
        console.print(f"manifest → {manifest}")


# Stats.


@app.command()
def stats(
    tasks: Annotated[Path, typer.Argument(help="A tasks JSONL written by `generate`.")],
    prices: PricesOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Acceptance per stage, difficulty histogram, rejection reasons, tokens and cost."""
    if not tasks.exists():
        raise typer.BadParameter(f"{tasks}: no such file")
    from langgraph_taskcraft.stats import collect_stats

    data = collect_stats(tasks, _load_prices(prices))
    if json_output:
        typer.echo(json.dumps({k: v for k, v in data.items() if k != "cost_table"}))
        return
    output = Console()
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(data["tasks_by_kind"].items()))
    documents = ", ".join(f"{k} {n}" for k, n in sorted(data["documents"].items()))
    output.print(
        f"[bold]{tasks}[/bold]: {data['tasks']} tasks accepted"
        + (f" ({kinds})" if kinds else "")
        + f", {data['rejected']} rejected, {data['document_errors']} document errors"
        + (f"; documents: {documents}" if documents else "")
    )
    for name, title in (
        ("atomic", "Acceptance per stage (atomic candidates)"),
        ("depth_attempts", "Depth hops (attempts)"),
        ("width_attempts", "Width merges (attempts)"),
    ):
        rows = data["acceptance"][name]
        if not rows:
            continue
        table = Table(title=title, title_justify="left")
        for column in ("stage", "reached", "rejected", "passed", "pass rate"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for row in rows:
            rate = "" if row["pass_rate"] is None else f"{row['pass_rate']:.0%}"
            table.add_row(
                row["stage"], str(row["reached"]), str(row["rejected"]), str(row["passed"]), rate
            )
        output.print(table)

    if data["difficulty"]:
        table = Table(title="Difficulty (hops × width)", title_justify="left")
        for column in ("hops", "width", "tasks", ""):
            table.add_column(column, justify="left" if not column else "right")
        top = max(row["tasks"] for row in data["difficulty"])
        for row in data["difficulty"]:
            bar = "█" * max(1, round(30 * row["tasks"] / top))
            table.add_row(str(row["hops"]), str(row["width"]), str(row["tasks"]), bar)
        output.print(table)

    if data["rejection_reasons"] or data["error_kinds"]:
        table = Table(title="Rejection reasons and document errors", title_justify="left")
        table.add_column("what")
        table.add_column("count", justify="right")
        for row in data["rejection_reasons"]:
            table.add_row(f"rejected at {row['stage']}: {row['reason']}", str(row["count"]))
        for error, count in data["error_kinds"].items():
            table.add_row(f"document error: {error}", str(count))
        output.print(table)

    if data["failed"]:
        output.print(f"[red]{len(data['failed'])} documents still failed[/red] (rerun to retry):")
        for row in data["failed"][:10]:
            output.print(f"  {row['key']}: {row['error']}", markup=False)

    if data["usage"]:
        source = "" if data["usage_source"] == "documents" else " (from the records: partial)"
        output.print(f"[bold]Tokens and cost{source}[/bold]")
        output.print(data["cost_table"], markup=False, highlight=False, soft_wrap=True)
