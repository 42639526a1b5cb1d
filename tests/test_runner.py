"""Batch runner: planning, the ledger, resume from checkpoints, and no duplicate output lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.globals import set_llm_cache
from langchain_core.messages import BaseMessage

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.outputs import Ledger, OutputFiles
from langgraph_taskcraft.planning import WorkItem, plan_inputs
from langgraph_taskcraft.records import Task, Verification, content_id
from langgraph_taskcraft.runner import ItemResult, checkpoint_types, run_batch, run_item
from tests import scenario_atomic
from tests.fakes import Rule, ScriptedChatModel
from tests.scenario_atomic import FIXTURE_TEXT, SCENARIO_CONTEXT


class SimulatedCrash(BaseException):
    """Stands for the process dying (kill, power cut): nothing catches it on the way out."""


@pytest.fixture(autouse=True)
def no_llm_cache() -> None:
    set_llm_cache(None)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def outputs(out: Path) -> dict[str, Any]:
    """What a run wrote, independent of line order."""
    files = OutputFiles(out, prepare=False)
    return {
        "tasks": sorted((t["id"], t["question"], t["answer"]) for t in lines(files.tasks)),
        "rejected": sorted((r["id"], r["stage"], r["reason"]) for r in lines(files.rejected)),
        "errors": sorted((e["source"], e["error"]) for e in lines(files.errors)),
    }


def assert_no_duplicate_lines(out: Path) -> None:
    files = OutputFiles(out, prepare=False)
    for path in (files.tasks, files.rejected, files.errors):
        text = path.read_text().splitlines()
        assert len(text) == len(set(text)), path


# The taskcraft graph on scripted models.


CRASHES: dict[str, int] = {}
"""Crashes or provider errors still to inject, by name (reset before each test)."""


def fail_first(name: str, error: Callable[[], BaseException], reply: str) -> Callable[..., str]:
    def respond(messages: list[BaseMessage]) -> str:
        if CRASHES.get(name, 0) > 0:
            CRASHES[name] -= 1
            raise error()
        return reply

    return respond


FLAKY_AGENT = ScriptedChatModel(
    rules=[
        # The provider fails (after its own retries) on the catalogue question, once.
        Rule(
            r"You have no tools.*archive catalogue",
            fail_first(
                "provider",
                lambda: RuntimeError("Error code: 429 - rate limit exceeded"),
                "I am not sure, perhaps Galileo",
            ),
        ),
        *scenario_atomic.AGENT.rules,
    ]
)


@pytest.fixture
def documents(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "observatory.md").write_text(FIXTURE_TEXT)
    return folder


def context_for(state: Path, **overrides: Any) -> Context:
    settings = {
        **SCENARIO_CONTEXT,
        "agent_model": "tests.test_runner:FLAKY_AGENT",
        "data_dir": str(state),
        **overrides,
    }
    return Context(**settings)


def extraction_calls() -> int:
    return sum(
        "You collect short, checkable facts" in str(messages[-1].content)
        for messages in scenario_atomic.GENERATOR.calls
    )


def model_calls() -> int:
    return (
        len(scenario_atomic.GENERATOR.calls)
        + len(FLAKY_AGENT.calls)
        + len(scenario_atomic.JUDGE.calls)
    )


@pytest.fixture
def clean_run(documents: Path, tmp_path: Path) -> dict[str, Any]:
    """The outputs of an uninterrupted run, to compare resumed runs with."""
    CRASHES.clear()
    out = tmp_path / "clean" / "tasks.jsonl"
    asyncio.run(run_batch([str(documents)], context_for(tmp_path / "clean-state"), out))
    return outputs(out)


def test_clean_run_writes_the_scenario(clean_run: dict[str, Any]) -> None:
    assert [t[1:] for t in clean_run["tasks"]] == [
        ("Who founded the Zephyrine Observatory?", "Tamsin Oduya")
    ]
    assert sorted(r[1:] for r in clean_run["rejected"]) == [
        ("agent", "agent_failed"),
        ("leak_check", "answer_in_question"),
        ("llm_only", "answered_without_tools"),
    ]


async def test_a_run_killed_mid_graph_resumes_from_its_checkpoint(
    documents: Path, tmp_path: Path, clean_run: dict[str, Any]
) -> None:
    out = tmp_path / "out" / "tasks.jsonl"
    context = context_for(tmp_path / "state")
    extractions = extraction_calls()

    def die_on_first_verification(key: str, event: dict[str, Any]) -> None:
        # The process dies while the graph runs (candidates are being verified).
        if event.get("stage") == "verify" and event.get("status") != "started":
            raise SimulatedCrash("killed")

    with pytest.raises(SimulatedCrash):
        await run_batch([str(documents)], context, out, on_event=die_on_first_verification)
    assert extraction_calls() == extractions + 1
    assert lines(out) == []  # nothing of the item was written
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite", content_id(str(out.resolve())))
    assert list(ledger.rows().values()) == [("started", 1)]
    ledger.close()
    failed = lines(OutputFiles(out, prepare=False).failed)
    assert [row["status"] for row in failed] == ["interrupted"]

    summary = await run_batch([str(documents)], context, out)
    assert (summary.done, summary.failed, summary.tasks) == (1, 0, 1)
    # Retrieval and extraction were checkpointed before the crash: not done again.
    assert extraction_calls() == extractions + 1
    assert outputs(out) == clean_run
    assert_no_duplicate_lines(out)
    assert not OutputFiles(out, prepare=False).failed.exists()


async def test_a_kill_between_the_appends_and_the_ledger_leaves_no_duplicate(
    documents: Path, tmp_path: Path, clean_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out" / "tasks.jsonl"
    context = context_for(tmp_path / "state")
    append = OutputFiles.append

    def append_then_die(self: OutputFiles, path: Path, records: Any) -> None:
        append(self, path, records)
        if path == self.rejected:
            # Half of the next line reaches the disk, then the process dies.
            with self.errors.open("a") as handle:
                handle.write('{"source": "torn')
            raise SimulatedCrash("killed while committing")

    monkeypatch.setattr(OutputFiles, "append", append_then_die)
    with pytest.raises(SimulatedCrash):
        await run_batch([str(documents)], context, out)
    monkeypatch.setattr(OutputFiles, "append", append)
    assert len(lines(out)) == 1 and len(lines(out.with_name("tasks.rejected.jsonl"))) == 3

    calls = model_calls()
    summary = await run_batch([str(documents)], context, out)
    assert model_calls() == calls  # the finished thread is written again from its checkpoint
    assert (summary.done, summary.tasks) == (1, 1)
    assert outputs(out) == clean_run
    assert_no_duplicate_lines(out)
    assert len(lines(OutputFiles(out, prepare=False).documents)) == 1


async def test_a_failed_document_is_retried_and_writes_each_line_once(
    documents: Path, tmp_path: Path, clean_run: dict[str, Any]
) -> None:
    CRASHES["provider"] = 1
    out = tmp_path / "out" / "tasks.jsonl"
    context = context_for(tmp_path / "state")
    first = await run_batch([str(documents)], context, out)
    assert (first.done, first.failed, first.tasks) == (0, 1, 1)
    assert "429" in next(iter(first.failures.values()))
    files = OutputFiles(out, prepare=False)
    # The accepted task is kept; the rejections wait until the document is done.
    assert [t[2] for t in outputs(out)["tasks"]] == ["Tamsin Oduya"]
    assert lines(files.rejected) == []
    assert [row["status"] for row in lines(files.failed)] == ["failed"]

    second = await run_batch([str(documents)], context, out)
    assert (second.done, second.failed, second.tasks) == (1, 0, 0)  # the task was already out
    assert outputs(out) == clean_run
    assert_no_duplicate_lines(out)
    assert not files.failed.exists()
    attempts = [(d["attempt"], d["status"]) for d in lines(files.documents)]
    assert attempts == [(1, "failed"), (2, "done")]

    third = await run_batch([str(documents)], context, out)
    assert (third.skipped, third.done) == (1, 0)


async def test_a_retried_document_reports_its_duplicate_once(
    documents: Path, tmp_path: Path
) -> None:
    (documents / "observatory-mirror.md").write_text(FIXTURE_TEXT + "\n\nMirrored.")
    CRASHES["provider"] = 1  # one of the two documents fails once
    out = tmp_path / "out" / "tasks.jsonl"
    context = context_for(tmp_path / "state")
    first = await run_batch([str(documents)], context, out)
    assert (first.done, first.failed) == (1, 1)
    second = await run_batch([str(documents)], context, out)
    assert (second.done, second.skipped) == (1, 1)
    assert [t[1] for t in outputs(out)["tasks"]] == ["Who founded the Zephyrine Observatory?"]
    stages = Counter(r[1] for r in outputs(out)["rejected"])
    assert stages == {"dedup": 1, "leak_check": 2, "llm_only": 2, "agent": 2}
    assert_no_duplicate_lines(out)


# A tiny graph, to test the ledger's resume logic on its own.


class TinyState(TypedDict, total=False):
    sources: list[str]
    tasks: Annotated[list[dict[str, Any]], operator.add]
    rejected: Annotated[list[dict[str, Any]], operator.add]
    errors: Annotated[list[dict[str, Any]], operator.add]


TINY_CALLS: Counter[str] = Counter()
TINY_FAILURES: set[str] = set()
"""Sources whose `answer` node raises once (a bug, a lost connection to a tool...)."""


def tiny_task(source: str) -> dict[str, Any]:
    return Task(
        id=content_id(source),
        question=f"What is written in {Path(source).name}?",
        answer=Path(source).stem,
        identifier=source,
        source=source,
        document_id=content_id(source),
        verification=Verification(accepted=True),
    ).model_dump(mode="json")


async def load(state: TinyState) -> dict[str, Any]:
    TINY_CALLS["load"] += 1
    return {}


async def answer(state: TinyState) -> dict[str, Any]:
    source = state["sources"][0]
    TINY_CALLS["answer"] += 1
    if source in TINY_FAILURES:
        TINY_FAILURES.discard(source)
        raise RuntimeError("the node hit a bug")
    return {"tasks": [tiny_task(source)]}


class TinyExecutor:
    """Runs items on the tiny graph with a SQLite checkpointer, through `run_item`."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> TinyExecutor:
        import aiosqlite
        from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
        from langgraph.graph import END, START, StateGraph

        path = Path(self.context.data_dir) / "tiny.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await self._stack.enter_async_context(aiosqlite.connect(str(path)))
        saver = AsyncSqliteSaver(
            connection, serde=JsonPlusSerializer(allowed_msgpack_modules=checkpoint_types())
        )
        builder = StateGraph(TinyState)
        builder.add_node(load)
        builder.add_node(answer)
        builder.add_edge(START, "load")
        builder.add_edge("load", "answer")
        builder.add_edge("answer", END)
        self.graph = builder.compile(checkpointer=saver)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def run(self, item: WorkItem, config: dict[str, Any], on_event: Any) -> ItemResult:
        return await run_item(self.graph, item, config, self.context, on_event)


@pytest.fixture
def tiny(tmp_path: Path) -> Callable[[list[str], Path], Any]:
    TINY_CALLS.clear()
    TINY_FAILURES.clear()
    context = Context(data_dir=str(tmp_path / "state"))

    async def run(inputs: list[str], out: Path) -> Any:
        return await run_batch(inputs, context, out, executor=TinyExecutor(context))

    return run


async def test_a_node_that_raises_leaves_the_item_to_resume_in_its_thread(
    tiny: Callable[..., Any], tmp_path: Path
) -> None:
    sources = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    TINY_FAILURES.add(sources[0])
    out = tmp_path / "out" / "tasks.jsonl"
    first = await tiny(sources, out)
    assert (first.done, first.failed) == (1, 1)
    assert "the node hit a bug" in first.failures[sources[0]]
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite", content_id(str(out.resolve())))
    assert ledger.rows() == {sources[0]: ("interrupted", 1), sources[1]: ("done", 1)}
    assert [r["key"] for r in lines(OutputFiles(out, prepare=False).failed)] == [sources[0]]

    second = await tiny(sources, out)
    assert (second.done, second.skipped, second.tasks) == (1, 1, 1)
    # Resumed in the same thread: `load` ran once per item, `answer` once more for the failed.
    assert TINY_CALLS == {"load": 2, "answer": 3}
    assert ledger.rows() == {sources[0]: ("done", 1), sources[1]: ("done", 1)}
    ledger.close()
    assert sorted(t["source"] for t in lines(out)) == sorted(sources)


async def test_removed_outputs_are_written_again(tiny: Callable[..., Any], tmp_path: Path) -> None:
    sources = [str(tmp_path / "a.txt")]
    out = tmp_path / "out" / "tasks.jsonl"
    await tiny(sources, out)
    for path in out.parent.iterdir():
        path.unlink()
    again = await tiny(sources, out)
    assert (again.done, again.skipped, again.tasks) == (1, 0, 1)
    assert [t["source"] for t in lines(out)] == sources


async def test_unusable_input_lines_are_errors_written_once(
    tiny: Callable[..., Any], tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"id": "d1", "title": "One", "text": "First text."})
        + "\n{not json\n"
        + json.dumps({"id": "d2", "title": "No text"})
        + "\n"
    )
    out = tmp_path / "out" / "tasks.jsonl"
    for _ in range(2):
        await tiny([str(corpus)], out)
    errors = lines(out.with_name("tasks.errors.jsonl"))
    assert sorted((e["stage"], e["error"]) for e in errors) == [
        ("plan", "invalid_json"),
        ("plan", "invalid_record"),
    ]


def test_plan_expands_folders_globs_urls_lists_and_corpora(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("A")
    (tmp_path / "docs" / "b.txt").write_text("B")
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\x00")
    urls = tmp_path / "pages.urls"
    urls.write_text("# reading list\nhttps://example.org/a\n\nhttps://example.org/b\n")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "\n".join(
            [
                json.dumps({"id": "1", "title": "T", "text": "Body"}),
                json.dumps({"id": "2", "url": "https://example.org/c"}),
                json.dumps("https://example.org/d"),
                json.dumps({"id": "1", "title": "again", "text": "same id"}),
                "[1, 2]",
            ]
        )
    )
    plan = plan_inputs(
        [
            str(tmp_path / "docs"),
            str(tmp_path / "docs" / "*.md"),  # already listed: kept once
            "https://example.org/e",
            str(urls),
            str(corpus),
        ]
    )
    keys = [item.key for item in plan.items]
    assert keys == [
        str(tmp_path / "docs" / "a.md"),
        str(tmp_path / "docs" / "b.txt"),
        "https://example.org/e",
        "https://example.org/a",
        "https://example.org/b",
        f"{corpus}#1",
        f"{corpus}#2",
        "https://example.org/d",
    ]
    assert plan.items[5].graph_input == {"texts": ["T\n\nBody"]}
    assert plan.items[6].graph_input == {"sources": ["https://example.org/c"]}
    assert [error.error for _, error in plan.errors] == ["invalid_record"]


def test_only_provider_failures_make_a_document_retry() -> None:
    from langgraph_taskcraft.records import DocumentError, Rejection
    from langgraph_taskcraft.runner import _item_failed

    def error(stage: str, code: str) -> DocumentError:
        return DocumentError(source="a.md", stage=stage, error=code, message=f"{code} happened")

    assert _item_failed([error("retrieve", "pdf_empty")], []) == ""
    assert _item_failed([error("form_candidates", "empty_document")], []) == ""
    assert "RateLimitError" in _item_failed([error("form_candidates", "RateLimitError")], [])
    rejection = Rejection(id="c1", stage="verify", reason="llm_error", detail="APITimeoutError")
    assert "APITimeoutError" in _item_failed([], [rejection])
    assert _item_failed([], [rejection.model_copy(update={"reason": "agent_failed"})]) == ""
