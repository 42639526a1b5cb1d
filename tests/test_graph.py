"""The `taskcraft` graph end to end on a scripted scenario (no network, no keys)."""

from __future__ import annotations

from typing import Any

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.graphs.taskcraft import graph
from tests.scenario_atomic import FIXTURE_TEXT, SCENARIO_CONTEXT


def scenario_context(tmp_path: Any, **overrides: Any) -> Context:
    return Context(**{**SCENARIO_CONTEXT, "data_dir": str(tmp_path / "state"), **overrides})


async def test_one_candidate_accepted_and_three_rejected_for_their_reasons(tmp_path: Any) -> None:
    result = await graph.ainvoke({"texts": [FIXTURE_TEXT]}, context=scenario_context(tmp_path))

    assert [task.answer for task in result["tasks"]] == ["Tamsin Oduya"]
    task = result["tasks"][0]
    assert task.question == "Who founded the Zephyrine Observatory?"
    assert task.kind == "atomic" and task.hops == 1
    assert task.identifier == "Zephyrine Observatory"
    assert task.verification.accepted
    assert task.verification.llm_only_score == 0.0 and task.verification.agent_score == 1.0
    # The trajectory is the agent's run in OpenAI chat format, tool call and tool result included.
    roles = [message["role"] for message in task.trajectory]
    assert roles[:1] == ["system"] and roles[-1] == "assistant"
    call = next(m for m in task.trajectory if m["role"] == "assistant" and m.get("tool_calls"))
    assert call["tool_calls"][0]["function"]["name"] == "search"
    tool_result = next(m for m in task.trajectory if m["role"] == "tool")
    assert "Tamsin Oduya" in tool_result["content"]

    by_answer = {r.answer: r for r in result["rejected"]}
    assert set(by_answer) == {"1911", "Corvex-9", "Lake Vell"}
    assert (by_answer["1911"].stage, by_answer["1911"].reason) == (
        "llm_only",
        "answered_without_tools",
    )
    assert by_answer["1911"].verification.agent_answer is None  # the agent was not needed
    assert (by_answer["Corvex-9"].stage, by_answer["Corvex-9"].reason) == ("agent", "agent_failed")
    assert (by_answer["Lake Vell"].stage, by_answer["Lake Vell"].reason) == (
        "leak_check",
        "answer_in_question",
    )
    assert result["errors"] == []
    assert result["usage"]["generator:extract"].calls == 1
    assert sum(u.input_tokens for u in result["usage"].values()) > 0


async def test_progress_events_on_the_custom_stream(tmp_path: Any) -> None:
    events = [
        event
        async for event in graph.astream(
            {"texts": [FIXTURE_TEXT]}, context=scenario_context(tmp_path), stream_mode="custom"
        )
    ]
    statuses = {(e["stage"], e["status"]) for e in events}
    assert {("verify", "started"), ("verify", "accepted"), ("verify", "rejected")} <= statuses


async def test_a_broken_input_is_an_error_and_the_rest_goes_on(tmp_path: Any) -> None:
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"")
    result = await graph.ainvoke(
        {"texts": [FIXTURE_TEXT], "sources": [str(broken)]}, context=scenario_context(tmp_path)
    )
    assert [task.answer for task in result["tasks"]] == ["Tamsin Oduya"]
    assert [(e.source, e.error) for e in result["errors"]] == [(str(broken), "pdf_empty")]
