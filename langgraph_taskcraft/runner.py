"""Batch runs: one `taskcraft` graph run per document, checkpointed, resumable, append-only output.

Each input (file, URL, JSONL record) is a work item with a stable key. Items run concurrently
(bounded); each has its own thread in a SQLite checkpointer, and a ledger row that says whether it
is done. Results are appended (and fsynced) to JSONL files as each item finishes, so a killed run
loses nothing it had written, and a rerun skips finished items, resumes interrupted ones from
their checkpoint and retries failed ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.records import (
    DocumentError,
    Rejection,
    Task,
    Usage,
    content_id,
    merge_usage,
)

URL_PREFIXES = ("http://", "https://")


@dataclass(frozen=True)
class WorkItem:
    """One document to process: a stable key (for resume) and the graph input."""

    key: str
    graph_input: dict[str, Any]


def _jsonl_items(path: Path) -> Iterator[WorkItem]:
    """Work items of a JSONL corpus of `{id, title, text}` lines (or a list of URLs/paths)."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if isinstance(record, str):
                yield WorkItem(key=record, graph_input={"sources": [record]})
                continue
            record_id = str(record.get("id", number))
            title = str(record.get("title") or record_id).strip()
            text = f"{title}\n\n{record.get('text', '')}"
            yield WorkItem(key=f"{path}#{record_id}", graph_input={"texts": [text]})


def _url_list_items(path: Path) -> Iterator[WorkItem]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            url = line.strip()
            if url and not url.startswith("#"):
                yield WorkItem(key=url, graph_input={"sources": [url]})


def plan_work(inputs: Sequence[str]) -> list[WorkItem]:
    """Expand inputs (files, folders, globs, URLs, URL-list files, JSONL corpora) to work items."""
    from langgraph_taskcraft.loaders import expand_sources

    items: dict[str, WorkItem] = {}
    for raw in inputs:
        path = Path(raw)
        if raw.startswith(URL_PREFIXES):
            planned: Iterable[WorkItem] = [WorkItem(key=raw, graph_input={"sources": [raw]})]
        elif path.suffix == ".jsonl" and path.is_file():
            planned = _jsonl_items(path)
        elif path.suffix in {".urls", ".list"} and path.is_file():
            planned = _url_list_items(path)
        else:
            planned = (
                WorkItem(key=source, graph_input={"sources": [source]})
                for source in expand_sources([raw])
            )
        for item in planned:
            items.setdefault(item.key, item)
    return list(items.values())


class OutputFiles:
    """The run's append-only outputs: tasks, rejected candidates and per-item errors."""

    def __init__(self, tasks_path: Path) -> None:
        self.tasks = tasks_path
        stem = tasks_path.name.removesuffix(".jsonl")
        self.rejected = tasks_path.with_name(f"{stem}.rejected.jsonl")
        self.errors = tasks_path.with_name(f"{stem}.errors.jsonl")
        for path in (self.tasks, self.rejected, self.errors):
            path.parent.mkdir(parents=True, exist_ok=True)
            _drop_torn_tail(path)

    def written_task_ids(self) -> set[str]:
        """Ids of the tasks already in the output (a rerun writes none of them again)."""
        return {record["id"] for record in read_jsonl(self.tasks)}

    def append(self, path: Path, records: Sequence[BaseModel | dict[str, Any]]) -> None:
        """Append records as JSON lines and fsync, so a kill cannot lose or tear them."""
        if not records:
            return
        lines = "".join(
            (r.model_dump_json() if isinstance(r, BaseModel) else json.dumps(r)) + "\n"
            for r in records
        )
        with path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left half-written by a kill (everything before it is intact)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file (none if it does not exist)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


class Ledger:
    """Which work items of a run are done, failed, or were started (SQLite)."""

    def __init__(self, path: Path, run_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS items (run TEXT, key TEXT, status TEXT, attempt INTEGER,"
            " tasks INTEGER, rejected INTEGER, error TEXT, updated REAL, PRIMARY KEY (run, key))"
        )

    def get(self, key: str) -> tuple[str, int] | None:
        """(status, attempt) of an item, or None if it never started."""
        row = self._db.execute(
            "SELECT status, attempt FROM items WHERE run = ? AND key = ?", (self.run_id, key)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def set(
        self,
        key: str,
        status: str,
        attempt: int,
        *,
        tasks: int = 0,
        rejected: int = 0,
        error: str = "",
    ) -> None:
        """Record an item's status."""
        self._db.execute(
            "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self.run_id, key, status, attempt, tasks, rejected, error, time.time()),
        )

    def close(self) -> None:
        """Close the database."""
        self._db.close()


@dataclass
class ItemResult:
    """What one work item produced."""

    key: str
    status: str  # done | failed | skipped
    tasks: list[Task] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    errors: list[DocumentError] = field(default_factory=list)
    usage: Usage = field(default_factory=dict)
    message: str = ""


@dataclass
class RunSummary:
    """Totals of a batch run."""

    items: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    tasks: int = 0
    rejected: int = 0
    usage: Usage = field(default_factory=dict)

    def add(self, result: ItemResult) -> None:
        """Count one finished item."""
        if result.status == "skipped":
            self.skipped += 1
            return
        self.done += result.status == "done"
        self.failed += result.status == "failed"
        self.tasks += len(result.tasks)
        self.rejected += len(result.rejected)
        self.usage = merge_usage(self.usage, result.usage)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready totals."""
        data = asdict(self)
        data["usage"] = {k: v.model_dump() for k, v in self.usage.items()}
        return data


def _item_failed(errors: Sequence[DocumentError], rejected: Sequence[Rejection]) -> str:
    """Why an item must be retried on the next run ('' if it need not be)."""
    provider = [r for r in rejected if r.reason == "llm_error"]
    later_stage = [e for e in errors if e.stage != "retrieve"]
    if provider or later_stage:
        first = provider[0].detail if provider else later_stage[0].message
        return f"LLM provider error: {first}"
    return ""


async def run_batch(
    inputs: Sequence[str],
    context: Context,
    out: Path,
    *,
    concurrency: int = 4,
    executor: Executor | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Run the `taskcraft` graph over every input, resuming whatever an earlier run left.

    `executor` runs the items (default: in this process); this function alone writes the
    outputs and the ledger, so every executor gets the same resume and no-duplicate guarantees.
    """
    items = await asyncio.to_thread(plan_work, inputs)
    outputs = await asyncio.to_thread(OutputFiles, out)
    written = await asyncio.to_thread(outputs.written_task_ids)
    data_dir = Path(context.data_dir)
    run_id = content_id(str(out.resolve()))
    ledger = await asyncio.to_thread(Ledger, data_dir / "ledger.sqlite", run_id)
    summary = RunSummary(items=len(items))
    write_lock = asyncio.Lock()
    slots = asyncio.Semaphore(max(1, concurrency))
    executor = executor or LocalExecutor(context)

    async def process(item: WorkItem) -> None:
        previous = ledger.get(item.key)
        if previous and previous[0] == "done":
            result = ItemResult(key=item.key, status="skipped")
            summary.add(result)
            if on_result:
                on_result(result)
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
            ledger.set(item.key, "started", attempt)
            result = await executor.run(item, config, on_event)
        async with write_lock:
            fresh = [task for task in result.tasks if task.id not in written]
            written.update(task.id for task in fresh)
            await asyncio.to_thread(outputs.append, outputs.tasks, fresh)
            await asyncio.to_thread(outputs.append, outputs.rejected, result.rejected)
            await asyncio.to_thread(outputs.append, outputs.errors, result.errors)
            ledger.set(
                item.key,
                result.status,
                attempt,
                tasks=len(fresh),
                rejected=len(result.rejected),
                error=result.message,
            )
            result.tasks = fresh
            summary.add(result)
        if on_result:
            on_result(result)

    try:
        async with executor:
            await asyncio.gather(*(process(item) for item in items))
    finally:
        ledger.close()
    return summary


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


@contextlib.asynccontextmanager
async def checkpointed_graph(context: Context) -> AsyncIterator[Any]:
    """The `taskcraft` graph compiled with the run's SQLite checkpointer."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from langgraph_taskcraft.graphs.taskcraft import builder

    path = Path(context.data_dir) / "checkpoints.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        yield builder.compile(checkpointer=saver, name="taskcraft")


async def run_item(
    graph: Any,
    item: WorkItem,
    config: dict[str, Any],
    context: Context,
    on_event: Callable[[str, dict[str, Any]], None] | None,
) -> ItemResult:
    """Run (or resume) one item's graph thread; any failure becomes a failed result."""
    try:
        snapshot = await graph.aget_state(config)
        # An interrupted thread continues from its last checkpoint; a new one starts.
        graph_input = None if snapshot.next else item.graph_input
        if snapshot.values and not snapshot.next:
            values = snapshot.values  # finished before the kill, but not yet written
        else:
            values = {}
            async for mode, chunk in graph.astream(
                graph_input, config, context=context, stream_mode=["custom", "values"]
            ):
                if mode == "custom" and on_event:
                    on_event(item.key, chunk)
                elif mode == "values":
                    values = chunk
    except Exception as exc:  # the item fails with its message; the run goes on
        return ItemResult(key=item.key, status="failed", message=f"{type(exc).__name__}: {exc}")
    tasks = [Task.model_validate(t) for t in values.get("tasks", [])]
    rejected = [Rejection.model_validate(r) for r in values.get("rejected", [])]
    errors = [DocumentError.model_validate(e) for e in values.get("errors", [])]
    usage = {k: v for k, v in values.get("usage", {}).items()}
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
