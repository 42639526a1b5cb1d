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
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from langchain_core.caches import BaseCache
from pydantic import BaseModel

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.records import (
    DocumentError,
    Rejection,
    Task,
    TokenUsage,
    Usage,
    content_id,
    merge_usage,
)

T = TypeVar("T")
logger = logging.getLogger(__name__)

URL_PREFIXES = ("http://", "https://")
URL_LIST_SUFFIXES = (".urls", ".list")
"""Files read as lists of URLs (or paths), one a line; `#` starts a comment line."""

PLAN_STAGE = "plan"
"""Stage of the errors found while expanding the inputs (e.g. a bad JSONL line)."""

DEDUP_STAGE = "dedup"


@dataclass(frozen=True)
class WorkItem:
    """One document to process: a stable key (for resume) and the graph input."""

    key: str
    graph_input: dict[str, Any]


@dataclass
class WorkPlan:
    """The work items of a run's inputs, and the inputs that could not be read as items."""

    items: list[WorkItem] = field(default_factory=list)
    errors: list[tuple[str, DocumentError]] = field(default_factory=list)
    """(key, error) of each unusable input, e.g. a malformed JSONL line."""


def _jsonl_items(path: Path) -> Iterator[WorkItem | tuple[str, DocumentError]]:
    """Items of a JSONL corpus: `{id, title, text}` records, `{id, url}` records or strings."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except ValueError as exc:
                yield where, _plan_error(where, "invalid_json", f"not a JSON line ({exc})")
                continue
            if isinstance(record, str):
                yield WorkItem(key=record, graph_input={"sources": [record]})
                continue
            if not isinstance(record, dict):
                message = f"expected an object or a string, got {type(record).__name__}"
                yield where, _plan_error(where, "invalid_record", message)
                continue
            record_id = str(record.get("id", number))
            text = record.get("text")
            source = record.get("url") or record.get("source") or record.get("path")
            if isinstance(text, str) and text.strip():
                title = str(record.get("title") or record_id).strip()
                yield WorkItem(
                    key=f"{path}#{record_id}", graph_input={"texts": [f"{title}\n\n{text}"]}
                )
            elif isinstance(source, str) and source.strip():
                yield WorkItem(key=f"{path}#{record_id}", graph_input={"sources": [source.strip()]})
            else:
                message = "a record needs a non-empty `text` (or a `url`/`source`)"
                yield f"{path}#{record_id}", _plan_error(where, "invalid_record", message)


def _plan_error(source: str, error: str, message: str) -> DocumentError:
    return DocumentError(source=source, stage=PLAN_STAGE, error=error, message=message)


def _url_list_items(path: Path) -> Iterator[WorkItem]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            url = line.strip()
            if url and not url.startswith("#"):
                yield WorkItem(key=url, graph_input={"sources": [url]})


def plan_inputs(inputs: Sequence[str]) -> WorkPlan:
    """Expand inputs (files, folders, globs, URLs, URL lists, JSONL corpora) to work items.

    `.jsonl` files are corpora (one document a line), `.urls`/`.list` files list URLs or paths
    one a line; anything else goes through `loaders.expand_sources`. Items are unique by key, in
    input order. Lines that cannot be used become errors with stage `plan`.
    """
    from langgraph_taskcraft.loaders import expand_sources

    plan = WorkPlan()
    seen: set[str] = set()
    for raw in inputs:
        path = Path(raw)
        if raw.startswith(URL_PREFIXES):
            planned: Iterable[WorkItem | tuple[str, DocumentError]] = [
                WorkItem(key=raw, graph_input={"sources": [raw]})
            ]
        elif path.suffix == ".jsonl" and path.is_file():
            planned = _jsonl_items(path)
        elif path.suffix in URL_LIST_SUFFIXES and path.is_file():
            planned = _url_list_items(path)
        else:
            planned = (
                WorkItem(key=source, graph_input={"sources": [source]})
                for source in expand_sources([raw])
            )
        for entry in planned:
            key = entry.key if isinstance(entry, WorkItem) else entry[0]
            if key in seen:
                continue
            seen.add(key)
            if isinstance(entry, WorkItem):
                plan.items.append(entry)
            else:
                plan.errors.append(entry)
    return plan


def plan_work(inputs: Sequence[str]) -> list[WorkItem]:
    """The work items of the inputs (see `plan_inputs`; unusable lines are left out)."""
    return plan_inputs(inputs).items


class OutputFiles:
    """The run's outputs beside the tasks JSONL.

    Append-only: `<stem>.jsonl` (accepted tasks), `.rejected.jsonl`, `.errors.jsonl` and
    `.documents.jsonl` (one line per finished or failed attempt at a work item, with its
    usage). Rewritten: `.run.json` (the run's configuration) and `.failed.jsonl` (the items
    still failed after the last run).
    """

    def __init__(self, tasks_path: Path, *, prepare: bool = True) -> None:
        self.tasks = Path(tasks_path)
        stem = self.tasks.name.removesuffix(".jsonl")
        self.rejected = self.tasks.with_name(f"{stem}.rejected.jsonl")
        self.errors = self.tasks.with_name(f"{stem}.errors.jsonl")
        self.documents = self.tasks.with_name(f"{stem}.documents.jsonl")
        self.failed = self.tasks.with_name(f"{stem}.failed.jsonl")
        self.run_info = self.tasks.with_name(f"{stem}.run.json")
        if prepare:
            self.prepare()

    @property
    def appended(self) -> tuple[Path, ...]:
        """The append-only files, in the order a commit writes them."""
        return (self.tasks, self.rejected, self.errors, self.documents)

    def prepare(self) -> None:
        """Create the folder and the files; cut a line left half-written by a kill."""
        self.tasks.parent.mkdir(parents=True, exist_ok=True)
        for path in self.appended:
            path.touch(exist_ok=True)
            _drop_torn_tail(path)

    def sizes(self) -> dict[str, int]:
        """Byte size of each append-only file, by file name."""
        return {path.name: path.stat().st_size if path.exists() else 0 for path in self.appended}

    def truncate(self, sizes: Mapping[str, int]) -> None:
        """Cut the append-only files back to `sizes` (undo a commit a kill interrupted)."""
        for path in self.appended:
            size = sizes.get(path.name)
            if size is not None and path.exists() and path.stat().st_size > size:
                with path.open("r+b") as handle:
                    handle.truncate(size)
                    handle.flush()
                    os.fsync(handle.fileno())

    def written_task_ids(self) -> set[str]:
        """Ids of the tasks already in the output (a rerun writes none of them again)."""
        return {record["id"] for record in read_jsonl(self.tasks) if "id" in record}

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
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
    data = path.read_bytes()
    path.write_bytes(data[: data.rfind(b"\n") + 1])


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """JSON objects of a JSONL file (none if it does not exist; unreadable lines skipped)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # e.g. a line torn by a kill, cut at the next run's start
                continue
            if isinstance(record, dict):
                yield record


class Ledger:
    """Which work items of a run are done, failed or were started, and the pending commit.

    Statuses: `started` (running or killed: resumes its thread), `interrupted` (the graph
    raised: resumes its thread), `failed` (finished with provider errors: retried in a fresh
    thread), `done`. Thread-safe (SQLite, one connection behind a lock).
    """

    def __init__(self, path: Path, run_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Survives a killed process (not a power cut) without an fsync per update.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS items (run TEXT, key TEXT, status TEXT, attempt INTEGER,"
            " tasks INTEGER, rejected INTEGER, error TEXT, updated REAL, PRIMARY KEY (run, key))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pending_commits (run TEXT PRIMARY KEY, key TEXT,"
            " sizes TEXT)"
        )

    def get(self, key: str) -> tuple[str, int] | None:
        """(status, attempt) of an item, or None if it never started."""
        with self._lock:
            row = self._db.execute(
                "SELECT status, attempt FROM items WHERE run = ? AND key = ?", (self.run_id, key)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def rows(self) -> dict[str, tuple[str, int]]:
        """(status, attempt) of every item of the run, by key."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, status, attempt FROM items WHERE run = ?", (self.run_id,)
            ).fetchall()
        return {key: (status, attempt) for key, status, attempt in rows}

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
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (self.run_id, key, status, attempt, tasks, rejected, error, time.time()),
            )

    def begin_commit(self, key: str, sizes: Mapping[str, int]) -> None:
        """Remember the output sizes before an item's lines are appended."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pending_commits VALUES (?, ?, ?)",
                (self.run_id, key, json.dumps(dict(sizes))),
            )

    def finish_commit(
        self,
        key: str,
        status: str,
        attempt: int,
        *,
        tasks: int = 0,
        rejected: int = 0,
        error: str = "",
    ) -> None:
        """Record the item's status and clear the pending commit, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (self.run_id, key, status, attempt, tasks, rejected, error, time.time()),
                )
                self._db.execute("DELETE FROM pending_commits WHERE run = ?", (self.run_id,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def pending_commit(self) -> tuple[str, dict[str, int]] | None:
        """(key, output sizes) of a commit a kill interrupted, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT key, sizes FROM pending_commits WHERE run = ?", (self.run_id,)
            ).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def clear_pending_commit(self) -> None:
        """Forget the pending commit (after the outputs were cut back)."""
        with self._lock:
            self._db.execute("DELETE FROM pending_commits WHERE run = ?", (self.run_id,))

    def unfinished(self) -> list[dict[str, Any]]:
        """Items not done: `{key, status, attempt, error, updated}`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, status, attempt, error, updated FROM items"
                " WHERE run = ? AND status != 'done' ORDER BY updated",
                (self.run_id,),
            ).fetchall()
        return [
            {"key": key, "status": status, "attempt": attempt, "error": error, "updated": updated}
            for key, status, attempt, error, updated in rows
        ]

    def start_over(self) -> None:
        """Run every item of the run again, each in a fresh thread (its outputs are gone)."""
        with self._lock:
            self._db.execute(
                "UPDATE items SET status = 'failed', error = 'outputs removed: run again'"
                " WHERE run = ?",
                (self.run_id,),
            )
            self._db.execute("DELETE FROM pending_commits WHERE run = ?", (self.run_id,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


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


_SECRET_NAME = re.compile(r"(api_?key|secret|password|credential)", re.I)


def public_config(context: Context) -> dict[str, Any]:
    """The run configuration as a JSON-ready dict, without secrets.

    Fields named like keys or passwords are masked; URLs lose their user info and query.
    """
    values: dict[str, Any] = {}
    for item in dataclasses.fields(context):
        value = getattr(context, item.name)
        if _SECRET_NAME.search(item.name) and value:
            value = "***"
        elif isinstance(value, str) and value.startswith(URL_PREFIXES):
            parts = urlsplit(value)
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            value = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        values[item.name] = value
    return json.loads(json.dumps(values, default=str))


def write_run_info(
    files: OutputFiles,
    context: Context,
    inputs: Sequence[str],
    *,
    dedup_threshold: float | None,
    executor: str,
) -> dict[str, Any]:
    """Write `<stem>.run.json`: package version, configuration, models, inputs, start time.

    A rerun with a different configuration keeps the earlier ones under `earlier_configs`, so
    an output made by several configurations says so.
    """
    from langgraph_taskcraft import __version__
    from langgraph_taskcraft.accounting import models_by_role_of

    config = public_config(context)
    earlier: list[dict[str, Any]] = []
    if files.run_info.exists():
        with contextlib.suppress(ValueError, OSError):
            previous = json.loads(files.run_info.read_text(encoding="utf-8"))
            earlier = list(previous.get("earlier_configs") or [])
            if previous.get("config") not in (None, config):
                earlier.append({"started": previous.get("started"), "config": previous["config"]})
    info = {
        "package": "langgraph-taskcraft",
        "version": __version__,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": list(inputs),
        "config": config,
        "models": models_by_role_of(config),
        "seed": None,  # nothing in the pipeline is drawn at random; sampling is the providers'
        "dedup_threshold": dedup_threshold,
        "executor": executor,
        "earlier_configs": earlier[-20:],
    }
    _write_atomic(files.run_info, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return info


def read_run_info(tasks_path: Path) -> dict[str, Any]:
    """The `<stem>.run.json` beside a tasks file ({} when there is none)."""
    path = OutputFiles(tasks_path, prepare=False).run_info
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_NOT_SENT_FIELDS = ("id", "usage_metadata", "response_metadata")
"""Message fields LangChain serialises into a cache key that are never sent to a provider."""


def canonical_prompt(prompt: str) -> str:
    """A chat prompt's cache key reduced to what the provider receives.

    LangChain keys its cache on the serialised messages, including the usage metadata of AI
    messages in the history, which it rewrites on a cache hit (`total_cost: 0`): without this,
    an agent's second turn never hits the cache on a rerun.
    """
    try:
        messages = json.loads(prompt)
    except ValueError:
        return prompt
    if not isinstance(messages, list):
        return prompt
    for message in messages:
        fields = message.get("kwargs") if isinstance(message, dict) else None
        if isinstance(fields, dict):
            for name in _NOT_SENT_FIELDS:
                fields.pop(name, None)
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


class RequestCache(BaseCache):
    """LangChain's `SQLiteCache` at `path`, keyed by what is sent to the provider.

    Opens the database on first use and pickles as its path, so it can be shipped to worker
    processes (e.g. Ray) and shared through the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(Path(path).resolve())
        self._sqlite: Any = None
        self._opening = threading.Lock()
        # Two identical requests in flight both miss, then both store: one writer at a time.
        self._writing = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (type(self), (self.path,))

    def _cache(self) -> Any:
        with self._opening:
            if self._sqlite is None:
                from langchain_community.cache import SQLiteCache

                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._sqlite = SQLiteCache(database_path=self.path)
        return self._sqlite

    def lookup(self, prompt: str, llm_string: str) -> Any:
        """Cached generations for the prompt and model settings, or None."""
        return self._cache().lookup(canonical_prompt(prompt), llm_string)

    def update(self, prompt: str, llm_string: str, return_val: Any) -> None:
        """Store the generations of a prompt and model settings (never fails the call)."""
        from sqlalchemy.exc import SQLAlchemyError

        cache = self._cache()
        try:
            with self._writing:
                cache.update(canonical_prompt(prompt), llm_string, return_val)
        except SQLAlchemyError as exc:
            # Another process stored the same reply first, or the file is busy: the reply was
            # received all the same, only its copy in the cache is missing.
            logger.warning("LLM cache: reply not stored (%s)", type(exc).__name__)

    def clear(self, **kwargs: Any) -> None:
        """Delete every cached reply."""
        self._cache().clear(**kwargs)


@contextlib.contextmanager
def use_llm_cache(data_dir: str | Path | None) -> Iterator[None]:
    """Cache LLM replies in `<data_dir>/llm_cache.sqlite` (None: no cache) for the block.

    Sets LangChain's global cache and restores the previous one afterwards, so an identical
    rerun costs no LLM call and `--no-cache` really sends every request.
    """
    from langchain_core.globals import get_llm_cache, set_llm_cache

    previous = get_llm_cache()
    if data_dir is None:
        set_llm_cache(None)
    else:
        set_llm_cache(RequestCache(Path(data_dir) / "llm_cache.sqlite"))
    try:
        yield
    finally:
        set_llm_cache(previous)


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
                duplicates.append(_duplicate_rejection(task, match.reason))
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


def _duplicate_rejection(task: Task, reason: str) -> Rejection:
    return Rejection(
        id=task.id,
        stage=DEDUP_STAGE,
        reason="duplicate",
        detail=reason,
        question=task.question,
        answer=task.answer,
        source=task.source,
        document_id=task.document_id,
        identifier=task.identifier,
        verification=task.verification,
        usage=task.usage,
    )


def write_failed(files: OutputFiles, ledger: Ledger, keys: set[str]) -> list[dict[str, Any]]:
    """Rewrite `<stem>.failed.jsonl` with the run's unfinished items (removed when none)."""
    failed = [row for row in ledger.unfinished() if row["key"] in keys]
    for row in failed:
        if row["status"] == "started":
            row["status"] = "interrupted"
            row["error"] = row["error"] or "the run stopped while this item was in progress"
    if failed:
        _write_atomic(files.failed, "".join(json.dumps(row) + "\n" for row in failed))
    elif files.failed.exists():
        files.failed.unlink()
    return failed


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

        async def process(item: WorkItem) -> None:
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
                    result = await executor.run(item, config, on_event)
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

        async with executor:
            await _all_or_cancel(
                [
                    *(planning_error(key, error) for key, error in plan.errors),
                    *(process(item) for item in plan.items),
                ]
            )
    finally:
        keys = {item.key for item in plan.items}
        with contextlib.suppress(Exception):
            await asyncio.to_thread(write_failed, files, ledger, keys)
        ledger.close()
    return summary


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
async def checkpointed_graph(context: Context) -> AsyncIterator[Any]:
    """The `taskcraft` graph compiled with the run's SQLite checkpointer."""
    import aiosqlite
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from langgraph_taskcraft.graphs.taskcraft import builder

    path = Path(context.data_dir) / "checkpoints.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    serde = JsonPlusSerializer(allowed_msgpack_modules=checkpoint_types())
    async with aiosqlite.connect(str(path)) as connection:
        saver = AsyncSqliteSaver(connection, serde=serde)
        yield builder.compile(checkpointer=saver, name="taskcraft")


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
        # An interrupted thread continues from its last checkpoint; a new one starts.
        graph_input = None if snapshot.next else item.graph_input
        if snapshot.values and not snapshot.next:
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
