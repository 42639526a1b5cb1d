"""What a run works on: its inputs expanded to work items, each with a stable key for resume.

Files, folders, globs, URLs, URL lists and JSONL corpora become `WorkItem`s (one document
each); lines that cannot be used become errors at stage `plan`. `count_chunks` loads (a sample
of) the items' documents to size a run for `taskcraft estimate`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.records import DocumentError, Task

URL_PREFIXES = ("http://", "https://")
URL_LIST_SUFFIXES = (".urls", ".list")
"""Files read as lists of URLs (or paths), one a line; `#` starts a comment line."""

PLAN_STAGE = "plan"
"""Stage of the errors found while expanding the inputs (e.g. a bad JSONL line)."""


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


@dataclass
class ChunkCount:
    """Documents loaded to estimate a run, and the chunks the generator would read."""

    items: int = 0
    sampled: int = 0
    documents: int = 0
    chunks: int = 0
    failed: int = 0
    unfetched_urls: int = 0

    @property
    def chunks_per_document(self) -> float:
        """Mean chunks read per loaded document."""
        return self.chunks / self.documents if self.documents else 0.0


def _count_item(item: WorkItem, context: Context, fetch_urls: bool) -> tuple[int, int, int, int]:
    """(documents, chunks used, failed loads, URLs not fetched) of one work item."""
    from langgraph_taskcraft.loaders import (
        LoadSettings,
        expand_sources,
        is_url,
        load_document,
        load_text,
    )
    from langgraph_taskcraft.nodes.atomic import chunk_indices

    settings = LoadSettings.from_context(context)
    documents = chunks = failed = unfetched = 0
    loaded = []
    for source in expand_sources(item.graph_input.get("sources", [])):
        if is_url(source) and not fetch_urls:
            unfetched += 1
            continue
        try:
            loaded.append(load_document(source, settings))
        except Exception:  # an unloadable document costs no LLM call
            failed += 1
    for index, text in enumerate(item.graph_input.get("texts", [])):
        try:
            loaded.append(load_text(text, settings, source=f"text:{index}"))
        except Exception:
            failed += 1
    for document in loaded:
        used = len(chunk_indices(document, context))
        documents += used > 0
        chunks += used
        failed += used == 0
    return documents, chunks, failed, unfetched


def count_chunks(
    items: Sequence[WorkItem], context: Context, *, sample: int, fetch_urls: bool
) -> ChunkCount:
    """Load (a spread-out sample of) the items' documents and count the chunks read."""
    step = max(1, math.ceil(len(items) / sample)) if sample > 0 else 1
    chosen = list(items[::step])
    result = ChunkCount(items=len(items), sampled=len(chosen))
    with ThreadPoolExecutor(max_workers=4) as pool:
        for documents, chunks, failed, unfetched in pool.map(
            lambda item: _count_item(item, context, fetch_urls), chosen
        ):
            result.documents += documents
            result.chunks += chunks
            result.failed += failed
            result.unfetched_urls += unfetched
    return result


# The run-level width merge: groups of accepted tasks across documents.

WIDTH_KEY_PREFIX = "width:"
"""Work-item keys of width groups: the prefix, then the members' task ids joined by `+`."""


@dataclass(frozen=True)
class TaskLine:
    """What grouping needs of an accepted task, and where its line starts in the tasks file."""

    id: str
    kind: str
    document_id: str
    offset: int


def width_group_key(member_ids: Sequence[str]) -> str:
    """The work-item key of a width group (stable: resume finds the group again)."""
    return WIDTH_KEY_PREFIX + "+".join(member_ids)


def _task_lines(tasks_path: Path) -> Iterator[tuple[TaskLine, list[str]]]:
    """Each accepted task's line summary and, for width tasks, its members' ids."""
    if not tasks_path.exists():
        return
    with tasks_path.open("rb") as lines:
        offset = 0
        for line in lines:
            start, offset = offset, offset + len(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                continue
            members = [m["id"] for m in record.get("members") or [] if isinstance(m, dict)]
            kind, document = str(record.get("kind", "")), str(record.get("document_id", ""))
            yield TaskLine(record["id"], kind, document, start), members


def plan_width_groups(
    tasks_path: Path, ledger_rows: Mapping[str, tuple[str, int]], context: Context
) -> list[WorkItem]:
    """The width groups still to merge over the tasks accepted so far, as work items.

    A task is merged at most once: members of width tasks already written, and of groups the
    ledger has as done (even when every attempt was rejected), are left out. A group that failed
    on a provider error is tried again with the same members while they are all free; the free
    tasks left are grouped like a graph run groups its tasks (`width_groups`). Each item's input
    holds the members' offsets in the tasks file, read when the group runs.
    """
    from langgraph_taskcraft.nodes.difficulty import width_groups

    candidates: dict[str, TaskLine] = {}
    used: set[str] = set()
    for line, members in _task_lines(tasks_path):
        used.update(members)
        if line.kind != "width":
            candidates.setdefault(line.id, line)
    unfinished: list[list[str]] = []
    for key, (status, _attempt) in sorted(ledger_rows.items()):
        if key.startswith(WIDTH_KEY_PREFIX):
            ids = key.removeprefix(WIDTH_KEY_PREFIX).split("+")
            if status == "done":
                used.update(ids)
            else:
                unfinished.append(ids)
    groups: list[list[TaskLine]] = []
    for ids in unfinished:
        if all(i in candidates and i not in used for i in ids):
            groups.append([candidates[i] for i in ids])
            used.update(ids)
    free = [line for task_id, line in candidates.items() if task_id not in used]
    groups.extend(width_groups(free, context))
    return [
        WorkItem(
            key=width_group_key([line.id for line in group]),
            graph_input={"task_offsets": [line.offset for line in group]},
        )
        for group in groups
    ]


def read_tasks_at(tasks_path: Path, offsets: Sequence[int]) -> list[Task]:
    """The accepted tasks whose lines start at `offsets` in the tasks file."""
    tasks: list[Task] = []
    with tasks_path.open("rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            tasks.append(Task.model_validate_json(handle.readline()))
    return tasks
