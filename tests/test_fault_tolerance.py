"""Runs against a faulty OpenAI-compatible endpoint, and a run killed mid-way (`kill -9`).

Everything goes through the real `langchain_openai` client (`openai:mock-model` with `base_url`)
to `tests.mock_openai_server`, scripted with `tests.scenario_mock` (eight documents, twelve
accepted tasks, four rejections). The expected output is always an uninterrupted run's on a
healthy endpoint.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.outputs import OutputFiles, read_jsonl
from langgraph_taskcraft.runner import LocalExecutor, RunSummary, checkpoint_saver, run_batch
from tests import scenario_mock
from tests.mock_openai_server import Fault, FaultPlan, MockOpenAIServer, Rule
from tests.scenario_mock import DOCUMENTS, comparable_records

ITEMS = len(DOCUMENTS)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test")


@pytest.fixture
def documents(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    scenario_mock.write_documents(folder)
    return folder


def endpoint_context(base_url: str, data_dir: Path, **overrides: Any) -> Context:
    """Every role on the mock endpoint; few, fast retries so that faults cost little time."""
    options: dict[str, Any] = {
        "generator_model": "openai:mock-model",
        "agent_model": "openai:mock-model",
        "judge_model": "openai:mock-model",
        "base_url": base_url,
        "data_dir": str(data_dir),
        "max_retries": 3,
        "request_timeout": 0.5,
        **overrides,
    }
    return Context(**options)


def all_outputs(out: Path) -> dict[str, list[str]]:
    files = OutputFiles(out, prepare=False)
    return {
        "tasks": comparable_records(files.tasks),
        "rejected": comparable_records(files.rejected),
        "errors": comparable_records(files.errors),
    }


def assert_no_duplicates(out: Path) -> None:
    files = OutputFiles(out, prepare=False)
    task_ids = collections.Counter(record["id"] for record in read_jsonl(files.tasks))
    rejections = collections.Counter(
        (record["id"], record["stage"], record["reason"]) for record in read_jsonl(files.rejected)
    )
    assert [key for key, count in task_ids.items() if count > 1] == []
    assert [key for key, count in rejections.items() if count > 1] == []


async def reference_run(documents: Path, tmp_path: Path) -> tuple[Path, int]:
    """The output of an uninterrupted run on a healthy endpoint, and the requests it made."""
    out = tmp_path / "reference" / "tasks.jsonl"
    server = MockOpenAIServer(rules=scenario_mock.server_rules(), default=None)
    with server as base_url:
        context = endpoint_context(base_url, tmp_path / "reference-state")
        summary = await run_batch([str(documents)], context, out, concurrency=4)
    assert (summary.done, summary.tasks, summary.rejected) == (ITEMS, 12, 4)
    assert server.stats()["unmatched"] == 0
    return out, server.stats()["chat_requests"]


async def test_a_run_through_a_faulty_endpoint_loses_no_document_and_writes_no_duplicate(
    documents: Path, tmp_path: Path
) -> None:
    reference, _ = await reference_run(documents, tmp_path)
    # One of each transient fault early on, more at random; the client retries all of them
    # (a timeout after `request_timeout`). A malformed 200 reply is not retried by the client:
    # it fails the document it hits.
    plan = FaultPlan(
        schedule={
            1: Fault.RATE_LIMIT,
            2: Fault.UNAVAILABLE,
            3: Fault.SERVER_ERROR,
            4: Fault.DROP_CONNECTION,
            5: Fault.TIMEOUT,
            30: Fault.MALFORMED_JSON,
            60: Fault.MALFORMED_JSON,
        },
        rates={Fault.RATE_LIMIT: 0.03, Fault.SERVER_ERROR: 0.03, Fault.DROP_CONNECTION: 0.02},
        seed=7,
    )
    server = MockOpenAIServer(
        rules=scenario_mock.server_rules(),
        default=None,
        faults=plan,
        timeout_delay_s=3,
        retry_after_s=0.01,
    )
    out = tmp_path / "out" / "tasks.jsonl"
    with server as base_url:
        # With 8 % of requests failing at random, a call fails all of 5 tries once in ~300,000.
        context = endpoint_context(base_url, tmp_path / "state", max_retries=4)
        first = await run_batch([str(documents)], context, out, concurrency=4)
        faults = server.stats()["faults"]
        server.faults = FaultPlan()  # the endpoint recovers
        second = await run_batch([str(documents)], context, out, concurrency=4)
        served = server.stats()["chat_requests"]
        third = await run_batch([str(documents)], context, out, concurrency=4)
        assert server.stats()["chat_requests"] == served  # nothing left to do: no request
    assert set(faults) == {fault.value for fault in Fault}

    # Every document is accounted for: done, or failed with its reason and listed for a rerun.
    assert first.done + first.failed == ITEMS
    assert 1 <= first.failed <= 2
    assert all(
        "JSONDecodeError" in reason or "Unterminated" in reason
        for reason in first.failures.values()
    ), first.failures
    assert (second.done, second.skipped, second.failed) == (first.failed, first.done, 0)
    assert (third.skipped, third.done) == (ITEMS, 0)
    assert not OutputFiles(out, prepare=False).failed.exists()

    assert all_outputs(out) == all_outputs(reference)
    assert_no_duplicates(out)


async def test_a_document_that_keeps_failing_is_listed_and_completed_once_the_fault_stops(
    documents: Path, tmp_path: Path
) -> None:
    reference, _ = await reference_run(documents, tmp_path)
    # The agent's search for one question of the library document always gets a 500 (after the
    # client's retries); its other question is rejected (the model alone knows the answer).
    poison = Rule(r"research agent.*Which printer established the Quillmoor", Fault.SERVER_ERROR)
    server = MockOpenAIServer(
        rules=[poison, *scenario_mock.server_rules()], default=None, retry_after_s=0.01
    )
    out = tmp_path / "out" / "tasks.jsonl"
    files = OutputFiles(out, prepare=False)
    library = str(documents / DOCUMENTS[0].file_name)
    summaries: list[RunSummary] = []
    with server as base_url:
        context = endpoint_context(base_url, tmp_path / "state", max_retries=1)
        for _ in range(2):
            summaries.append(await run_batch([str(documents)], context, out, concurrency=4))
            listed = list(read_jsonl(files.failed))
            assert [(row["key"], row["status"]) for row in listed] == [(library, "failed")]
            assert "Error code: 500" in listed[0]["error"]
        server.rules.remove(poison)
        summaries.append(await run_batch([str(documents)], context, out, concurrency=4))

    first, second, third = summaries
    assert (first.done, first.failed) == (ITEMS - 1, 1)
    assert "Error code: 500" in first.failures[library]
    assert (second.skipped, second.failed) == (ITEMS - 1, 1)  # the rerun retried it
    assert (third.skipped, third.done, third.failed) == (ITEMS - 1, 1, 0)
    assert not files.failed.exists()
    # Only the finished attempt's rejections and tasks were written, once.
    assert all_outputs(out) == all_outputs(reference)
    assert_no_duplicates(out)
    attempts = [
        (d["attempt"], d["status"]) for d in read_jsonl(files.documents) if d["key"] == library
    ]
    assert attempts == [(1, "failed"), (2, "failed"), (3, "done")]


def taskcraft(*arguments: str) -> list[str]:
    """The `taskcraft` command line, run by this interpreter."""
    return [sys.executable, "-m", "langgraph_taskcraft", *arguments]


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


async def test_a_run_killed_mid_way_resumes_to_the_output_of_an_uninterrupted_run(
    documents: Path, tmp_path: Path
) -> None:
    reference, whole_requests = await reference_run(documents, tmp_path)
    # Each reply takes 100 ms, so a run lasts seconds and can be killed in the middle.
    server = MockOpenAIServer(rules=scenario_mock.server_rules(), default=None, latency_ms=100)
    environment = {**os.environ, "OPENAI_API_KEY": "test"}
    out = tmp_path / "out" / "tasks.jsonl"
    with server as base_url:
        generate = taskcraft(
            *scenario_mock.generate_arguments(
                documents,
                base_url,
                out,
                tmp_path / "state",
                "--concurrency",
                "3",
                "--set",
                "max_retries=2",
            )
        )
        run = subprocess.Popen(
            generate, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        # Kill once a first document is written: others are then half-way through.
        while line_count(out) < 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        _, stderr = run.communicate(timeout=10)
        assert run.returncode == -signal.SIGKILL, stderr.decode()
        assert 2 <= line_count(out) < 12  # killed mid-way
        killed_requests = server.stats()["chat_requests"]

        rerun = subprocess.run(generate, env=environment, capture_output=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr.decode()
        rerun_requests = server.stats()["chat_requests"] - killed_requests

    assert all_outputs(out) == all_outputs(reference)
    assert_no_duplicates(out)
    # The rerun did only what the killed run had not: finished documents and answered
    # requests (in the checkpoints and the LLM cache) were not asked for again. Only requests
    # in flight at the kill are sent twice.
    print(f"requests: whole run {whole_requests}, killed {killed_requests}, rerun {rerun_requests}")
    assert killed_requests + rerun_requests < whole_requests + 12
    assert rerun_requests < whole_requests - 10


class LaggingCheckpointer(AsyncSqliteSaver):
    """Saves each task's writes at once, but no checkpoint after the first node's.

    LangGraph writes checkpoints in the background while the next step runs, so a process
    killed there leaves a last checkpoint whose tasks all have saved writes, and no later one.
    This saver leaves that state every time: `first_node_written` is set once the `retrieve`
    node's writes are saved; later checkpoints wait, and fail once `died` is set.
    """

    def __init__(self, conn: Any, first_node_written: asyncio.Event, died: asyncio.Event) -> None:
        super().__init__(conn)
        self.first_node_written = first_node_written
        self.died = died

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        if metadata.get("step", -1) >= 1:
            await self.died.wait()
            raise ConnectionError("the process died before this checkpoint was written")
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: Any, writes: Any, task_id: str, task_path: str = ""
    ) -> None:
        await super().aput_writes(config, writes, task_id, task_path)
        if any(channel == "documents" for channel, _ in writes):
            self.first_node_written.set()


class DyingExecutor(LocalExecutor):
    """The local executor on a `LaggingCheckpointer`."""

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.first_node_written = asyncio.Event()
        self.died = asyncio.Event()

    async def __aenter__(self) -> DyingExecutor:
        from langgraph_taskcraft.graphs.taskcraft import builder

        path = Path(self.context.data_dir) / "checkpoints.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        saver = await self._stack.enter_async_context(
            checkpoint_saver(
                path, lambda conn: LaggingCheckpointer(conn, self.first_node_written, self.died)
            )
        )
        self._graph = builder.compile(checkpointer=saver, name="taskcraft")
        return self


async def test_a_run_killed_before_a_background_checkpoint_is_written_loses_nothing(
    documents: Path, tmp_path: Path
) -> None:
    document = [str(documents / DOCUMENTS[-1].file_name)]
    models = scenario_mock.SCRIPTED_MODELS
    reference = tmp_path / "reference" / "tasks.jsonl"
    await run_batch(document, Context(**models, data_dir=str(tmp_path / "ref-state")), reference)

    context = Context(**models, data_dir=str(tmp_path / "state"))
    out = tmp_path / "out" / "tasks.jsonl"
    executor = DyingExecutor(context)
    killed = asyncio.ensure_future(run_batch(document, context, out, executor=executor))
    written = asyncio.ensure_future(executor.first_node_written.wait())
    await asyncio.wait({killed, written}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    assert written.done(), f"retrieve's writes were not saved; the run: {killed}"
    executor.died.set()  # the kill: nothing after this point is written
    killed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await killed
    # The rerun is in the same process: the cancelled run must have left no SQLite lock behind.
    summary = await run_batch(document, context, out)
    assert (summary.done, summary.tasks) == (1, 2), summary.failures
    assert all_outputs(out) == all_outputs(reference)


async def test_the_checkpointer_closes_after_the_write_in_progress(tmp_path: Path) -> None:
    """What a cancelled run leaves: LangGraph's background checkpoint writes still running.

    Closing under one of them (its INSERT done, its commit not yet) would keep SQLite's write
    lock for the rest of the process.
    """
    import sqlite3

    path = tmp_path / "checkpoints.sqlite"
    inserted = asyncio.Event()

    async def write_in_progress(saver: AsyncSqliteSaver) -> None:
        async with saver.lock:
            await saver.conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            cursor = await saver.conn.execute("INSERT INTO t VALUES (1)")
            inserted.set()
            await asyncio.sleep(0.1)  # the run is cancelled and the checkpointer closed here
            await saver.conn.commit()
            await cursor.close()

    async with checkpoint_saver(path, AsyncSqliteSaver) as saver:
        writing = asyncio.ensure_future(write_in_progress(saver))
        await inserted.wait()
    await writing

    probe = sqlite3.connect(path, timeout=0)
    probe.execute("BEGIN IMMEDIATE")  # raises "database is locked" if a write was cut short
    assert probe.execute("SELECT x FROM t").fetchall() == [(1,)]
    probe.close()
