"""Batch runs: one `taskcraft` graph run per document, checkpointed, resumable, append-only output.

Each input (file, URL, JSONL record) is a work item with a stable key. Items run concurrently
(bounded); each has its own thread in a SQLite checkpointer, and a ledger row that says whether it
is done. Results are appended (and fsynced) to JSONL files as each item finishes, so a killed run
loses nothing it had written, and a rerun skips finished items, resumes interrupted ones from
their checkpoint and retries failed ones.

Writing one item's results is a small transaction: the ledger first records the sizes of the
output files (a pending commit), then the lines are appended, then the ledger marks the item and
clears the pending commit. A run killed in between is rolled back on the next start (the files
are cut back to the recorded sizes) and the item is written again from its finished checkpoint,
so no line is lost or written twice. Rejections and errors of an item are written only once it
is done; a failed item writes just its accepted tasks and is retried in full on the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.nodes.difficulty import wants_width
from langgraph_taskcraft.outputs import (
    Ledger,
    OutputFiles,
    read_jsonl,
    write_failed,
    write_run_info,
)
from langgraph_taskcraft.planning import WorkItem, plan_inputs, plan_width_groups, read_tasks_at
from langgraph_taskcraft.records import (
    DocumentError,
    Rejection,
    Task,
    TokenUsage,
    Usage,
    content_id,
    merge_usage,
)

if TYPE_CHECKING:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

T = TypeVar("T")
RunFunction = Callable[["WorkItem", dict[str, Any]], Awaitable["ItemResult"]]
"""Runs one work item with its graph config (a document on the executor, or a width group)."""

DEDUP_STAGE = "dedup"


@dataclass
class ItemResult:
    """What one work item produced.

    After `run_batch` wrote it, `tasks` and `rejected` are the lines written (accepted tasks not
    already in the output, and the rejections including duplicates).
    """

    key: str
    status: str  # done | failed | skipped
    tasks: list[Task] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    errors: list[DocumentError] = field(default_factory=list)
    usage: Usage = field(default_factory=dict)
    message: str = ""
    resumable: bool = False
    """A failure that left the graph thread unfinished: the next run resumes its checkpoint."""


def _resumes(result: ItemResult) -> bool:
    """Whether a failed item continues its own thread next time (it never finished)."""
    nothing_finished = not (result.tasks or result.rejected or result.errors or result.usage)
    return result.resumable or nothing_finished


@dataclass
class RunSummary:
    """Totals of a batch run."""

    items: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    tasks: int = 0
    rejected: int = 0
    duplicates: int = 0
    usage: Usage = field(default_factory=dict)
    tasks_by_kind: Counter[str] = field(default_factory=Counter)
    rejected_by_stage: Counter[str] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    """Key → reason of the items that failed in this run."""

    def add(self, result: ItemResult) -> None:
        """Count one finished item."""
        if result.status == "skipped":
            self.skipped += 1
            return
        self.done += result.status == "done"
        self.failed += result.status == "failed"
        if result.status == "failed":
            self.failures[result.key] = result.message
        self.tasks += len(result.tasks)
        self.rejected += len(result.rejected)
        self.duplicates += sum(r.stage == DEDUP_STAGE for r in result.rejected)
        self.tasks_by_kind.update(task.kind for task in result.tasks)
        self.rejected_by_stage.update(rejection.stage for rejection in result.rejected)
        self.usage = merge_usage(self.usage, result.usage)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready totals."""
        data = asdict(self)
        data["usage"] = {k: v.model_dump() for k, v in self.usage.items()}
        data["tasks_by_kind"] = dict(self.tasks_by_kind)
        data["rejected_by_stage"] = dict(self.rejected_by_stage)
        return data


def _item_failed(errors: Sequence[DocumentError], rejected: Sequence[Rejection]) -> str:
    """Why an item must be retried on the next run ('' if it need not be).

    Provider failures are retried: `llm_error` rejections, and document errors after loading
    that carry the exception's class name (`RateLimitError`). Errors named with a lowercase
    code (`pdf_empty`, `empty_document`) are facts about the document: retrying cannot help.
    """
    provider = [r for r in rejected if r.reason == "llm_error"]
    later_stage = [e for e in errors if e.stage != "retrieve" and e.error[:1].isupper()]
    if provider or later_stage:
        first = provider[0].detail if provider else later_stage[0].message
        return f"LLM provider error: {first}"
    return ""


class _Committer:
    """Writes items' results to the outputs and the ledger (one item at a time, in a thread)."""

    def __init__(self, files: OutputFiles, ledger: Ledger, dedup_threshold: float | None) -> None:
        from langgraph_taskcraft.dedup import Deduplicator

        self.files = files
        self.ledger = ledger
        pending = ledger.pending_commit()
        if pending is not None:  # a kill interrupted that item's commit: undo it
            files.truncate(pending[1])
            ledger.clear_pending_commit()
        self.written: set[str] = set()
        pairs: list[tuple[str, str]] = []
        for record in read_jsonl(files.tasks):
            task_id, question = record.get("id"), record.get("question")
            if isinstance(task_id, str):
                self.written.add(task_id)
                if isinstance(question, str):
                    pairs.append((task_id, question))
        self.dedup = Deduplicator(threshold=dedup_threshold) if dedup_threshold else None
        if self.dedup is not None:
            self.dedup.add_many(pairs)

    def commit(self, result: ItemResult, attempt: int) -> ItemResult:
        """Append what the item produced and record its status; returns what was written."""
        from langgraph_taskcraft.nodes.verify import rejection_from

        fresh = [task for task in result.tasks if task.id not in self.written]
        accepted: list[Task] = []
        duplicates: list[Rejection] = []
        for task in fresh:
            match = (
                self.dedup.check_and_add(task.id, task.question) if self.dedup is not None else None
            )
            if match is None:
                accepted.append(task)
            else:
                duplicates.append(
                    rejection_from(
                        task,
                        DEDUP_STAGE,
                        "duplicate",
                        match.reason,
                        verification=task.verification,
                        usage=task.usage,
                    )
                )
        # A failed item is retried in full: its rejections (duplicates included) and errors
        # are written by the attempt that finishes it, so each is written once.
        done = result.status == "done"
        rejected = [*duplicates, *result.rejected] if done else []
        errors = list(result.errors) if done else []
        document = {
            "key": result.key,
            "attempt": attempt,
            "status": result.status,
            "tasks": len(accepted),
            "duplicates": len(duplicates),
            "rejected": len(rejected),
            "errors": len(errors),
            "message": result.message,
            "usage": {key: value.model_dump() for key, value in result.usage.items()},
        }
        self.ledger.begin_commit(result.key, self.files.sizes())
        self.files.append(self.files.tasks, accepted)
        self.files.append(self.files.rejected, rejected)
        self.files.append(self.files.errors, errors)
        self.files.append(self.files.documents, [document])
        self.ledger.finish_commit(
            result.key,
            result.status,
            attempt,
            tasks=len(accepted),
            rejected=len(rejected),
            error=result.message,
        )
        self.written.update(task.id for task in accepted)
        return dataclasses.replace(result, tasks=accepted, rejected=rejected, errors=errors)


async def run_batch(
    inputs: Sequence[str],
    context: Context,
    out: Path,
    *,
    concurrency: int = 4,
    executor: Executor | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    on_planned: Callable[[int], None] | None = None,
    dedup_threshold: float | None = 0.8,
) -> RunSummary:
    """Run the `taskcraft` graph over every input, resuming whatever an earlier run left.

    `executor` runs the items (default: in this process); this function alone writes the
    outputs and the ledger, so every executor gets the same resume and no-duplicate guarantees.
    Accepted tasks whose question repeats one already accepted (exactly, or with a Jaccard
    similarity of word bigrams of at least `dedup_threshold`; None: no near-duplicate or exact
    check) are rejected at stage `dedup`. Items run at most `concurrency` at a time; LLM calls
    are bounded by `context.max_llm_calls` and `context.tokens_per_minute` (see `limits`).
    `on_planned(n)` hears the number of work items, `on_result` each item's written result,
    `on_event(key, event)` the graphs' progress events.
    """
    out = Path(out)
    plan = await asyncio.to_thread(plan_inputs, inputs)
    had_outputs = out.exists()
    files = await asyncio.to_thread(OutputFiles, out)
    data_dir = Path(context.data_dir)
    run_id = content_id(str(out.resolve()))
    ledger = await asyncio.to_thread(Ledger, data_dir / "ledger.sqlite", run_id)
    summary = RunSummary(items=len(plan.items) + len(plan.errors))
    keys = {item.key for item in plan.items}
    if on_planned:
        on_planned(summary.items)
    executor = executor or LocalExecutor(context)
    try:
        if not had_outputs:  # the outputs were deleted: what the ledger remembers is gone
            await asyncio.to_thread(ledger.start_over)
        await asyncio.to_thread(
            write_run_info,
            files,
            context,
            inputs,
            dedup_threshold=dedup_threshold,
            executor=type(executor).__name__,
        )
        committer = await asyncio.to_thread(_Committer, files, ledger, dedup_threshold)
        previous_rows = await asyncio.to_thread(ledger.rows)
        write_lock = asyncio.Lock()
        slots = asyncio.Semaphore(max(1, concurrency))

        def report(result: ItemResult) -> None:
            summary.add(result)
            if on_result:
                on_result(result)

        async def commit(result: ItemResult, attempt: int) -> None:
            async with write_lock:
                # A commit that started finishes even if the run is being cancelled.
                written = await _uncancellable(asyncio.to_thread(committer.commit, result, attempt))
            report(written)

        async def process(item: WorkItem, run: RunFunction) -> None:
            previous = previous_rows.get(item.key)
            if previous and previous[0] == "done":
                report(ItemResult(key=item.key, status="skipped"))
                return
            # A failed item is retried in a fresh thread; an interrupted one resumes its own.
            if previous is None:
                attempt = 1
            elif previous[0] == "failed":
                attempt = previous[1] + 1
            else:
                attempt = previous[1]
            config: dict[str, Any] = {
                "configurable": {"thread_id": f"{run_id}:{content_id(item.key)}:{attempt}"},
                "max_concurrency": max(1, context.max_concurrency),
                "recursion_limit": 50 + 10 * context.target_hops,
            }
            async with slots:
                await asyncio.to_thread(ledger.set, item.key, "started", attempt)
                try:
                    result = await run(item, config)
                except Exception as exc:  # executors report failures, but one may still raise
                    message = f"{type(exc).__name__}: {exc}"
                    result = ItemResult(item.key, "failed", message=message, resumable=True)
            if result.status == "failed" and _resumes(result):
                await asyncio.to_thread(
                    ledger.set, item.key, "interrupted", attempt, error=result.message
                )
                report(result)
                return
            await commit(result, attempt)

        async def planning_error(key: str, error: DocumentError) -> None:
            if previous_rows.get(key, ("",))[0] == "done":
                report(ItemResult(key=key, status="skipped"))
                return
            await commit(ItemResult(key=key, status="done", errors=[error]), 1)

        merge_width_later = wants_width(context) and context.width_scope == "run"

        async def run_document(item: WorkItem, config: dict[str, Any]) -> ItemResult:
            if merge_width_later:  # each document's tasks wait for the run-level width merge
                item = dataclasses.replace(
                    item, graph_input={**item.graph_input, "merge_width": False}
                )
            return await executor.run(item, config, on_event)

        async with executor:
            await _all_or_cancel(
                [
                    *(planning_error(key, error) for key, error in plan.errors),
                    *(process(item, run_document) for item in plan.items),
                ]
            )
        if merge_width_later:
            # The ledger rows of width groups are those read at the start: the document phase
            # writes only document rows.
            groups = await asyncio.to_thread(plan_width_groups, files.tasks, previous_rows, context)
            keys.update(group.key for group in groups)
            summary.items += len(groups)
            if on_planned and groups:
                on_planned(summary.items)
            merging = width_phase_context(context, inputs)
            async with checkpointed_graph(merging, "taskcraft_width") as width_graph:

                async def run_group(item: WorkItem, config: dict[str, Any]) -> ItemResult:
                    offsets = item.graph_input["task_offsets"]
                    members = await asyncio.to_thread(read_tasks_at, files.tasks, offsets)
                    item = WorkItem(item.key, {"verified": members})
                    return await run_item(width_graph, item, config, merging, on_event)

                await _all_or_cancel([process(group, run_group) for group in groups])
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(write_failed, files, ledger, keys)
        ledger.close()
    return summary


def width_phase_context(context: Context, inputs: Sequence[str]) -> Context:
    """The context of a run-level width merge.

    Its final verification (`verify_final_task`) no longer has the member documents loaded: with
    local search and no `corpus_path`, a run over one folder or corpus file searches that input.
    """
    if not context.verify_final_task or context.search_backend != "local" or context.corpus_path:
        return context
    if len(inputs) != 1 or not Path(inputs[0]).expanduser().exists():
        return context
    corpus = str(Path(inputs[0]).expanduser().resolve())
    return dataclasses.replace(context, corpus_path=corpus)


async def _uncancellable(awaitable: Awaitable[T]) -> T:
    """Await to the end even when cancelled (then re-raise the cancellation)."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def _all_or_cancel(coroutines: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; on the first exception cancel the rest, wait for them, re-raise it."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class Executor(Protocol):
    """Runs work items' graph threads; entered once around a batch."""

    async def __aenter__(self) -> Executor: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def run(
        self,
        item: WorkItem,
        config: dict[str, Any],
        on_event: Callable[[str, dict[str, Any]], None] | None,
    ) -> ItemResult:
        """Run or resume one item; failures come back as a failed result, never raised."""
        ...


class LocalExecutor:
    """Runs items in this process, checkpointing each thread in `<data_dir>/checkpoints.sqlite`."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self._stack = contextlib.AsyncExitStack()
        self._graph: Any = None

    async def __aenter__(self) -> LocalExecutor:
        self._graph = await self._stack.enter_async_context(checkpointed_graph(self.context))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def run(
        self,
        item: WorkItem,
        config: dict[str, Any],
        on_event: Callable[[str, dict[str, Any]], None] | None,
    ) -> ItemResult:
        """Run or resume one item in this process."""
        return await run_item(self._graph, item, config, self.context, on_event)


def checkpoint_types() -> list[tuple[str, str]]:
    """(module, class) of the package's records and state types that checkpoints hold.

    Given to the checkpointer's serializer as an explicit allowlist, so that resuming a thread
    restores exactly these classes (LangGraph warns about, and will block, unlisted ones).
    """
    import inspect

    from langgraph_taskcraft import records, state

    types: list[tuple[str, str]] = []
    for module in (records, state):
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__:
                types.append((module.__name__, name))
    return types


@contextlib.asynccontextmanager
async def checkpointed_graph(context: Context, name: str = "taskcraft") -> AsyncIterator[Any]:
    """The graph `name` (`taskcraft` or `taskcraft_width`) with the run's SQLite checkpointer."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from langgraph_taskcraft.graphs import taskcraft, width

    builder = {"taskcraft": taskcraft.builder, "taskcraft_width": width.builder}[name]
    path = Path(context.data_dir) / "checkpoints.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    serde = JsonPlusSerializer(allowed_msgpack_modules=checkpoint_types())
    async with checkpoint_saver(path, lambda conn: AsyncSqliteSaver(conn, serde=serde)) as saver:
        yield builder.compile(checkpointer=saver, name=name)


SaverT = TypeVar("SaverT", bound="AsyncSqliteSaver")


@contextlib.asynccontextmanager
async def checkpoint_saver(
    path: Path, make_saver: Callable[[Any], SaverT]
) -> AsyncIterator[SaverT]:
    """A SQLite checkpointer on `path` (WAL mode), closed with no write left half-done.

    WAL with `synchronous=NORMAL`, as the ledger: a killed process loses nothing committed,
    without an fsync per step, and readers (other Ray workers) do not wait for writers. A
    cancelled run (Ctrl-C in a notebook, a caller's timeout) can leave LangGraph's background
    checkpoint writes running; one that began its INSERT just before the connection closed
    would keep SQLite's write lock for as long as this process lives. So the saver's own lock is
    taken first: the write in progress finishes, and later ones find the connection closed.
    """
    import aiosqlite

    async with aiosqlite.connect(str(path)) as connection:
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute("PRAGMA synchronous=NORMAL")
        saver = make_saver(connection)
        try:
            yield saver
        finally:
            await asyncio.shield(_close_under_lock(saver, connection))


async def _close_under_lock(saver: Any, connection: Any) -> None:
    async with saver.lock:
        with contextlib.suppress(Exception):
            await connection.rollback()
        await connection.close()


async def run_item(
    graph: Any,
    item: WorkItem,
    config: dict[str, Any],
    context: Context,
    on_event: Callable[[str, dict[str, Any]], None] | None,
) -> ItemResult:
    """Run (or resume) one item's graph thread; any failure becomes a failed result.

    Every chat-model call of the run goes through this process's `limits.llm_limits(context)`
    (LLM calls in flight, tokens per minute). A graph that raises leaves its thread at the last
    checkpoint: the result is failed and `resumable`.
    """
    from langgraph_taskcraft.limits import llm_limits, with_callback

    config = with_callback(config, llm_limits(context))
    try:
        snapshot = await graph.aget_state(config)
        # An interrupted thread continues from its last checkpoint; a new one starts. Pending
        # tasks (not `next`) say whether it finished: a kill can leave a step's writes saved
        # before the checkpoint that would list the next nodes.
        graph_input = None if snapshot.tasks else item.graph_input
        if snapshot.values and not snapshot.tasks:
            values = snapshot.values  # finished before the kill, but not yet written
        else:
            values = {}
            stream = graph.astream(
                graph_input, config, context=context, stream_mode=["custom", "values"]
            )
            # Closed at once if anything stops the loop, so the graph's tasks end here.
            async with contextlib.aclosing(stream):
                async for mode, chunk in stream:
                    if mode == "custom" and on_event:
                        on_event(item.key, chunk)
                    elif mode == "values":
                        values = chunk
    except Exception as exc:  # the item fails with its message; the run goes on
        return ItemResult(
            key=item.key,
            status="failed",
            message=f"{type(exc).__name__}: {exc}",
            resumable=True,
        )
    tasks = [Task.model_validate(t) for t in values.get("tasks", [])]
    rejected = [Rejection.model_validate(r) for r in values.get("rejected", [])]
    errors = [DocumentError.model_validate(e) for e in values.get("errors", [])]
    usage = {k: TokenUsage.model_validate(v) for k, v in values.get("usage", {}).items()}
    problem = _item_failed(errors, rejected)
    return ItemResult(
        key=item.key,
        status="failed" if problem else "done",
        tasks=tasks,
        rejected=rejected,
        errors=errors,
        usage=merge_usage({}, usage),
        message=problem,
    )
