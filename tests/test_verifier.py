"""Verifier: LLM-only answer and judgement, tool-using agent and its judgement."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.messages import BaseMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.graphs.verifier import graph as verifier_graph
from langgraph_taskcraft.nodes.verifier import (
    AGENT_JUDGEMENT_KEY,
    AGENT_RUN_KEY,
    LLM_ONLY_ANSWER_KEY,
    LLM_ONLY_JUDGEMENT_KEY,
    override_agent_tools,
    rejection_detail,
    verify,
)
from langgraph_taskcraft.records import DocumentRecord, Verification, content_id
from tests.fakes import Rule, ScriptedChatModel, structured, tool_call

QUESTION = "In which year was the Zorblax Institute of Applied Acoustics founded?"
GOLDEN = "1987"
PASSAGE = "The Zorblax Institute of Applied Acoustics was founded in 1987 in Tallinn."

# Prompts are told apart by their wording: the tool-less prompt says it has no tools, the agent
# runs under the research-agent system prompt, the judge grades a "Candidate answer".
TOOLLESS = r"You have no tools"
AGENT = r"research agent"


@dataclass
class Models:
    """The models a test installs; contexts name them as `tests.test_verifier:MODELS.<role>`."""

    agent: ScriptedChatModel | None = None
    judge: ScriptedChatModel | None = None
    searches: list[str] = field(default_factory=list)


MODELS = Models()


@pytest.fixture(autouse=True)
def fresh_models() -> None:
    MODELS.agent = None
    MODELS.judge = None
    MODELS.searches = []


def make_context(**overrides: Any) -> Context:
    return Context(
        agent_model="tests.test_verifier:MODELS.agent",
        judge_model="tests.test_verifier:MODELS.judge",
        **overrides,
    )


def verdict(correct: bool, reason: str = "") -> Any:
    return structured(
        "AnswerJudgement", correct=correct, reason=reason or ("same" if correct else "different")
    )


def judge_rules(*, right: str = GOLDEN, wrong: str = "1950") -> list[Rule]:
    return [
        Rule(rf"Candidate answer: {right}\b", verdict(True)),
        Rule(rf"Candidate answer: {wrong}\b", verdict(False)),
    ]


@tool
def search(query: str) -> str:
    """Search the corpus for passages matching the query."""
    MODELS.searches.append(query)
    return PASSAGE


FAKE_TOOLS: list[BaseTool] = [search]


def agent_that_searches(*, toolless: str = "1950", final: str = GOLDEN) -> ScriptedChatModel:
    return ScriptedChatModel(
        rules=[
            Rule(TOOLLESS, toolless),
            Rule(AGENT, tool_call("search", query="Zorblax Institute founded"), after_tool=False),
            # Answers only once the search result (the passage) is in its transcript.
            Rule(r"founded in 1987", final, after_tool=True),
        ]
    )


def agent_prompts(model: ScriptedChatModel) -> list[list[BaseMessage]]:
    return [call for call in model.calls if "research agent" in call[0].text]


async def test_accepted_when_llm_alone_fails_and_agent_succeeds() -> None:
    MODELS.agent = agent_that_searches()
    MODELS.judge = ScriptedChatModel(rules=judge_rules())

    result = await verify(QUESTION, GOLDEN, context=make_context(), tools=FAKE_TOOLS)

    assert result.accepted and result.reason is None
    assert result.llm_only_answer == "1950" and result.llm_only_score == 0.0
    assert result.agent_answer == GOLDEN and result.agent_score == 1.0
    assert result.llm_only_reasons == ["different"] and result.agent_reasons == ["same"]
    assert result.agent_steps == 2
    assert MODELS.searches == ["Zorblax Institute founded"]

    roles = [message["role"] for message in result.trajectory]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    system, user, call, tool_result, final = result.trajectory
    assert "research agent" in system["content"]
    assert user["content"] == QUESTION
    (tool_call_entry,) = call["tool_calls"]
    assert tool_call_entry["type"] == "function"
    assert tool_call_entry["function"]["name"] == "search"
    assert json.loads(tool_call_entry["function"]["arguments"]) == {
        "query": "Zorblax Institute founded"
    }
    assert tool_result["tool_call_id"] == tool_call_entry["id"]
    assert PASSAGE in str(tool_result["content"])
    assert final == {"role": "assistant", "content": GOLDEN}
    json.dumps(result.trajectory)  # the record must be JSON-serialisable as is

    assert set(result.usage) == {
        LLM_ONLY_ANSWER_KEY,
        LLM_ONLY_JUDGEMENT_KEY,
        AGENT_RUN_KEY,
        AGENT_JUDGEMENT_KEY,
    }
    agent_run = result.usage[AGENT_RUN_KEY]
    assert agent_run.calls == 2 and agent_run.input_tokens > 0 and agent_run.output_tokens > 0
    assert result.usage[LLM_ONLY_ANSWER_KEY].calls == 1
    assert result.usage[LLM_ONLY_JUDGEMENT_KEY].calls == 1
    assert result.usage[AGENT_JUDGEMENT_KEY].calls == 1


async def test_llm_alone_right_rejects_without_running_the_agent() -> None:
    MODELS.agent = agent_that_searches(toolless=GOLDEN)
    MODELS.judge = ScriptedChatModel(rules=judge_rules())

    result = await verify(QUESTION, GOLDEN, context=make_context(), tools=FAKE_TOOLS)

    assert not result.accepted and result.reason == "answered_without_tools"
    assert result.llm_only_answer == GOLDEN and result.llm_only_score == 1.0
    assert result.agent_answer is None and result.agent_score is None
    assert result.agent_steps == 0 and result.trajectory == []
    assert len(MODELS.agent.calls) == 1 and agent_prompts(MODELS.agent) == []
    assert MODELS.searches == []
    assert AGENT_RUN_KEY not in result.usage


async def test_agent_with_wrong_answer_fails() -> None:
    MODELS.agent = agent_that_searches(final="1988")
    MODELS.judge = ScriptedChatModel(
        rules=[*judge_rules(), Rule(r"Candidate answer: 1988\b", verdict(False, "off by one"))]
    )

    result = await verify(QUESTION, GOLDEN, context=make_context(), tools=FAKE_TOOLS)

    assert not result.accepted and result.reason == "agent_failed"
    assert result.agent_answer == "1988" and result.agent_score == 0.0
    assert result.agent_reasons == ["off by one"]
    assert rejection_detail(result) == "off by one"
    assert [m["role"] for m in result.trajectory][-1] == "assistant"


async def test_agent_exhausting_the_step_limit_fails() -> None:
    MODELS.agent = ScriptedChatModel(
        rules=[Rule(TOOLLESS, "1950"), Rule(AGENT, tool_call("search", query="Zorblax"))]
    )
    MODELS.judge = ScriptedChatModel(rules=judge_rules())

    result = await verify(
        QUESTION, GOLDEN, context=make_context(agent_max_steps=3), tools=FAKE_TOOLS
    )

    assert not result.accepted and result.reason == "agent_failed"
    assert result.agent_steps == 3 and len(agent_prompts(MODELS.agent)) == 3
    assert result.agent_answer is None
    assert result.agent_reasons == ["step limit reached"]
    assert rejection_detail(result) == "step limit reached"
    assert MODELS.searches == ["Zorblax"] * 3
    # The limit middleware's own closing message is not part of the agent's trajectory.
    roles = [message["role"] for message in result.trajectory]
    assert roles == ["system", "user"] + ["assistant", "tool"] * 3
    assert result.usage[AGENT_RUN_KEY].calls == 3
    # Only the tool-less answer was judged.
    assert len(MODELS.judge.calls) == 1 and AGENT_JUDGEMENT_KEY not in result.usage


async def test_mixed_judge_samples_give_a_fractional_score() -> None:
    MODELS.agent = agent_that_searches()
    MODELS.judge = ScriptedChatModel(
        rules=[
            Rule(rf"Candidate answer: {GOLDEN}\b", verdict(True, "matches"), times=2),
            Rule(rf"Candidate answer: {GOLDEN}\b", verdict(False, "unsure")),
            Rule(r"Candidate answer: 1950\b", verdict(False)),
        ]
    )

    result = await verify(QUESTION, GOLDEN, context=make_context(judge_samples=3), tools=FAKE_TOOLS)

    assert result.accepted
    assert result.agent_score == pytest.approx(2 / 3)
    assert sorted(result.agent_reasons) == ["matches", "matches", "unsure"]
    assert result.llm_only_score == 0.0 and len(result.llm_only_reasons) == 3
    assert result.usage[AGENT_JUDGEMENT_KEY].calls == 3
    assert result.usage[LLM_ONLY_JUDGEMENT_KEY].calls == 3


async def test_agent_score_below_threshold_is_rejected_even_when_llm_alone_failed() -> None:
    MODELS.agent = agent_that_searches()
    MODELS.judge = ScriptedChatModel(
        rules=[
            Rule(rf"Candidate answer: {GOLDEN}\b", verdict(True), times=2),
            Rule(rf"Candidate answer: {GOLDEN}\b", verdict(False)),
            Rule(r"Candidate answer: 1950\b", verdict(False)),
        ]
    )
    context = make_context(judge_samples=3, agent_min_score=0.9)

    result = await verify(QUESTION, GOLDEN, context=context, tools=FAKE_TOOLS)

    assert result.llm_only_score == 0.0
    assert not result.accepted and result.reason == "agent_failed"
    assert result.agent_score == pytest.approx(2 / 3)


async def test_judge_reply_that_never_parses_is_llm_output_invalid() -> None:
    MODELS.agent = agent_that_searches()
    MODELS.judge = ScriptedChatModel(rules=[Rule(r"Candidate answer", "Looks right to me.")])

    result = await verify(
        QUESTION, GOLDEN, context=make_context(structured_output_retries=1), tools=FAKE_TOOLS
    )

    assert not result.accepted and result.reason == "llm_output_invalid"
    assert len(MODELS.judge.calls) == 2  # the first try and one re-ask
    assert result.usage[LLM_ONLY_JUDGEMENT_KEY].calls == 2
    assert "judge:llm_only_judgement" in rejection_detail(result)
    assert agent_prompts(MODELS.agent) == []


async def test_agent_judge_reply_that_never_parses_is_llm_output_invalid() -> None:
    MODELS.agent = agent_that_searches()
    MODELS.judge = ScriptedChatModel(
        rules=[
            Rule(r"Candidate answer: 1950\b", verdict(False)),
            Rule(r"Candidate answer", "Looks right to me."),
        ]
    )

    result = await verify(
        QUESTION, GOLDEN, context=make_context(structured_output_retries=0), tools=FAKE_TOOLS
    )

    assert not result.accepted and result.reason == "llm_output_invalid"
    assert result.agent_answer == GOLDEN and result.agent_score is None
    assert len(result.trajectory) == 5


class ProviderDown(Exception):
    """Stands in for a 5xx that outlived the client's retries."""


def failing_reply(messages: list[BaseMessage]) -> Any:
    raise ProviderDown("503 Service Unavailable")


async def test_provider_errors_propagate() -> None:
    MODELS.agent = agent_that_searches()
    MODELS.judge = ScriptedChatModel(rules=[Rule(r"Candidate answer", failing_reply)])

    with pytest.raises(ProviderDown):
        await verify(QUESTION, GOLDEN, context=make_context(), tools=FAKE_TOOLS)


async def test_verifier_graph_runs_with_runtime_context() -> None:
    MODELS.agent = agent_that_searches()
    MODELS.judge = ScriptedChatModel(rules=judge_rules())

    with override_agent_tools(FAKE_TOOLS):
        output = await verifier_graph.ainvoke(
            {"question": QUESTION, "golden_answer": GOLDEN}, context=make_context()
        )

    assert set(output) == {"verification"}
    verification = output["verification"]
    assert isinstance(verification, Verification) and verification.accepted
    assert verification.agent_steps == 2


class Outer(TypedDict):
    count: int


async def test_verify_inside_a_checkpointed_graph_stores_nothing_in_its_thread() -> None:
    """A node of a checkpointed graph may verify several questions without bloating its thread."""
    MODELS.agent = agent_that_searches()
    MODELS.judge = ScriptedChatModel(rules=judge_rules())
    results: list[Verification] = []

    async def verify_twice(state: Outer, runtime: Runtime[Context]) -> dict[str, Any]:
        for _ in range(2):
            results.append(
                await verify(QUESTION, GOLDEN, context=runtime.context, tools=FAKE_TOOLS)
            )
        return {"count": len(results)}

    builder = StateGraph(Outer, context_schema=Context)
    builder.add_node("verify_twice", verify_twice)
    builder.add_edge(START, "verify_twice")
    builder.add_edge("verify_twice", END)
    saver = InMemorySaver()
    outer = builder.compile(checkpointer=saver)

    await outer.ainvoke({"count": 0}, {"configurable": {"thread_id": "t"}}, context=make_context())

    # Only the outer graph's own checkpoints: no verifier stages stored in the caller's thread.
    namespaces = {
        checkpoint.config["configurable"]["checkpoint_ns"] for checkpoint in saver.list(None)
    }
    assert namespaces == {""}
    first, second = results
    assert first.accepted and second.accepted
    assert second.usage == first.usage
    assert second.trajectory == first.trajectory
    assert len(second.trajectory) == 5


def local_corpus() -> list[DocumentRecord]:
    texts = {
        "Zorblax Institute of Applied Acoustics": PASSAGE
        + " It studies the acoustics of concert halls.",
        "Baltic shipping": "Tallinn's harbour handles ferries to Helsinki and Stockholm.",
        "Violin making": "Cremona is known for violins made by Stradivari and Guarneri.",
    }
    return [
        DocumentRecord(
            id=content_id(text),
            source="text:",
            kind="text",
            identifier=title,
            chunks=[f"{title}\n\n{text}"],
        )
        for title, text in texts.items()
    ]


async def test_agent_uses_the_real_tools_over_a_local_corpus(tmp_path: Path) -> None:
    MODELS.agent = agent_that_searches()
    MODELS.judge = ScriptedChatModel(rules=judge_rules())
    context = make_context(search_backend="local", corpus_path="", data_dir=str(tmp_path))
    corpus = local_corpus()

    result = await verify(QUESTION, GOLDEN, context=context, documents=corpus)

    assert result.accepted and result.agent_steps == 2
    tool_messages = [m for m in result.trajectory if m["role"] == "tool"]
    assert len(tool_messages) == 1 and tool_messages[0]["name"] == "search"
    # BM25 ranks the institute's document first, and its passage reached the agent.
    first_hit = str(tool_messages[0]["content"]).splitlines()[0]
    assert corpus[0].id in first_hit and "founded in 1987" in first_hit
    second_prompt = agent_prompts(MODELS.agent)[1]
    assert any(isinstance(m, ToolMessage) and "founded in 1987" in m.text for m in second_prompt)
