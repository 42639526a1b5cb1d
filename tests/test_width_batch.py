"""Width merges in batch runs: tasks of different documents merged once the documents are done."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from langgraph_taskcraft.graphs.width import graph as width_graph
from langgraph_taskcraft.planning import WIDTH_KEY_PREFIX
from langgraph_taskcraft.records import Task
from langgraph_taskcraft.runner import run_batch
from tests.fakes import Rule
from tests.test_depth import World, installer
from tests.test_width import FACTS, WIDTH_MERGE, add_fact, width_context, width_world, write_merged


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch):
    return installer(monkeypatch)


EXTRA_FACTS = [
    ("Reef 1", "Reef 1 lies 10 km offshore.", "How far offshore is Reef 1?", "10 km"),
    ("Reef 2", "Reef 2 lies 20 km offshore.", "How far offshore is Reef 2?", "20 km"),
]


def corpus(path: Path, facts: list[tuple[str, str, str, str]]) -> Path:
    """A JSONL corpus with one document per fact."""
    records = [{"id": title, "title": title, "text": sentence} for title, sentence, *_ in facts]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def merge_prompts(models: dict[str, Any]) -> int:
    return sum(
        re.search(WIDTH_MERGE, str(m[-1].content)) is not None for m in models["generator"].calls
    )


def calls(models: dict[str, Any]) -> int:
    return sum(len(model.calls) for model in models.values())


async def test_a_batch_run_merges_tasks_of_different_documents(tmp_path: Path, install) -> None:
    models = install(width_world())
    inputs = [str(corpus(tmp_path / "facts.jsonl", FACTS))]
    out = tmp_path / "out" / "tasks.jsonl"
    context = width_context(tmp_path)

    summary = await run_batch(inputs, context, out, concurrency=2)

    tasks = [Task.model_validate(record) for record in lines(out)]
    atomic = [t for t in tasks if t.kind == "atomic"]
    merged = [t for t in tasks if t.kind == "width"]
    # One task per document: a merge within a document could never happen.
    assert len(atomic) == 4 and len(merged) == 2
    assert len({t.document_id for t in atomic}) == 4
    members = [m.id for t in merged for m in t.members]
    assert sorted(members) == sorted(t.id for t in atomic)  # each task merged once
    for task in merged:
        assert len({m.document_id for m in task.members}) == 2
        assert task.answer == "; ".join(m.answer for m in task.members)
    documents = lines(out.with_name("tasks.documents.jsonl"))
    groups = [d for d in documents if d["key"].startswith(WIDTH_KEY_PREFIX)]
    assert [g["status"] for g in groups] == ["done", "done"]
    assert summary.items == 6 and summary.done == 6 and summary.tasks == 6
    assert summary.tasks_by_kind == {"atomic": 4, "width": 2}

    before = calls(models)
    again = await run_batch(inputs, context, out, concurrency=2)
    assert calls(models) == before  # a finished run costs nothing to rerun
    assert again.skipped == 4 and again.tasks == 0
    assert len(lines(out)) == 6


async def test_document_scope_merges_only_within_a_document(tmp_path: Path, install) -> None:
    models = install(width_world())
    inputs = [str(corpus(tmp_path / "facts.jsonl", FACTS))]
    out = tmp_path / "tasks.jsonl"

    await run_batch(inputs, width_context(tmp_path, width_scope="document"), out)

    assert [record["kind"] for record in lines(out)] == ["atomic"] * 4
    assert merge_prompts(models) == 0


async def test_tasks_of_documents_added_later_are_merged_among_themselves(
    tmp_path: Path, install
) -> None:
    world = width_world()
    for fact in EXTRA_FACTS:
        add_fact(world, *fact)
    models = install(world)
    out = tmp_path / "tasks.jsonl"
    context = width_context(tmp_path)
    first = corpus(tmp_path / "first.jsonl", FACTS[:3])
    await run_batch([str(first)], context, out)
    merged_first = [r for r in lines(out) if r["kind"] == "width"]
    assert len(merged_first) == 1  # three tasks: one pair, one left for later

    second = corpus(tmp_path / "second.jsonl", EXTRA_FACTS[:1])
    await run_batch([str(first), str(second)], context, out)

    merged = [r for r in lines(out) if r["kind"] == "width"]
    assert len(merged) == 2 and merged[0] == merged_first[0]
    used = [m["id"] for record in merged for m in record["members"]]
    assert len(used) == len(set(used)) == 4
    assert merge_prompts(models) == 2


def failing_once(world: World) -> dict[str, int]:
    """Make the provider fail the first width-merge request (a rate limit after retries)."""
    remaining = {"failures": 1}

    def respond(messages: list[BaseMessage]) -> Any:
        if remaining["failures"]:
            remaining["failures"] -= 1
            raise RuntimeError("Error code: 429 - rate limit exceeded")
        return write_merged(messages)

    world.generator_rules.insert(0, Rule(WIDTH_MERGE, respond))
    return remaining


async def test_a_group_that_met_a_provider_error_is_retried_with_the_same_members(
    tmp_path: Path, install
) -> None:
    world = width_world()
    failing_once(world)
    install(world)
    inputs = [str(corpus(tmp_path / "facts.jsonl", FACTS[:2]))]
    out = tmp_path / "tasks.jsonl"
    context = width_context(tmp_path, max_width_attempts=1)

    first = await run_batch(inputs, context, out)

    assert first.failed == 1 and [r["kind"] for r in lines(out)] == ["atomic", "atomic"]
    (failed_key,) = first.failures
    assert failed_key.startswith(WIDTH_KEY_PREFIX)
    assert failed_key in out.with_name("tasks.failed.jsonl").read_text()

    second = await run_batch(inputs, context, out)

    assert second.failed == 0 and second.tasks == 1
    (merged,) = [r for r in lines(out) if r["kind"] == "width"]
    assert WIDTH_KEY_PREFIX + "+".join(m["id"] for m in merged["members"]) == failed_key
    assert not out.with_name("tasks.failed.jsonl").exists()
    rejected = lines(out.with_name("tasks.rejected.jsonl"))
    assert [r["reason"] for r in rejected if r["kind"] == "width"] == []  # failures not written


async def test_the_width_graph_merges_given_tasks(tmp_path: Path, install) -> None:
    """The `taskcraft_width` graph (Studio): tasks from a tasks.jsonl in, width tasks out."""
    install(width_world())
    inputs = [str(corpus(tmp_path / "facts.jsonl", FACTS))]
    out = tmp_path / "tasks.jsonl"
    await run_batch(inputs, width_context(tmp_path, extension_strategy="depth"), out)
    verified = lines(out)
    assert [r["kind"] for r in verified] == ["atomic"] * 4

    result = await width_graph.ainvoke({"verified": verified}, context=width_context(tmp_path))

    assert [t.kind for t in result["tasks"]] == ["width", "width"]
    assert {m.id for t in result["tasks"] for m in t.members} == {r["id"] for r in verified}
    assert set(result["usage"]) >= {"generator:width_merge", "judge:width_decompose_check"}


class SimulatedCrash(BaseException):
    """Stands for the process dying: nothing catches it on the way out."""


async def test_a_run_killed_during_the_width_phase_resumes_it(tmp_path: Path, install) -> None:
    models = install(width_world())
    inputs = [str(corpus(tmp_path / "facts.jsonl", FACTS))]
    for folder in ("clean", "out"):
        (tmp_path / folder).mkdir()
    clean = tmp_path / "clean" / "tasks.jsonl"
    await run_batch(inputs, width_context(tmp_path / "clean"), clean)
    out = tmp_path / "out" / "tasks.jsonl"
    context = width_context(tmp_path / "out")

    def die_at_first_merge(key: str, event: dict[str, Any]) -> None:
        if event.get("stage") == "width_merge" and event.get("status") == "accepted":
            raise SimulatedCrash("killed")

    with pytest.raises(SimulatedCrash):
        await run_batch(inputs, context, out, on_event=die_at_first_merge)
    kinds = [r["kind"] for r in lines(out)]
    assert kinds.count("atomic") == 4  # the documents were done
    # The other group may have finished (and been written) before the crash, never the one hit.
    merged_before = kinds.count("width")
    assert merged_before <= 1
    extractions = sum("Conclusions" in str(m) for m in models["generator"].calls)

    summary = await run_batch(inputs, context, out)

    assert summary.skipped == 4 + merged_before and summary.failed == 0
    assert summary.tasks == 2 - merged_before
    assert sum("Conclusions" in str(m) for m in models["generator"].calls) == extractions
    # The same tasks (tool-call ids in trajectories are random in the scripted models).
    resumed, uninterrupted = (
        sorted((r["id"], r["kind"], r["question"], r["answer"]) for r in lines(path))
        for path in (out, clean)
    )
    assert resumed == uninterrupted
    ids = [r["id"] for r in lines(out)]
    assert len(ids) == len(set(ids)) == 6


async def test_final_verification_of_a_run_level_merge_searches_the_run_input(
    tmp_path: Path, install
) -> None:
    """The merge no longer has its members' documents: the run's one input is searched."""
    install(width_world())
    inputs = [str(corpus(tmp_path / "facts.jsonl", FACTS[:2]))]
    out = tmp_path / "tasks.jsonl"
    context = width_context(tmp_path, corpus_path="", verify_final_task=True)

    await run_batch(inputs, context, out)

    (merged,) = [Task.model_validate(r) for r in lines(out) if r["kind"] == "width"]
    assert merged.final_verification is not None
    results = [m["content"] for m in merged.final_verification.trajectory if m["role"] == "tool"]
    found = "\n".join(str(content) for content in results)
    assert "first lit in 1887" in found and "population of 312" in found
