"""`RayExecutor` on a local Ray (2 CPUs, started once for this module): same output as a local run,
free reruns, a crashed worker's items completed, real HTTP clients inside the workers."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from typer.testing import CliRunner

from langgraph_taskcraft.cli import app
from langgraph_taskcraft.context import Context
from langgraph_taskcraft.ray_executor import RayExecutor, worker_context
from langgraph_taskcraft.runner import ItemResult, RunSummary, run_batch
from tests import scenario_mock
from tests.mock_openai_server import MockOpenAIServer
from tests.scenario_mock import SCRIPTED_MODELS, comparable_records

CRASH_FLAG = "TESTS_RAY_CRASH_FLAG"


# The judge of the scenario, except that grading one answer kills the worker process once.
CRASHING_JUDGE = scenario_mock.crash_once(
    scenario_mock.JUDGE, r"grading an answer.*Candidate answer: Sallow Creek", CRASH_FLAG
)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray for the whole module (starting one takes seconds).

    Its workers inherit the environment it starts with: the key of the mock endpoint.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", "test")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield
        ray.shutdown()


@pytest.fixture
def documents(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    scenario_mock.write_documents(folder)
    (folder / "broken.pdf").write_bytes(b"\x00\x01 not a pdf at all" * 10)
    return folder


def outputs(out: Path) -> dict[str, list[str]]:
    names = {"tasks": out, "rejected": out.with_name("tasks.rejected.jsonl")}
    names["errors"] = out.with_name("tasks.errors.jsonl")
    return {kind: comparable_records(path) for kind, path in names.items()}


def calls(summary: RunSummary) -> int:
    return sum(usage.calls for usage in summary.usage.values())


def scripted_calls() -> int:
    models = (scenario_mock.GENERATOR, scenario_mock.AGENT, scenario_mock.JUDGE)
    return sum(len(model.calls) for model in models)


async def test_ray_run_matches_the_local_run_and_a_rerun_skips_everything(
    documents: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_context = Context(**SCRIPTED_MODELS, data_dir=str(tmp_path / "local-state"))
    local = await run_batch([str(documents)], local_context, tmp_path / "local" / "tasks.jsonl")

    context = Context(**SCRIPTED_MODELS, data_dir=str(tmp_path / "ray-state"))
    out = tmp_path / "ray" / "tasks.jsonl"
    events: list[tuple[str, dict[str, Any]]] = []
    in_driver = scripted_calls()
    summary = await run_batch(
        [str(documents)],
        context,
        out,
        concurrency=4,
        executor=RayExecutor(context),
        on_event=lambda key, event: events.append((key, event)),
    )

    assert scripted_calls() == in_driver  # every model call ran in a Ray worker
    assert (summary.items, summary.done, summary.failed) == (9, 9, 0), summary.failures
    assert (summary.tasks, summary.rejected) == (local.tasks, local.rejected) == (12, 4)
    assert summary.usage == local.usage and calls(summary) > 0
    assert outputs(out) == outputs(tmp_path / "local" / "tasks.jsonl")
    tasks = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(t["question"] for t in tasks) == scenario_mock.expected_questions()
    errors = [
        json.loads(line) for line in out.with_name("tasks.errors.jsonl").read_text().splitlines()
    ]
    assert [(Path(e["source"]).name, e["error"]) for e in errors] == [
        ("broken.pdf", "pdf_malformed")
    ]
    # Progress events stream back from the workers while items run.
    accepted = [e for _, e in events if e.get("stage") == "verify" and e["status"] == "accepted"]
    assert sorted(e["question"] for e in accepted) == scenario_mock.expected_questions()

    before = {path: path.read_bytes() for path in out.parent.glob("*.jsonl")}
    results: list[ItemResult] = []

    async def no_workers_needed(*args: Any) -> None:
        raise AssertionError("a rerun with nothing to do started Ray workers")

    monkeypatch.setattr(RayExecutor, "_start_workers", no_workers_needed)
    again = await run_batch(
        [str(documents)], context, out, executor=RayExecutor(context), on_result=results.append
    )
    assert (again.skipped, again.done, again.failed) == (9, 0, 0)
    assert again.usage == {} and {r.status for r in results} == {"skipped"}
    assert {path: path.read_bytes() for path in out.parent.glob("*.jsonl")} == before


async def test_items_of_a_crashed_worker_are_retried_and_complete(
    documents: Path, tmp_path: Path
) -> None:
    flag = tmp_path / "crashed"
    context = Context(
        **{**SCRIPTED_MODELS, "judge_model": "tests.test_ray:CRASHING_JUDGE"},
        data_dir=str(tmp_path / "state"),
    )
    out = tmp_path / "out" / "tasks.jsonl"
    executor = RayExecutor(context, runtime_env={"env_vars": {CRASH_FLAG: str(flag)}})
    results: list[ItemResult] = []
    summary = await run_batch(
        [str(documents)], context, out, executor=executor, on_result=results.append
    )
    reference_context = Context(**SCRIPTED_MODELS, data_dir=str(tmp_path / "reference-state"))
    reference = tmp_path / "reference" / "tasks.jsonl"
    await run_batch([str(documents)], reference_context, reference)

    assert flag.exists()  # a worker really died mid-item
    # Ray restarted the worker and retried its items, which resumed from their checkpoints.
    assert (summary.done, summary.failed) == (9, 0), [r.message for r in results]
    assert outputs(out) == outputs(reference)


def test_cli_ray_executor_through_an_endpoint_shares_the_llm_cache_with_workers(
    documents: Path, tmp_path: Path
) -> None:
    server = MockOpenAIServer(rules=scenario_mock.server_rules(), default=None)
    out = tmp_path / "out" / "tasks.jsonl"

    def generate() -> dict[str, Any]:
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 0, result.output
        return json.loads(result.output.strip().splitlines()[-1])  # the `--json` summary

    with server as base_url:
        arguments = scenario_mock.generate_arguments(
            documents, base_url, out, tmp_path / "state", "--executor", "ray", "--json"
        )
        first = generate()
        served = server.stats()["chat_requests"]
        first_tasks = comparable_records(out)

        again = generate()
        assert (again["skipped"], again["done"]) == (9, 0)
        assert server.stats()["chat_requests"] == served

        # Without the outputs every document runs again in the workers, all of it from the LLM
        # cache that the workers of the first run filled together (one SQLite file): even an
        # agent's later turns, whose history holds replies read from the cache.
        shutil.rmtree(out.parent)
        fresh = generate()
        resent = server.stats()["chat_requests"] - served

    assert (first["done"], first["tasks"]) == (9, 12)
    assert served == 92 and server.stats()["unmatched"] == 0
    assert (fresh["done"], fresh["tasks"]) == (9, 12)
    cached = sum(usage["cached_calls"] for usage in fresh["usage"].values())
    assert (resent, cached) == (0, served)
    tasks = [json.loads(line) for line in first_tasks]
    assert sorted(t["question"] for t in tasks) == scenario_mock.expected_questions()
    assert comparable_records(out) == first_tasks


async def test_a_missing_ray_is_reported_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'ray"):
        async with RayExecutor(Context(**SCRIPTED_MODELS)):
            pass


def test_worker_context_splits_the_run_budgets_and_resolves_paths() -> None:
    context = Context(
        **SCRIPTED_MODELS,
        data_dir="relative-state",
        corpus_path="corpus",
        requests_per_minute=600,
        tokens_per_minute=90_000,
        max_llm_calls=18,
    )
    split = worker_context(context, 4)
    assert split.data_dir == str(Path("relative-state").resolve())
    assert split.corpus_path == str(Path("corpus").resolve())
    assert (split.requests_per_minute, split.tokens_per_minute) == (150, 22_500)
    assert split.max_llm_calls == 4
    unlimited = worker_context(Context(**SCRIPTED_MODELS), 4)
    assert (unlimited.requests_per_minute, unlimited.max_llm_calls) == (0, 0)
    assert worker_context(Context(**SCRIPTED_MODELS, max_llm_calls=2), 4).max_llm_calls == 1


async def test_width_merges_across_documents_run_in_the_driver_after_the_ray_workers(
    tmp_path: Path,
) -> None:
    """Documents run on the workers; the run-level width merge of their tasks in the driver."""
    from tests.test_width import FACTS
    from tests.test_width_batch import corpus

    context = Context(
        generator_model="tests.test_width:width_generator",
        agent_model="tests.test_width:width_agent",
        judge_model="tests.test_width:width_judge",
        search_backend="local",
        data_dir=str(tmp_path / "state"),
        extension_strategy="width",
        target_width=2,
        structured_output_retries=0,
    )
    out = tmp_path / "out" / "tasks.jsonl"
    inputs = [str(corpus(tmp_path / "facts.jsonl", FACTS))]
    events: list[tuple[str, dict[str, Any]]] = []

    summary = await run_batch(
        inputs,
        context,
        out,
        executor=RayExecutor(context),
        on_event=lambda key, event: events.append((key, event)),
    )

    assert (summary.items, summary.done, summary.failed) == (6, 6, 0), summary.failures
    assert summary.tasks_by_kind == {"atomic": 4, "width": 2}
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for record in (r for r in records if r["kind"] == "width"):
        assert len({member["document_id"] for member in record["members"]}) == 2
    merges = [key for key, event in events if event.get("stage") == "width_merge"]
    assert merges and all(key.startswith("width:") for key in merges)
