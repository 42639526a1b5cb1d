"""The leaner paths that cut CPU per LLM call keep their results identical to LangChain's own.

- the verifier agent's ReAct loop binds its tools once per run and writes the same messages as
  `create_agent` with `ModelCallLimitMiddleware`;
- `verify` runs the `verifier` graph's stages inline with the same verdict as the graph;
- structured output parses the provider's reply in place and keeps the tracing metadata;
- `LLMLimits` estimates prompt tokens only when a token bucket needs them.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models.chat_models import _format_ls_structured_output
from langchain_core.messages import AIMessage, HumanMessage, convert_to_openai_messages
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_json_schema
from pydantic import BaseModel, PrivateAttr

from langgraph_taskcraft import limits as limits_module
from langgraph_taskcraft.context import Context
from langgraph_taskcraft.graphs.verifier import graph as verifier_graph
from langgraph_taskcraft.limits import LLMLimits, estimate_prompt_tokens
from langgraph_taskcraft.llm import LLMOutputInvalid, _structured_call, ainvoke_structured
from langgraph_taskcraft.nodes.verifier import (
    AgentRequest,
    AnswerJudgement,
    VerifierInput,
    _run_create_agent,
    _run_react_loop,
    override_agent_tools,
    verify,
)
from tests.fakes import Rule, ScriptedChatModel, structured, tool_call

SYSTEM = "You are a research agent."
QUESTION = "In which year was the Zorblax Institute founded?"
PASSAGE = "The Zorblax Institute was founded in 1987."


class CountingModel(ScriptedChatModel):
    """A scripted model that counts how often tools are bound to it."""

    _binds: list[int] = PrivateAttr(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> CountingModel:  # type: ignore[override]
        self._binds.append(len(tools))
        return self


@tool
def search(query: str) -> str:
    """Search the corpus for passages matching the query."""
    return PASSAGE


@tool
def open_page(page: int) -> str:
    """Open a page by its number."""
    return f"page {page}"


TOOLS: list[BaseTool] = [search, open_page]


def searching_agent(model_class: type[ScriptedChatModel] = ScriptedChatModel) -> Any:
    return model_class(
        rules=[
            Rule(r"research agent", tool_call("search", query="Zorblax"), after_tool=False),
            Rule(r"founded in 1987", "1987", after_tool=True),
        ]
    )


async def test_tools_are_bound_once_per_agent_run_not_per_step() -> None:
    model = searching_agent(CountingModel)

    messages, replies, limit = await _run_react_loop(
        AgentRequest(model, TOOLS, SYSTEM, HumanMessage(QUESTION), max_steps=5)
    )

    assert len(replies) == 2 and not limit  # two model calls: search, then answer
    assert model._binds == [2]  # create_agent bound the tools before each of them
    assert replies[-1].text == "1987"


def trajectory(run: tuple[Any, Any, bool]) -> tuple[list[dict[str, Any]], int, bool]:
    messages, replies, limit = run
    return convert_to_openai_messages(messages), len(replies), limit


@pytest.mark.parametrize(
    "rules",
    [
        pytest.param(
            [
                Rule("research agent", tool_call("search", query="Zorblax"), after_tool=False),
                Rule("founded in 1987", "1987", after_tool=True),
            ],
            id="search-then-answer",
        ),
        pytest.param([Rule("research agent", tool_call("search", query="again"))], id="step-limit"),
        pytest.param(
            [
                Rule("research agent", tool_call("browse", url="x"), after_tool=False),
                Rule("not a valid tool", tool_call("open_page", page="first"), times=1),
                Rule("Please fix", "gave up"),
            ],
            id="unknown-tool-and-invalid-arguments",
        ),
        pytest.param(
            [
                Rule(
                    "research agent",
                    AIMessage(
                        content="",
                        tool_calls=[
                            {"name": "search", "args": {"query": "a"}, "id": "call_a"},
                            {"name": "open_page", "args": {"page": 2}, "id": "call_b"},
                        ],
                    ),
                    after_tool=False,
                ),
                Rule("page 2", "done", after_tool=True),
            ],
            id="parallel-tool-calls",
        ),
    ],
)
async def test_react_loop_writes_what_create_agent_writes(rules: list[Rule]) -> None:
    question = HumanMessage(QUESTION)
    lean = await _run_react_loop(
        AgentRequest(ScriptedChatModel(rules=rules), TOOLS, SYSTEM, question, max_steps=3)
    )
    for rule in rules:
        rule.fired = 0
    reference = await _run_create_agent(
        AgentRequest(ScriptedChatModel(rules=rules), TOOLS, SYSTEM, question, max_steps=3)
    )

    assert trajectory(lean) == trajectory(reference)


# Models of the inline-versus-graph verification, named in the context by `module:attribute`.
AGENT_MODEL = searching_agent()
JUDGE_MODEL = ScriptedChatModel(
    rules=[
        Rule(r"Candidate answer: 1987\b", structured("AnswerJudgement", correct=True, reason="ok"))
    ],
    default=structured("AnswerJudgement", correct=False, reason="no"),
)


async def test_inline_verification_equals_the_verifier_graph() -> None:
    AGENT_MODEL.rules.insert(0, Rule(r"You have no tools", "1950"))
    context = Context(
        agent_model="tests.test_call_overhead:AGENT_MODEL",
        judge_model="tests.test_call_overhead:JUDGE_MODEL",
    )
    try:
        inline = await verify(QUESTION, "1987", context=context, tools=TOOLS)
        with override_agent_tools(TOOLS):
            result = await verifier_graph.ainvoke(
                VerifierInput(question=QUESTION, golden_answer="1987"), context=context
            )
    finally:
        AGENT_MODEL.rules.pop(0)

    assert inline.accepted and inline.agent_steps == 2
    assert inline == result["verification"]


class Verdict(BaseModel):
    """A verdict."""

    correct: bool


async def test_structured_output_parses_in_place_and_re_asks() -> None:
    model = ScriptedChatModel(
        rules=[
            Rule(r"could not be used", structured("Verdict", correct=True)),
            Rule(r"Judge", "no tool call at all"),
        ]
    )
    usage: dict[str, Any] = {}

    verdict = await ainvoke_structured(
        model, Verdict, [HumanMessage("Judge this")], context=Context(), usage=usage, key="k"
    )

    assert verdict == Verdict(correct=True)
    assert usage["k"].calls == 2  # the re-ask counts
    assert _structured_call(model, Verdict, "function_calling").parser is not None
    with pytest.raises(LLMOutputInvalid):
        await ainvoke_structured(
            ScriptedChatModel(rules=[Rule("Judge", "never")]),
            Verdict,
            [HumanMessage("Judge this")],
            context=Context(structured_output_retries=1),
            usage={},
            key="k",
        )


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_openai_structured_call_keeps_the_tracing_metadata(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_openai import ChatOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")  # no request is sent
    model = ChatOpenAI(model="gpt-4.1-mini")

    call = _structured_call(model, AnswerJudgement, method)

    reference = model.with_structured_output(AnswerJudgement, method=method)
    assert call.parser is not None
    trace_format = call.model.kwargs["ls_structured_output_format"]  # type: ignore[attr-defined]
    expected = reference.first.kwargs["ls_structured_output_format"]  # type: ignore[attr-defined]
    assert isinstance(trace_format["schema"], dict)  # converted once, not per call
    assert _format_ls_structured_output(trace_format) == _format_ls_structured_output(expected)
    assert _format_ls_structured_output(trace_format)["ls_structured_output_format"][
        "schema"
    ] == convert_to_json_schema(AnswerJudgement)


async def test_limits_estimate_tokens_only_for_a_token_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    estimates: list[int] = []

    def counting_estimate(*args: Any, **kwargs: Any) -> int:
        estimates.append(1)
        return estimate_prompt_tokens(*args, **kwargs)

    monkeypatch.setattr(limits_module, "estimate_prompt_tokens", counting_estimate)
    model = ScriptedChatModel(rules=[Rule("hello", "hi")])

    await model.ainvoke("hello", {"callbacks": [LLMLimits(max_calls=2)]})
    assert estimates == []
    with_bucket = LLMLimits(max_calls=2, tokens_per_minute=10_000)
    await model.ainvoke("hello", {"callbacks": [with_bucket]})
    assert estimates == [1] and with_bucket.stats.calls == 1


def test_tool_schema_size_is_remembered_and_exact() -> None:
    tools = [{"type": "function", "function": {"name": "search", "parameters": {}}}]
    params = {"tools": tools}
    first = estimate_prompt_tokens([HumanMessage("x")], params)
    assert estimate_prompt_tokens([HumanMessage("x")], params) == first
    import json
    import math

    assert first == math.ceil((1 + len(json.dumps(tools))) / 4) + 4
