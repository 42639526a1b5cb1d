"""The mock OpenAI server, checked with the real `langchain_openai.ChatOpenAI` client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field, SecretStr

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.llm import ainvoke_structured, chat_model
from tests.mock_openai_server import (
    Fault,
    FaultPlan,
    MockOpenAIServer,
    Reply,
    Rule,
    ToolCall,
    count_tokens,
    load_script,
    tool_call,
    transcript_of,
)
from tests.scenario_mock import generate_arguments


class Conclusion(BaseModel):
    """A fact and how it relates to the document."""

    answer: str = Field(description="Short answer")
    relation: str = Field(description="Relation to the document")


@tool
def search(query: str) -> str:
    """Search the corpus."""
    return f"results for {query}"


def client(base_url: str, *, max_retries: int = 0, timeout: float = 5.0, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(
        model="mock-model",
        base_url=base_url,
        api_key=SecretStr("test"),
        max_retries=max_retries,
        timeout=timeout,
        **kwargs,
    )


async def test_text_reply_with_usage_metadata() -> None:
    server = MockOpenAIServer(rules=[Rule(r"capital of France", "Paris")], default="no idea")
    with server as base_url:
        assert base_url == f"http://127.0.0.1:{server.port}/v1" and server.port > 0
        reply = await client(base_url).ainvoke([HumanMessage("What is the capital of France?")])
        other = await client(base_url).ainvoke([HumanMessage("Something else")])
    assert reply.text == "Paris"
    assert other.text == "no idea"
    expected_input = count_tokens("[user] What is the capital of France?")
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == expected_input
    assert reply.usage_metadata["output_tokens"] == 1
    assert reply.response_metadata["model_name"] == "mock-model"
    assert server.stats()["replies"] == 2
    assert server.requests[0]["messages"][0]["content"] == "What is the capital of France?"


async def test_tool_calls_and_agent_second_turn() -> None:
    rules = [
        Rule(r"population", tool_call("search", query="Paris population"), after_tool=False),
        Rule(r"population", "2.1 million", after_tool=True),
    ]
    with MockOpenAIServer(rules=rules) as base_url:
        model = client(base_url).bind_tools([search])
        first = await model.ainvoke([HumanMessage("What is the population of Paris?")])
        assert isinstance(first, AIMessage)
        assert [(c["name"], c["args"]) for c in first.tool_calls] == [
            ("search", {"query": "Paris population"})
        ]
        result = ToolMessage("2.1 million people", tool_call_id=first.tool_calls[0]["id"])
        second = await model.ainvoke(
            [HumanMessage("What is the population of Paris?"), first, result]
        )
    assert second.text == "2.1 million" and not second.tool_calls


async def test_the_transcript_lists_offered_tools_and_history() -> None:
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"function": {"name": "search", "arguments": '{"query": "q"}'}}],
            },
            {"role": "tool", "content": "found", "tool_call_id": "c1"},
        ],
        "tools": [{"type": "function", "function": {"name": "search"}}],
    }
    assert transcript_of(body) == (
        '[user] hello\n[assistant] \n[tool_call] search {"query": "q"}\n[tool] found\n'
        "[tools] search"
    )


async def test_structured_output_with_function_calling() -> None:
    rules = [
        Rule(r"\[tools\] Conclusion", tool_call("Conclusion", answer="1889", relation="built"))
    ]
    with MockOpenAIServer(rules=rules, default=None) as base_url:
        structured = client(base_url).with_structured_output(Conclusion, method="function_calling")
        result = await structured.ainvoke("When was the Eiffel Tower built?")
    assert result == Conclusion(answer="1889", relation="built")


async def test_project_llm_helpers_run_against_the_server(monkeypatch) -> None:
    """A dry run: `openai:` models with `base_url` pointing at the mock server."""
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    rules = [
        Rule(r"Conclusion", tool_call("Conclusion", answer="42", relation="is"), times=1),
    ]
    server = MockOpenAIServer(rules=rules, default=tool_call("Conclusion", answer=7))
    with server as base_url:
        context = Context(generator_model="openai:mock-model", base_url=base_url, max_retries=0)
        usage: dict = {}

        async def extract() -> Conclusion:
            return await ainvoke_structured(
                chat_model(context, "generator"),
                Conclusion,
                [HumanMessage("Extract a Conclusion")],
                context=context,
                usage=usage,
                key="generator:extract",
            )

        first = await extract()
        # The second call gets an invalid reply (relation missing), then re-asks within budget.
        with pytest.raises(Exception, match="did not match the schema"):
            await extract()
    assert first == Conclusion(answer="42", relation="is")
    entry = usage["generator:extract"]
    assert entry.calls == 1 + 1 + context.structured_output_retries
    assert entry.input_tokens > 0 and entry.output_tokens > 0


async def test_streaming_text_tool_calls_and_usage() -> None:
    rules = [
        Rule(r"story", "once upon a time there was a mock server"),
        Rule(r"look", tool_call("search", query="a b c")),
    ]
    with MockOpenAIServer(rules=rules) as base_url:
        model = client(base_url, stream_usage=True)
        chunks = [chunk async for chunk in model.astream("tell a story")]
        assert len(chunks) > 3  # really streamed in pieces
        text = sum(chunks[1:], chunks[0])
        call_chunks = [chunk async for chunk in model.bind_tools([search]).astream("look it up")]
        calls = sum(call_chunks[1:], call_chunks[0])
    assert text.text == "once upon a time there was a mock server"
    assert text.usage_metadata and text.usage_metadata["output_tokens"] == 9
    assert calls.tool_calls[0]["args"] == {"query": "a b c"}


def test_models_endpoint_and_unknown_routes() -> None:
    server = MockOpenAIServer(models=["mock-a", "mock-b"])
    with server as base_url:
        listed = openai.OpenAI(base_url=base_url, api_key="test").models.list()
        missing = httpx.get(base_url + "/nothing")
    assert [model.id for model in listed.data] == ["mock-a", "mock-b"]
    assert missing.status_code == 404
    assert server.stats()["model_requests"] == 1


async def test_client_retries_get_through_transient_faults() -> None:
    plan = FaultPlan(
        schedule={1: Fault.RATE_LIMIT, 2: Fault.SERVER_ERROR, 3: Fault.DROP_CONNECTION}
    )
    server = MockOpenAIServer(rules=[Rule("hello", "hi")], faults=plan, retry_after_s=0.01)
    with server as base_url:
        reply = await client(base_url, max_retries=3).ainvoke("hello")
    assert reply.text == "hi"
    stats = server.stats()
    assert stats["chat_requests"] == 4 and stats["replies"] == 1
    assert stats["faults"] == {"rate_limit": 1, "server_error": 1, "drop_connection": 1}


async def test_rate_limit_sends_retry_after() -> None:
    server = MockOpenAIServer(faults=FaultPlan(schedule={1: Fault.UNAVAILABLE}), retry_after_s=2.5)
    with server as base_url:
        response = httpx.post(base_url + "/chat/completions", json={"messages": []})
        again = httpx.post(base_url + "/chat/completions", json={"messages": []})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert response.headers["retry-after-ms"] == "2500"
    assert again.status_code == 200


async def test_too_few_retries_surface_the_error() -> None:
    plan = FaultPlan(schedule={1: Fault.RATE_LIMIT, 2: Fault.RATE_LIMIT})
    server = MockOpenAIServer(faults=plan, retry_after_s=0.01)
    with server as base_url, pytest.raises(openai.RateLimitError):
        await client(base_url, max_retries=1).ainvoke("hello")


async def test_a_permanent_failure_surfaces_as_an_exception() -> None:
    server = MockOpenAIServer(rules=[Rule(r"poison", Fault.SERVER_ERROR)], default="fine")
    with server as base_url:
        model = client(base_url, max_retries=2)
        with pytest.raises(openai.InternalServerError):
            await model.ainvoke("a poison prompt")
        assert (await model.ainvoke("a normal prompt")).text == "fine"
    assert server.stats()["faults"] == {"server_error": 3}  # first try and two retries


async def test_a_slow_reply_times_out_and_the_retry_succeeds() -> None:
    plan = FaultPlan(schedule={1: Fault.TIMEOUT, 3: Fault.TIMEOUT})
    server = MockOpenAIServer(faults=plan, timeout_delay_s=10)
    with server as base_url:
        started = time.monotonic()
        reply = await client(base_url, max_retries=1, timeout=0.3).ainvoke("hello")
        assert reply.text == "OK"
        with pytest.raises(openai.APITimeoutError):
            await client(base_url, max_retries=0, timeout=0.3).ainvoke("hello")
    assert time.monotonic() - started < 8  # stopping releases the hanging request
    assert server.stats()["faults"] == {"timeout": 2}


async def test_malformed_json_and_permanent_drops_raise() -> None:
    plan = FaultPlan(schedule={1: Fault.MALFORMED_JSON}, rates={})
    with MockOpenAIServer(faults=plan) as base_url, pytest.raises(ValueError):
        await client(base_url).ainvoke("hello")
    always_drop = FaultPlan(rates={Fault.DROP_CONNECTION: 1.0})
    server = MockOpenAIServer(faults=always_drop)
    with server as base_url, pytest.raises(openai.APIConnectionError):
        await client(base_url, max_retries=1).ainvoke("hello")
    assert server.stats()["faults"] == {"drop_connection": 2}


def test_fault_rates_are_deterministic_per_request_number() -> None:
    plan = FaultPlan(rates={Fault.RATE_LIMIT: 0.2, Fault.SERVER_ERROR: 0.1}, seed=3)
    same = FaultPlan(rates={Fault.RATE_LIMIT: 0.2, Fault.SERVER_ERROR: 0.1}, seed=3)
    other_seed = FaultPlan(rates={Fault.RATE_LIMIT: 0.2, Fault.SERVER_ERROR: 0.1}, seed=4)
    draws = [plan.fault_for(n) for n in range(1, 2001)]
    assert draws == [same.fault_for(n) for n in range(1, 2001)]
    assert draws != [other_seed.fault_for(n) for n in range(1, 2001)]
    assert 300 < draws.count(Fault.RATE_LIMIT) < 500
    assert 120 < draws.count(Fault.SERVER_ERROR) < 280
    assert FaultPlan(schedule={5: Fault.TIMEOUT}).fault_for(5) is Fault.TIMEOUT
    assert Fault.parse("429") is Fault.RATE_LIMIT and Fault.parse("drop") is Fault.DROP_CONNECTION


async def test_rule_times_callable_replies_and_unmatched_prompts() -> None:
    rules = [
        Rule(r"count", "first", times=1),
        Rule(r"count", lambda body: f"{len(body['messages'])} messages"),
    ]
    server = MockOpenAIServer(rules=rules, default=None)
    with server as base_url:
        model = client(base_url)
        assert (await model.ainvoke("count")).text == "first"
        assert (await model.ainvoke(["count", "again"])).text == "2 messages"
        with pytest.raises(openai.BadRequestError, match="no scripted reply"):
            await model.ainvoke("unknown")
    assert server.stats()["unmatched"] == 1


async def test_latency_is_added_to_every_reply() -> None:
    with MockOpenAIServer(latency_ms=150) as base_url:
        started = time.monotonic()
        await client(base_url).ainvoke("hello")
    assert time.monotonic() - started >= 0.15


def test_load_script(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            {
                "default": "fallback",
                "rules": [
                    {"pattern": "capital", "reply": "Paris", "times": 2},
                    {
                        "pattern": "find",
                        "after_tool": False,
                        "tool_calls": [{"name": "search", "arguments": {"query": "x"}}],
                    },
                    {"pattern": "poison", "fault": "500"},
                ],
                "faults": {"schedule": {"3": "rate_limit"}, "rates": {"503": 0.5}, "seed": 9},
                "latency_ms": 20,
            }
        )
    )
    options = load_script(script)
    assert options["default"] == "fallback"
    assert [rule.reply for rule in options["rules"]] == [
        Reply(text="Paris"),
        Reply(tool_calls=(ToolCall("search", {"query": "x"}),)),
        Fault.SERVER_ERROR,
    ]
    assert options["rules"][0].times == 2 and options["rules"][1].after_tool is False
    assert options["faults"] == FaultPlan(
        schedule={3: Fault.RATE_LIMIT}, rates={Fault.UNAVAILABLE: 0.5}, seed=9
    )
    assert options["latency_ms"] == 20.0


def test_command_line_serves_a_script(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": [{"pattern": "ping", "reply": "pong"}]}))
    server_file = Path(__file__).with_name("mock_openai_server.py")
    process = subprocess.Popen(
        [sys.executable, str(server_file), "--port", "0", "--script", str(script)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        base_url = line.strip().rsplit(" ", 1)[-1]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        reply = client(base_url).invoke("ping")
        assert reply.text == "pong"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_dry_run_of_the_cli_through_the_mock_server(tmp_path: Path, monkeypatch) -> None:
    """The whole pipeline over HTTP with the real OpenAI client: no key, no cost."""
    from typer.testing import CliRunner

    from langgraph_taskcraft.cli import app
    from langgraph_taskcraft.nodes.atomic import Conclusions, FormedQuestion
    from langgraph_taskcraft.nodes.verifier import AnswerJudgement

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    question = "In what year was the Eiffel Tower completed?"
    conclusions = {"answer": "1889", "relation": "year the tower was completed"}
    rules = [
        Rule(
            rf"\[tools\] {Conclusions.__name__}",
            tool_call(Conclusions.__name__, identifier="Eiffel Tower", conclusions=[conclusions]),
        ),
        Rule(
            rf"\[tools\] {FormedQuestion.__name__}",
            tool_call(FormedQuestion.__name__, question=question, answer="1889"),
        ),
        # The model alone does not know (default reply); the judge says so, then accepts the
        # tool-using agent's answer.
        Rule(
            rf"I don't know.*\[tools\] {AnswerJudgement.__name__}",
            tool_call(AnswerJudgement.__name__, correct=False, reason="No year given."),
        ),
        Rule(
            rf"\[tools\] {AnswerJudgement.__name__}",
            tool_call(AnswerJudgement.__name__, correct=True, reason="Same year."),
        ),
        Rule(r"\[tools\] search", tool_call("search", query="Eiffel Tower"), after_tool=False),
        Rule(r"\[tools\] search", "1889", after_tool=True),
    ]
    document = tmp_path / "eiffel.txt"
    document.write_text("Eiffel Tower\n\nThe Eiffel Tower in Paris was completed in 1889.\n")
    out = tmp_path / "out" / "tasks.jsonl"
    server = MockOpenAIServer(rules=rules, default="I don't know.")
    with server as base_url:
        arguments = generate_arguments(document, base_url, out, tmp_path / "state", "--no-cache")
        result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    tasks = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(t["question"], t["answer"]) for t in tasks] == [(question, "1889")]
    roles = [m["role"] for m in tasks[0]["trajectory"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert server.stats()["unmatched"] == 0 and server.stats()["replies"] >= 6
