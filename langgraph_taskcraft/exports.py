"""Dataset exports of task records: Parquet (Hugging Face), OpenAI chat fine-tuning, ShareGPT, QA.

Every export reads `records.Task` objects (`iter_tasks` streams them from the run's JSONL) and
writes one file plus a `manifest.json` beside it that says how the data was made: package
version, run configuration, model ids, SHA-256 of every prompt file, seed, task counts by kind
and hops, and for each file written its format, record count and SHA-256. Several exports into
one folder share its manifest (each adds its file) as long as they describe the same run and
task set; otherwise the manifest is replaced.

Formats:

- `parquet`: one row per task. Scalar fields are typed columns; nested fields (`verification`,
  `trajectory`, `chain`, `members`, `final_verification`, `failed_attempts`, `usage`) are JSON
  strings, because trajectories mix message shapes (tool calls, tool results, content parts) that
  no single Arrow struct type holds; `json.loads` restores them. Convenience columns
  `agent_answer`, `agent_score`, `llm_only_score`, `agent_steps` repeat the verification's
  figures. Loads with `datasets.load_dataset("parquet", data_files=...)`.
- `openai`: chat fine-tuning JSONL, `{"messages": [...], "tools": [...]}` with the verifier
  agent's tool calls and tool results. Extended tasks carry the composed multi-step trajectory
  (the sub-tasks' trajectories in solving order, then the final answer), built by the pipeline;
  records without one are composed here from their chain.
- `sharegpt`: `{"id", "conversations": [{"from", "value"}], "tools"}` with `from` in
  system/human/gpt/function_call/observation (the LLaMA-Factory convention: one
  `function_call` turn per assistant tool-calling message, its results in one `observation`).
- `qa`: plain JSONL of `{id, question, answer, kind, hops, width, source}`.

The functions do blocking file I/O: call them from async code with `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from langgraph_taskcraft import __version__
from langgraph_taskcraft.records import Task

ExportFormat = Literal["parquet", "openai", "sharegpt", "qa"]

DEFAULT_FILE_NAMES: dict[str, str] = {
    "parquet": "tasks.parquet",
    "openai": "openai_chat.jsonl",
    "sharegpt": "sharegpt.jsonl",
    "qa": "qa.jsonl",
}

MANIFEST_NAME = "manifest.json"

DEFAULT_SYSTEM_PROMPT = (
    "You are a research agent. Answer the user's question by using the tools to search for and "
    "read the sources you need, then give a short, exact final answer."
)
"""System prompt for chat exports of trajectories that carry none of their own."""

AGENT_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search for documents or web pages. Returns the best matches, one per "
            "line, each with an id or URL, a title and a snippet.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {
                        "type": "string",
                        "description": "Specific keywords (names, titles, dates) or a short "
                        "question.",
                    }
                },
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "open_page",
            "description": "Open a document or web page and read its text, one page at a time.",
            "parameters": {
                "type": "object",
                "properties": {
                    "target": {
                        "type": "string",
                        "description": "A result id from `search`, or a URL.",
                    },
                    "page": {
                        "type": "integer",
                        "description": "Page to read, starting at 1.",
                        "default": 1,
                    },
                },
                "required": ["target"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "read_pdf",
            "description": "Read the text of one page of a PDF document.",
            "parameters": {
                "type": "object",
                "properties": {
                    "source": {"type": "string", "description": "File path or URL of the PDF."},
                    "page": {
                        "type": "integer",
                        "description": "Page number, starting at 1.",
                        "default": 1,
                    },
                },
                "required": ["source"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "inspect_image",
            "description": "Look at an image and answer a question about what it shows.",
            "parameters": {
                "type": "object",
                "properties": {
                    "source": {"type": "string", "description": "File path or URL of the image."},
                    "question": {
                        "type": "string",
                        "description": "What to find out from the image.",
                    },
                },
                "required": ["source", "question"],
            },
        },
    },
]
"""Generic JSON schemas of the verifier agent's tools (OpenAI `tools` format)."""


# Reading task records.


@dataclass(frozen=True)
class LineError:
    """A line of a task file that is not a valid task record."""

    path: str
    line: int
    message: str


def iter_tasks(
    paths: str | Path | Iterable[str | Path], errors: list[LineError] | None = None
) -> Iterator[Task]:
    """Stream the tasks of JSONL files; bad lines are skipped and appended to `errors`."""
    if isinstance(paths, str | Path):
        paths = [paths]
    for path in map(Path, paths):
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    yield Task.model_validate_json(line)
                except ValidationError as exc:
                    if errors is not None:
                        first = exc.errors()[0]
                        where = ".".join(str(part) for part in first.get("loc", ()))
                        message = f"{first.get('msg', exc)}" + (f" at {where}" if where else "")
                        errors.append(LineError(str(path), number, message))


def load_tasks(paths: str | Path | Iterable[str | Path]) -> tuple[list[Task], list[LineError]]:
    """All tasks of JSONL files and the lines that could not be read as tasks."""
    errors: list[LineError] = []
    return list(iter_tasks(paths, errors)), errors


# Provenance.


@dataclass
class RunInfo:
    """What the manifest records about the run that made the tasks.

    `config`: the run configuration (a `Context` or a mapping). `models`: role → model spec
    (None: taken from the config's `*_model` fields). `seed`: the run's seed, if any.
    """

    config: Any = None
    models: Mapping[str, str] | None = None
    seed: int | None = None


def prompt_hashes() -> dict[str, str]:
    """SHA-256 of every packaged prompt file, `{"atomic_extract.md": "ab12..."}`."""
    folder = resources.files("langgraph_taskcraft.prompts")
    return {
        entry.name: hashlib.sha256(entry.read_bytes()).hexdigest()
        for entry in sorted(folder.iterdir(), key=lambda item: item.name)
        if entry.name.endswith(".md") and entry.is_file()
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if is_dataclass(config) and not isinstance(config, type):
        return _jsonable({f.name: getattr(config, f.name) for f in fields(config)})
    if isinstance(config, Mapping):
        return _jsonable(dict(config))
    raise TypeError(f"config: expected a Context or a mapping, got {type(config).__name__}")


class TaskCounts:
    """Tasks by kind and by hops, counted while an export streams them."""

    def __init__(self) -> None:
        self.total = 0
        self.by_kind: Counter[str] = Counter()
        self.by_hops: Counter[str] = Counter()

    def add(self, task: Task) -> None:
        """Count one task."""
        self.total += 1
        self.by_kind[task.kind] += 1
        self.by_hops[str(task.hops)] += 1

    def as_dict(self) -> dict[str, Any]:
        """`{"tasks": n, "by_kind": {...}, "by_hops": {...}}` with sorted keys."""
        return {
            "tasks": self.total,
            "by_kind": dict(sorted(self.by_kind.items())),
            "by_hops": dict(sorted(self.by_hops.items(), key=lambda item: int(item[0]))),
        }


def build_manifest(run: RunInfo | None, counts: TaskCounts) -> dict[str, Any]:
    """The manifest of an export (without its `files` entry)."""
    from langgraph_taskcraft.accounting import models_by_role_of

    run = run or RunInfo()
    config = _config_dict(run.config)
    models = dict(run.models) if run.models is not None else models_by_role_of(config)
    return {
        "package": "langgraph-taskcraft",
        "version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config,
        "models": models,
        "prompts": prompt_hashes(),
        "seed": run.seed,
        "counts": counts.as_dict(),
    }


_IDENTITY_KEYS = ("package", "version", "config", "models", "prompts", "seed", "counts")
_manifest_lock = threading.Lock()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(export_path: Path, manifest: dict[str, Any], file_entry: dict[str, Any]) -> Path:
    """Write (or extend) `manifest.json` beside `export_path`; returns its path.

    An existing manifest of the same run and task set keeps its other files' entries; one of a
    different run is replaced.
    """
    manifest_path = export_path.parent / MANIFEST_NAME
    with _manifest_lock:
        files: dict[str, Any] = {}
        if manifest_path.exists():
            try:
                existing = json.loads(manifest_path.read_text(encoding="utf-8"))
            except ValueError:
                existing = {}
            same_run = isinstance(existing, dict) and all(
                existing.get(key) == manifest.get(key) for key in _IDENTITY_KEYS
            )
            if same_run:
                files = dict(existing.get("files") or {})
        files[export_path.name] = file_entry
        _write_atomic(
            manifest_path,
            (
                json.dumps({**manifest, "files": files}, indent=2, ensure_ascii=False) + "\n"
            ).encode(),
        )
    return manifest_path


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@dataclass
class Skipped:
    """A task that an export left out, and why (e.g. `no_trajectory`)."""

    task_id: str
    reason: str


@dataclass
class ExportResult:
    """What an export wrote."""

    format: str
    path: Path
    records: int
    manifest_path: Path
    skipped: list[Skipped] = field(default_factory=list)


def _finish(
    fmt: str,
    path: Path,
    records: int,
    counts: TaskCounts,
    skipped: list[Skipped],
    run: RunInfo | None,
) -> ExportResult:
    reasons = Counter(item.reason for item in skipped)
    entry = {
        "format": fmt,
        "records": records,
        "skipped": dict(sorted(reasons.items())),
        "sha256": _sha256_file(path),
        "bytes": path.stat().st_size,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    manifest_path = write_manifest(path, build_manifest(run, counts), entry)
    return ExportResult(fmt, path, records, manifest_path, skipped)


# Parquet.


def _arrow_scalar(annotation: Any) -> Any:
    """The Arrow type of a scalar field annotation, or None for nested ones (stored as JSON)."""
    import pyarrow as pa

    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _arrow_scalar(options[0]) if len(options) == 1 else None
    if origin is Literal:
        values = get_args(annotation)
        return pa.string() if all(isinstance(v, str) for v in values) else None
    simple = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    return simple.get(annotation)


def parquet_columns() -> list[tuple[str, Any, Callable[[Task, dict[str, Any]], Any]]]:
    """`(name, arrow type, value getter)` of every Parquet column, in order.

    Derived from the `Task` fields, so a field added to the record gets a column: scalar fields
    typed, nested ones as JSON strings.
    """
    import pyarrow as pa

    def scalar(name: str) -> Callable[[Task, dict[str, Any]], Any]:
        return lambda task, dumped: dumped[name]

    def as_json(name: str) -> Callable[[Task, dict[str, Any]], Any]:
        def getter(task: Task, dumped: dict[str, Any]) -> Any:
            value = dumped[name]
            return None if value is None else json.dumps(value, ensure_ascii=False)

        return getter

    columns: list[tuple[str, Any, Callable[[Task, dict[str, Any]], Any]]] = []
    for name, info in Task.model_fields.items():
        arrow_type = _arrow_scalar(info.annotation)
        if arrow_type is None:
            columns.append((name, pa.string(), as_json(name)))
        else:
            columns.append((name, arrow_type, scalar(name)))
    columns += [
        ("agent_answer", pa.string(), lambda task, _: task.verification.agent_answer),
        ("agent_score", pa.float64(), lambda task, _: task.verification.agent_score),
        ("llm_only_score", pa.float64(), lambda task, _: task.verification.llm_only_score),
        ("agent_steps", pa.int64(), lambda task, _: task.verification.agent_steps),
    ]
    return columns


def json_columns() -> list[str]:
    """Names of the Parquet columns that hold JSON strings."""
    return [
        name for name, info in Task.model_fields.items() if _arrow_scalar(info.annotation) is None
    ]


def export_parquet(
    tasks: Iterable[Task],
    path: str | Path,
    *,
    run: RunInfo | None = None,
    row_group_size: int = 1000,
) -> ExportResult:
    """Write tasks as a Parquet file that `datasets.load_dataset("parquet", ...)` loads.

    Streams: at most `row_group_size` tasks are held as rows at a time. Needs `pyarrow`.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the Parquet export needs pyarrow: pip install pyarrow") from exc

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = parquet_columns()
    metadata = {
        "langgraph_taskcraft": json.dumps({"version": __version__, "json_columns": json_columns()})
    }
    schema = pa.schema([pa.field(name, arrow_type) for name, arrow_type, _ in columns], metadata)
    counts = TaskCounts()
    temporary = path.with_name(f".{path.name}.tmp")
    records = 0
    with pq.ParquetWriter(temporary, schema) as writer:
        batch: list[Task] = []

        def flush() -> None:
            dumped = [task.model_dump(mode="json") for task in batch]
            arrays = [
                pa.array([get(task, row) for task, row in zip(batch, dumped, strict=True)], type=t)
                for _, t, get in columns
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            batch.clear()

        for task in tasks:
            counts.add(task)
            batch.append(task)
            records += 1
            if len(batch) >= row_group_size:
                flush()
        if batch or records == 0:
            flush()
    os.replace(temporary, path)
    return _finish("parquet", path, records, counts, [], run)


# Chat formats.


class NotExportable(Exception):
    """A task that a chat export cannot use; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        ).strip()
    return str(content)


def source_trajectory(task: Task, *, use_final_verification: bool = False) -> list[dict[str, Any]]:
    """The trajectory a chat export starts from.

    The final extended question's own run when asked for and present; else the task's
    trajectory (composed over the chain by the pipeline for extended tasks); else one composed
    here from the chain (or the width members' chains); else, for an atomic task, the
    verification's trajectory.
    """
    final = task.final_verification
    if use_final_verification and final is not None and final.trajectory:
        return final.trajectory
    if task.trajectory:
        return task.trajectory
    from langgraph_taskcraft.nodes.depth import compose_trajectory, solving_chain

    chain = list(task.chain) or [step for m in task.members for step in solving_chain(m)]
    if any(step.trajectory for step in chain):
        return compose_trajectory(task.question, task.answer, chain)
    if task.kind == "atomic":
        return task.verification.trajectory
    return []


def chat_messages(
    task: Task,
    *,
    system_prompt: str | None = None,
    use_final_verification: bool = False,
    final_answer: Literal["trajectory", "golden"] = "trajectory",
) -> list[dict[str, Any]]:
    """The task as clean OpenAI chat messages: system, user, tool calls and results, answer.

    `system_prompt`: replaces the trajectory's system message (None keeps it, or uses
    `DEFAULT_SYSTEM_PROMPT` when there is none). `final_answer="golden"` makes the last
    message the task's golden answer instead of the agent's own words. Tool call ids are
    renumbered (`call_1`, `call_2`, ...) so that composed trajectories cannot repeat one.

    Raises:
        NotExportable: with a reason (`no_trajectory`, `unanswered_tool_call`,
            `orphan_tool_result`, `no_final_answer`) when the trajectory is unusable.
    """
    from langchain_core.messages import convert_to_openai_messages

    trajectory = source_trajectory(task, use_final_verification=use_final_verification)
    if not trajectory:
        raise NotExportable("no_trajectory")
    raw = convert_to_openai_messages(trajectory)
    messages = raw if isinstance(raw, list) else [raw]
    system = system_prompt
    if system is None:
        system = next((_text(m.get("content")) for m in messages if m["role"] == "system"), None)
    result: list[dict[str, Any]] = [{"role": "system", "content": system or DEFAULT_SYSTEM_PROMPT}]
    body = [m for m in messages if m["role"] != "system"]
    if not body or body[0]["role"] != "user":
        body.insert(0, {"role": "user", "content": task.question})
    renamed: dict[str, str] = {}  # the trajectory's id -> its latest renumbered call
    pending: set[str] = set()
    calls_seen = 0
    for message in body:
        role = message["role"]
        if role == "assistant":
            if pending:
                raise NotExportable("unanswered_tool_call")
            clean: dict[str, Any] = {"role": "assistant"}
            text = _text(message.get("content"))
            calls = []
            for call in message.get("tool_calls") or []:
                calls_seen += 1
                new_id = f"call_{calls_seen}"
                renamed[str(call.get("id"))] = new_id
                pending.add(new_id)
                function = call.get("function") or {}
                arguments = function.get("arguments")
                if not isinstance(arguments, str):
                    arguments = json.dumps(arguments or {}, ensure_ascii=False)
                calls.append(
                    {
                        "id": new_id,
                        "type": "function",
                        "function": {"name": function.get("name", ""), "arguments": arguments},
                    }
                )
            if text or not calls:
                clean["content"] = text
            if calls:
                clean["tool_calls"] = calls
            result.append(clean)
        elif role == "tool":
            call_id = renamed.get(str(message.get("tool_call_id")))
            if call_id not in pending:
                raise NotExportable("orphan_tool_result")
            pending.discard(call_id)
            result.append(
                {"role": "tool", "tool_call_id": call_id, "content": _text(message.get("content"))}
            )
        else:
            result.append({"role": role, "content": _text(message.get("content"))})
    last = result[-1]
    if pending or last["role"] != "assistant" or last.get("tool_calls"):
        raise NotExportable("no_final_answer")
    if final_answer == "golden":
        last["content"] = task.answer
    return result


def _infer_tool(name: str, examples: list[dict[str, Any]]) -> dict[str, Any]:
    """A permissive schema for a tool that is not described: its arguments as seen in use."""
    kinds = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array"}
    properties: dict[str, Any] = {}
    for arguments in examples:
        for key, value in arguments.items():
            properties.setdefault(key, {"type": kinds.get(type(value), "object")})
    required = sorted(set.intersection(*(set(a) for a in examples))) if examples else []
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The `{name}` tool.",
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


def tool_schemas(tools: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """OpenAI `tools` entries: `AGENT_TOOLS`, or the given dicts / LangChain tools."""
    if tools is None:
        return [json.loads(json.dumps(tool)) for tool in AGENT_TOOLS]
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return [convert_to_openai_tool(tool) for tool in tools]


class _ToolCatalogue:
    """The tools listed on each line: the given ones plus any undescribed tool the data uses."""

    def __init__(self, tools: Sequence[Any] | None) -> None:
        self.known = tool_schemas(tools)
        self.names = {tool["function"]["name"] for tool in self.known}

    def for_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        used: dict[str, list[dict[str, Any]]] = {}
        for message in messages:
            for call in message.get("tool_calls") or []:
                name = call["function"]["name"]
                if name in self.names:
                    continue
                try:
                    arguments = json.loads(call["function"]["arguments"] or "{}")
                except ValueError:
                    arguments = {}
                used.setdefault(name, []).append(arguments if isinstance(arguments, dict) else {})
        return self.known + [_infer_tool(name, examples) for name, examples in used.items()]


def to_sharegpt(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """ShareGPT turns of clean chat messages (see `chat_messages`).

    An assistant message with tool calls becomes one `function_call` turn (a JSON object, or a
    list for parallel calls; its accompanying text is dropped, the format has no place for it),
    the tool results after it one `observation` turn (a JSON list when there are several).
    """
    turns: list[dict[str, str]] = []
    results: list[str] = []

    def flush_results() -> None:
        if results:
            value = results[0] if len(results) == 1 else json.dumps(results, ensure_ascii=False)
            turns.append({"from": "observation", "value": value})
            results.clear()

    names = {"system": "system", "user": "human", "assistant": "gpt"}
    for message in messages:
        role = message["role"]
        if role == "tool":
            results.append(message["content"])
            continue
        flush_results()
        calls = message.get("tool_calls") or []
        if role == "assistant" and calls:
            parsed = [
                {
                    "name": call["function"]["name"],
                    "arguments": json.loads(call["function"]["arguments"] or "{}"),
                }
                for call in calls
            ]
            value = parsed[0] if len(parsed) == 1 else parsed
            turns.append({"from": "function_call", "value": json.dumps(value, ensure_ascii=False)})
        else:
            turns.append({"from": names.get(role, role), "value": message.get("content") or ""})
    flush_results()
    return turns


def _export_jsonl(
    fmt: str,
    tasks: Iterable[Task],
    path: str | Path,
    run: RunInfo | None,
    make_record: Callable[[Task], dict[str, Any]],
) -> ExportResult:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = TaskCounts()
    skipped: list[Skipped] = []
    records = 0
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as out:
        for task in tasks:
            counts.add(task)
            try:
                record = make_record(task)
            except NotExportable as skip:
                skipped.append(Skipped(task.id, skip.reason))
                continue
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            records += 1
    os.replace(temporary, path)
    return _finish(fmt, path, records, counts, skipped, run)


def _export_chat(
    fmt: str,
    tasks: Iterable[Task],
    path: str | Path,
    run: RunInfo | None,
    tools: Sequence[Any] | None,
    make_record: Callable[[Task, list[dict[str, Any]], list[dict[str, Any]]], dict[str, Any]],
    *,
    system_prompt: str | None,
    use_final_verification: bool,
    final_answer: Literal["trajectory", "golden"],
) -> ExportResult:
    """A chat JSONL: `make_record(task, messages, tool schemas)` of each task's `chat_messages`."""
    catalogue = _ToolCatalogue(tools)

    def record(task: Task) -> dict[str, Any]:
        messages = chat_messages(
            task,
            system_prompt=system_prompt,
            use_final_verification=use_final_verification,
            final_answer=final_answer,
        )
        return make_record(task, messages, catalogue.for_messages(messages))

    return _export_jsonl(fmt, tasks, path, run, record)


def export_openai_chat(
    tasks: Iterable[Task],
    path: str | Path,
    *,
    run: RunInfo | None = None,
    tools: Sequence[Any] | None = None,
    system_prompt: str | None = None,
    use_final_verification: bool = False,
    final_answer: Literal["trajectory", "golden"] = "trajectory",
) -> ExportResult:
    """Write OpenAI chat fine-tuning JSONL: `{"messages": [...], "tools": [...]}` per task.

    `tools`: tool schemas to list (dicts or LangChain tools; None: `AGENT_TOOLS`); a tool the
    data calls that is not listed gets a schema inferred from its calls. Tasks without a usable
    trajectory are skipped (see `chat_messages`) and listed in the result and the manifest.
    """
    return _export_chat(
        "openai",
        tasks,
        path,
        run,
        tools,
        lambda task, messages, schemas: {"messages": messages, "tools": schemas},
        system_prompt=system_prompt,
        use_final_verification=use_final_verification,
        final_answer=final_answer,
    )


def export_sharegpt(
    tasks: Iterable[Task],
    path: str | Path,
    *,
    run: RunInfo | None = None,
    tools: Sequence[Any] | None = None,
    system_prompt: str | None = None,
    use_final_verification: bool = False,
    final_answer: Literal["trajectory", "golden"] = "trajectory",
) -> ExportResult:
    """Write ShareGPT JSONL: `{"id", "conversations", "tools"}` (`tools` as a JSON string).

    Same trajectories and options as `export_openai_chat`.
    """
    return _export_chat(
        "sharegpt",
        tasks,
        path,
        run,
        tools,
        lambda task, messages, schemas: {
            "id": task.id,
            "conversations": to_sharegpt(messages),
            "tools": json.dumps(schemas, ensure_ascii=False),
        },
        system_prompt=system_prompt,
        use_final_verification=use_final_verification,
        final_answer=final_answer,
    )


def export_qa(
    tasks: Iterable[Task], path: str | Path, *, run: RunInfo | None = None
) -> ExportResult:
    """Write plain QA JSONL: `{id, question, answer, kind, hops, width, source}` per task."""

    def record(task: Task) -> dict[str, Any]:
        return {
            "id": task.id,
            "question": task.question,
            "answer": task.answer,
            "kind": task.kind,
            "hops": task.hops,
            "width": task.width,
            "source": task.source,
        }

    return _export_jsonl("qa", tasks, path, run, record)


EXPORTERS: dict[str, Callable[..., ExportResult]] = {
    "parquet": export_parquet,
    "openai": export_openai_chat,
    "sharegpt": export_sharegpt,
    "qa": export_qa,
}


def export_all(
    tasks: Iterable[Task],
    folder: str | Path,
    formats: Sequence[str] = ("parquet", "openai", "sharegpt", "qa"),
    *,
    run: RunInfo | None = None,
    **chat_options: Any,
) -> dict[str, ExportResult]:
    """Export the same tasks in several formats into `folder` (`DEFAULT_FILE_NAMES`).

    They share one `manifest.json`. `chat_options` go to the chat exports (`tools`,
    `system_prompt`, `use_final_verification`, `final_answer`).
    """
    unknown = [fmt for fmt in formats if fmt not in EXPORTERS]
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; known: {sorted(EXPORTERS)}")
    task_list = list(tasks)
    folder = Path(folder)
    results: dict[str, ExportResult] = {}
    for fmt in formats:
        options = chat_options if fmt in ("openai", "sharegpt") else {}
        target = folder / DEFAULT_FILE_NAMES[fmt]
        results[fmt] = EXPORTERS[fmt](task_list, target, run=run, **options)
    return results
