from __future__ import annotations

import dataclasses

import pytest
from langchain_core.language_models import BaseChatModel

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.llm import chat_model, is_provider_spec, load_object_model
from tests.fakes import ScriptedChatModel

SCRIPTED = ScriptedChatModel(default="hello")


def make_scripted() -> ScriptedChatModel:
    return ScriptedChatModel(default="from a factory")


def test_every_field_has_a_description() -> None:
    from dataclasses import fields

    for f in fields(Context):
        assert f.metadata.get("description"), f.name


def test_environment_fallback_with_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKCRAFT_JUDGE_SAMPLES", "3")
    monkeypatch.setenv("TASKCRAFT_AGENT_MIN_SCORE", "0.75")
    monkeypatch.setenv("TASKCRAFT_VERIFY_FINAL_TASK", "yes")
    monkeypatch.setenv("TASKCRAFT_SEARCH_BACKEND", "tavily")
    context = Context()
    assert context.judge_samples == 3
    assert context.agent_min_score == 0.75
    assert context.verify_final_task is True
    assert context.search_backend == "tavily"
    # An explicit value wins over the environment.
    assert Context(judge_samples=5).judge_samples == 5


def test_environment_value_outside_a_literal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKCRAFT_SEARCH_BACKEND", "bing")
    with pytest.raises(ValueError, match="TASKCRAFT_SEARCH_BACKEND"):
        Context()


def test_model_specs_resolve_providers_and_python_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_provider_spec("openai:gpt-4.1-mini")
    assert is_provider_spec("ollama:qwen3")
    assert not is_provider_spec("tests.test_context:SCRIPTED")
    assert load_object_model("tests.test_context:SCRIPTED") is SCRIPTED
    assert (
        load_object_model("tests.test_context:make_scripted").invoke("x").text == "from a factory"
    )
    with pytest.raises(ValueError, match="neither a LangChain provider"):
        load_object_model("no_such_module_xyz:model")
    with pytest.raises(TypeError, match="not a BaseChatModel"):
        load_object_model("tests.test_context:test_every_field_has_a_description.__name__")


def test_openai_model_uses_base_url_and_is_built_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    context = Context(agent_model="openai:my-local-model", base_url="http://127.0.0.1:9/v1")
    model = chat_model(context, "agent")
    assert isinstance(model, BaseChatModel)
    assert str(model.openai_api_base) == "http://127.0.0.1:9/v1"  # type: ignore[attr-defined]
    assert model.model_name == "my-local-model"  # type: ignore[attr-defined]
    assert chat_model(context, "agent") is model  # one client per configuration


def test_seed_is_sent_with_every_openai_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A seed makes OpenAI-compatible servers (vLLM) sample reproducibly: it must reach them."""
    import asyncio

    from tests.mock_openai_server import MockOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("TASKCRAFT_SEED", "1234")
    seeded = Context(agent_model="openai:mock-model", max_retries=0)
    assert seeded.seed == 1234
    monkeypatch.setenv("TASKCRAFT_SEED", "none")
    assert Context().seed is None
    server = MockOpenAIServer(default="pong")
    with server as base_url:
        for context in (seeded, Context(agent_model="openai:mock-model", max_retries=0)):
            context = dataclasses.replace(context, base_url=base_url)
            asyncio.run(chat_model(context, "agent").ainvoke("ping"))
    assert [request.get("seed") for request in server.requests] == [1234, None]


def test_importing_graphs_builds_no_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    for key in ("OPENAI_API_KEY", "TAVILY_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    for name in [n for n in sys.modules if n.startswith("langgraph_taskcraft.graphs")]:
        monkeypatch.delitem(sys.modules, name)
    taskcraft = importlib.import_module("langgraph_taskcraft.graphs.taskcraft")
    verifier = importlib.import_module("langgraph_taskcraft.graphs.verifier")
    assert taskcraft.graph.name == "taskcraft"
    assert verifier.graph.name == "verifier"


def test_a_second_event_loop_gets_its_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script or notebook that calls `asyncio.run` twice must not reuse a closed loop's pool."""
    import asyncio

    from tests.mock_openai_server import MockOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    with MockOpenAIServer(default="pong") as base_url:
        context = Context(agent_model="openai:mock-model", base_url=base_url, max_retries=0)

        async def ask() -> tuple[BaseChatModel, str]:
            model = chat_model(context, "agent")
            return model, (await model.ainvoke("ping")).text

        first_model, first = asyncio.run(ask())
        second_model, second = asyncio.run(ask())
    assert first == second == "pong"
    assert first_model is not second_model
