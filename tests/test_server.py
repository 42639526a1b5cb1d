"""`langgraph dev` serves both graphs without API keys; a scripted run works through the SDK."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.scenario_atomic import FIXTURE_TEXT, SCENARIO_CONTEXT

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    executable = shutil.which("langgraph", path=os.path.dirname(sys.executable))
    if executable is None:
        pytest.fail("the `langgraph` CLI is not installed: pip install -e '.[test]'")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGGRAPH_NO_VERSION_CHECK="true",
        LANGSMITH_TRACING="false",
        PYTHONPATH=str(ROOT),  # the scripted models live in tests/
    )
    log = ROOT / ".taskcraft" / f"langgraph-dev-{port}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [
                executable,
                "dev",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-browser",
                "--no-reload",
                "--n-jobs-per-worker",
                "4",
                "--config",
                "langgraph.json",
            ],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    pytest.fail(f"langgraph dev exited:\n{log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"langgraph dev did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


async def test_schemas_expose_context_fields_with_descriptions(server_url: str) -> None:
    from langgraph_sdk import get_client

    client = get_client(url=server_url)
    assistants = {a["graph_id"]: a for a in await client.assistants.search(limit=20)}
    assert {"taskcraft", "verifier", "taskcraft_width"} <= set(assistants)
    for graph_id in ("taskcraft", "verifier"):
        schemas = await client.assistants.get_schemas(assistants[graph_id]["assistant_id"])
        properties = schemas["context_schema"]["properties"]
        for name in (
            "generator_model",
            "agent_model",
            "judge_model",
            "base_url",
            "search_backend",
            "corpus_path",
            "judge_samples",
            "agent_max_steps",
            "llm_only_max_score",
        ):
            assert properties[name].get("description"), (graph_id, name)
    taskcraft_input = (
        await client.assistants.get_schemas(assistants["taskcraft"]["assistant_id"])
    )["input_schema"]["properties"]
    assert {"sources", "texts"} <= set(taskcraft_input)
    assert all(taskcraft_input[name].get("description") for name in ("sources", "texts"))


async def test_scripted_run_through_the_sdk_wait_and_stream(server_url: str) -> None:
    from langgraph_sdk import get_client

    client = get_client(url=server_url)
    thread = await client.threads.create()
    result = await client.runs.wait(
        thread["thread_id"],
        "taskcraft",
        input={"texts": [FIXTURE_TEXT]},
        context=SCENARIO_CONTEXT,
    )
    assert [task["answer"] for task in result["tasks"]] == ["Tamsin Oduya"]
    reasons = sorted(r["reason"] for r in result["rejected"])
    assert reasons == ["agent_failed", "answer_in_question", "answered_without_tools"]
    assert result["tasks"][0]["trajectory"][-1]["role"] == "assistant"

    streamed_thread = await client.threads.create()
    events = []
    async for part in client.runs.stream(
        streamed_thread["thread_id"],
        "taskcraft",
        input={"texts": [FIXTURE_TEXT]},
        context=SCENARIO_CONTEXT,
        stream_mode=["custom", "updates"],
    ):
        events.append(part)
    custom = [e.data for e in events if e.event == "custom"]
    assert {"stage": "verify", "status": "accepted"}.items() <= next(
        e for e in custom if e.get("status") == "accepted"
    ).items()
    updated_nodes = {name for e in events if e.event == "updates" for name in e.data}
    assert {"retrieve", "form_candidates", "verify_candidate", "collect"} <= updated_nodes


async def test_width_graph_merges_tasks_given_as_json(server_url: str, tmp_path: Path) -> None:
    """`taskcraft_width` through the SDK: verified tasks (JSON, as in tasks.jsonl) in."""
    from langgraph_sdk import get_client

    from tests.test_width import task

    client = get_client(url=server_url)
    assistants = {a["graph_id"]: a for a in await client.assistants.search(limit=20)}
    schemas = await client.assistants.get_schemas(assistants["taskcraft_width"]["assistant_id"])
    assert schemas["input_schema"]["properties"]["verified"].get("description")
    members = [task(0).model_dump(mode="json"), task(1).model_dump(mode="json")]
    thread = await client.threads.create()
    result: Any = await client.runs.wait(
        thread["thread_id"],
        "taskcraft_width",
        input={"verified": members},
        context={
            "generator_model": "tests.test_width:width_generator",
            "agent_model": "tests.test_width:width_agent",
            "judge_model": "tests.test_width:width_judge",
            "data_dir": str(tmp_path / "data"),
            "extension_strategy": "width",
            "target_width": 2,
            "structured_output_retries": 0,
        },
    )
    [merged] = result["tasks"]
    assert merged["kind"] == "width"
    assert sorted(merged["answer"].split("; ")) == ["1887", "312"]
    assert {m["id"] for m in merged["members"]} == {m["id"] for m in members}
