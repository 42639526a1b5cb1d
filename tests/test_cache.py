"""`RequestCache`: the SQLite LLM reply cache shared by a run's processes."""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockingError, blockbuster_ctx
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration
from pydantic import BaseModel

from langgraph_taskcraft import cache as cache_module
from langgraph_taskcraft.cache import TABLE, RequestCache, request_key, use_llm_cache
from tests.fakes import Rule, ScriptedChatModel, tool_call

LLM = "[('_type', 'scripted'), ('model', 'm')]"
"""A model-settings string (LangChain's `llm_string`)."""


def prompt_of(*messages: BaseMessage) -> str:
    """The prompt string LangChain hands to a cache for these messages."""
    return dumps(list(messages))


def reply(text: str) -> list[ChatGeneration]:
    return [ChatGeneration(message=AIMessage(text))]


def texts(generations: Any) -> list[str] | None:
    return None if generations is None else [g.text for g in generations]


def stored_rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])


def test_a_stored_reply_is_found_for_the_same_prompt_and_model_only(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "llm.sqlite")
    question = prompt_of(HumanMessage("What is the capital of France?"))
    assert cache.lookup(question, LLM) is None

    cache.update(question, LLM, reply("Paris"))

    assert texts(cache.lookup(question, LLM)) == ["Paris"]
    assert cache.lookup(question, LLM + " temperature=1") is None
    assert cache.lookup(prompt_of(HumanMessage("What is the capital of Spain?")), LLM) is None
    cache.update(question, LLM, reply("Paris, France"))  # the latest reply replaces it
    assert texts(cache.lookup(question, LLM)) == ["Paris, France"]
    assert stored_rows(tmp_path / "llm.sqlite") == 1
    cache.clear()
    assert cache.lookup(question, LLM) is None


def test_a_reply_keeps_its_tool_calls_metadata_and_structured_output(tmp_path: Path) -> None:
    class Capital(BaseModel):
        city: str

    cache = RequestCache(tmp_path / "llm.sqlite")
    message = AIMessage(
        '{"city": "Paris"}',
        tool_calls=[{"name": "search", "args": {"query": "France"}, "id": "call_1"}],
        usage_metadata={"input_tokens": 9, "output_tokens": 4, "total_tokens": 13},
        response_metadata={"model_name": "m", "finish_reason": "stop"},
        additional_kwargs={"parsed": Capital(city="Paris")},  # OpenAI's json_schema output
    )
    generations = [ChatGeneration(message=message, generation_info={"finish_reason": "stop"})]
    cache.update(prompt_of(HumanMessage("capital?")), LLM, generations)

    (found,) = cache.lookup(prompt_of(HumanMessage("capital?")), LLM) or []
    assert isinstance(found, ChatGeneration) and isinstance(found.message, AIMessage)
    assert found.message.tool_calls == message.tool_calls
    assert found.message.usage_metadata == message.usage_metadata
    assert found.message.response_metadata == message.response_metadata
    assert found.generation_info == {"finish_reason": "stop"}
    # The parsed object is stored as the dict that OpenAI's parser turns back into the schema.
    assert found.message.additional_kwargs == {"parsed": {"city": "Paris"}}


def test_the_key_ignores_message_fields_never_sent_to_the_provider() -> None:
    def history(content: str = "a", **fields: Any) -> str:
        return prompt_of(HumanMessage("q"), AIMessage(content, **fields), HumanMessage("more"))

    first_run = history(
        id="run-1",
        usage_metadata={"input_tokens": 5, "output_tokens": 1, "total_tokens": 6},
        response_metadata={"model_name": "m", "system_fingerprint": "fp_1"},
    )
    # A reply read from LangChain's cache carries `total_cost: 0` in its usage metadata.
    from_cache = history(
        id="run-2",
        usage_metadata={"input_tokens": 5, "output_tokens": 1, "total_tokens": 6, "total_cost": 0},
    )
    assert request_key(first_run, LLM) == request_key(from_cache, LLM)
    assert request_key(first_run, LLM) != request_key(history(content="other"), LLM)
    assert request_key(first_run, LLM) != request_key(first_run, LLM + "x")


async def conversation(model: ScriptedChatModel) -> str:
    """An agent's two turns: a tool call, then the answer from the tool's result."""
    history: list[BaseMessage] = [HumanMessage("What is the weather in Paris?")]
    first = await model.ainvoke(history)
    assert isinstance(first, AIMessage)
    history += [first, ToolMessage("sunny, 24 C", tool_call_id=first.tool_calls[0]["id"])]
    return (await model.ainvoke(history)).text


def weather_model(cache: RequestCache) -> ScriptedChatModel:
    return ScriptedChatModel(
        rules=[
            Rule("weather", tool_call("search", query="Paris weather"), after_tool=False),
            Rule("weather", "It is sunny.", after_tool=True),
        ],
        cache=cache,
    )


async def test_a_rerun_of_an_agent_conversation_is_answered_from_the_cache(
    tmp_path: Path,
) -> None:
    first_run = weather_model(RequestCache(tmp_path / "llm.sqlite"))
    assert await conversation(first_run) == "It is sunny."
    assert len(first_run.calls) == 2

    rerun = weather_model(RequestCache(tmp_path / "llm.sqlite"))
    assert await conversation(rerun) == "It is sunny."
    # The second turn's history holds the first reply as read from the cache (another id,
    # `total_cost: 0` in its usage): it still hits.
    assert rerun.calls == []


def read_reply(cache: RequestCache, prompt: str) -> list[str] | None:
    """In a child process: look the prompt up, store a reply of its own."""
    cache.update(prompt_of(HumanMessage("from the child")), LLM, reply("child reply"))
    return texts(cache.lookup(prompt, LLM))


def test_a_pickled_cache_reopens_the_same_file_in_another_process(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "llm.sqlite")
    question = prompt_of(HumanMessage("capital?"))
    cache.update(question, LLM, reply("Paris"))  # the connection is open: it is not pickled

    assert pickle.loads(pickle.dumps(cache)).path == cache.path
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(read_reply, (cache, question)) == ["Paris"]
    assert texts(cache.lookup(prompt_of(HumanMessage("from the child")), LLM)) == ["child reply"]


WRITERS = 4
REPLIES_PER_WRITER = 150
SHARED_PROMPTS = 20


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def write_replies(cache: RequestCache, writer: int, start: Any, results: Any) -> None:
    """In a child process: store replies as fast as possible, alongside the other writers."""
    warnings = Warnings()
    logging.getLogger("langgraph_taskcraft.cache").addHandler(warnings)
    start.wait()
    for index in range(REPLIES_PER_WRITER):
        cache.update(prompt_of(HumanMessage(f"writer {writer} #{index}")), LLM, reply(str(index)))
        if index < SHARED_PROMPTS:  # every writer also stores the same prompts
            cache.update(prompt_of(HumanMessage(f"shared #{index}")), LLM, reply(f"w{writer}"))
    results.put((writer, warnings.messages))


def test_processes_writing_at_once_lose_no_reply(tmp_path: Path) -> None:
    path = tmp_path / "llm.sqlite"
    RequestCache(path).update(prompt_of(HumanMessage("before")), LLM, reply("0"))
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(WRITERS), context.Queue()
    writers = [
        context.Process(target=write_replies, args=(RequestCache(path), n, start, results))
        for n in range(WRITERS)
    ]
    for process in writers:
        process.start()
    reports = dict(results.get(timeout=120) for _ in writers)
    for process in writers:
        process.join(timeout=30)
        assert process.exitcode == 0

    assert reports == {n: [] for n in range(WRITERS)}  # no "reply not stored" anywhere
    assert stored_rows(path) == 1 + WRITERS * REPLIES_PER_WRITER + SHARED_PROMPTS
    cache = RequestCache(path)
    for writer in range(WRITERS):
        for index in range(REPLIES_PER_WRITER):
            found = cache.lookup(prompt_of(HumanMessage(f"writer {writer} #{index}")), LLM)
            assert texts(found) == [str(index)]


@pytest.mark.parametrize("damage", ["garbage", "folder"])
async def test_an_unusable_cache_file_is_reported_once_and_the_run_goes_on_uncached(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "llm.sqlite"
    if damage == "garbage":
        path.write_bytes(b"this is not an SQLite database, whatever its name says\n" * 200)
    else:
        path.mkdir()  # a path that cannot be opened as a file
    cache = RequestCache(path)
    model = ScriptedChatModel(rules=[Rule("capital", "Paris")], cache=cache)

    with caplog.at_level(logging.WARNING, logger="langgraph_taskcraft.cache"):
        assert (await model.ainvoke("What is the capital of France?")).text == "Paris"
        if damage == "garbage":  # left as it was, for the user to look at or delete
            assert path.read_bytes().startswith(b"this is not an SQLite database")
            path.unlink()
        else:
            path.rmdir()
        # The cache stays off for the rest of the run: it does not try the file on every call.
        for _ in range(2):
            assert (await model.ainvoke("What is the capital of France?")).text == "Paris"
        cache.update(prompt_of(HumanMessage("q")), LLM, reply("a"))
        assert cache.lookup(prompt_of(HumanMessage("q")), LLM) is None

    assert len(model.calls) == 3  # every call was sent, and none failed
    assert not path.exists()
    warnings = [r.getMessage() for r in caplog.records if r.name == "langgraph_taskcraft.cache"]
    assert len(warnings) == 1 and "cannot be used" in warnings[0], warnings


def test_a_file_locked_too_long_skips_the_write_once_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "llm.sqlite"
    cache = RequestCache(path)
    question = prompt_of(HumanMessage("capital?"))
    cache.update(question, LLM, reply("Paris"))
    monkeypatch.setattr(cache_module, "BUSY_TIMEOUT_MS", 50)
    cache = RequestCache(path)  # opens with the short timeout
    other_process = sqlite3.connect(path, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        with caplog.at_level(logging.WARNING, logger="langgraph_taskcraft.cache"):
            for index in range(3):
                cache.update(prompt_of(HumanMessage(f"q{index}")), LLM, reply("a"))
            assert texts(cache.lookup(question, LLM)) == ["Paris"]  # WAL: reads go on
    finally:
        other_process.execute("ROLLBACK")
        other_process.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "langgraph_taskcraft.cache"]
    assert len(warnings) == 1 and "database is locked" in warnings[0], warnings
    # Only those replies went uncached: the cache is still on.
    assert cache.lookup(prompt_of(HumanMessage("q0")), LLM) is None
    cache.update(prompt_of(HumanMessage("q0")), LLM, reply("a"))
    assert texts(cache.lookup(prompt_of(HumanMessage("q0")), LLM)) == ["a"]


def test_an_old_langchain_sqlite_cache_table_in_the_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "llm_cache.sqlite"
    question = prompt_of(HumanMessage("capital?"))
    old_reply = dumps(ChatGeneration(message=AIMessage("old reply")))
    # The table LangChain-community's SQLiteCache created, with a reply for the same request.
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE full_llm_cache (prompt VARCHAR NOT NULL, llm VARCHAR NOT NULL,"
            " idx INTEGER NOT NULL, response VARCHAR, PRIMARY KEY (prompt, llm, idx))"
        )
        connection.execute(
            "INSERT INTO full_llm_cache VALUES (?, ?, 0, ?)", (question, LLM, old_reply)
        )
    connection.close()

    cache = RequestCache(path)
    assert cache.lookup(question, LLM) is None
    cache.update(question, LLM, reply("new reply"))
    assert texts(cache.lookup(question, LLM)) == ["new reply"]
    cache.clear()
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT prompt, llm, response FROM full_llm_cache").fetchall()
    connection.close()
    assert rows == [(question, LLM, old_reply)]


async def test_async_lookups_and_updates_never_block_the_event_loop(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "llm.sqlite")
    model = ScriptedChatModel(rules=[Rule("capital", "Paris")], cache=cache)
    question = prompt_of(HumanMessage("capital?"))

    with blockbuster_ctx(["langgraph_taskcraft", "langchain_core", "tests"]):
        # The detector is on: SQLite work on the loop's thread would raise.
        with pytest.raises(BlockingError):
            cache.lookup(question, LLM)
        assert await cache.alookup(question, LLM) is None
        await cache.aupdate(question, LLM, reply("Paris"))
        assert texts(await cache.alookup(question, LLM)) == ["Paris"]
        # Through a chat model: a miss (sent, stored), then a hit.
        for _ in range(2):
            assert (await model.ainvoke("What is the capital of France?")).text == "Paris"
        await cache.aclear()
    assert len(model.calls) == 1
    assert cache.lookup(question, LLM) is None


def test_use_llm_cache_sets_the_global_cache_for_the_block_only(tmp_path: Path) -> None:
    previous = get_llm_cache()
    try:
        set_llm_cache(None)
        with use_llm_cache(tmp_path):
            cache = get_llm_cache()
            assert isinstance(cache, RequestCache)
            assert cache.path == str((tmp_path / "llm_cache.sqlite").resolve())
            with use_llm_cache(None):
                assert get_llm_cache() is None
            assert get_llm_cache() is cache
        assert get_llm_cache() is None
    finally:
        set_llm_cache(previous)


def test_a_forked_process_opens_its_own_connection_and_leaves_the_parents_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = RequestCache(tmp_path / "llm.sqlite")
    cache.update(prompt_of(HumanMessage("q")), LLM, reply("a"))
    parents = cache._connection
    assert parents is not None

    monkeypatch.setattr(cache_module.os, "getpid", lambda: -1)  # as seen from a forked child
    assert texts(cache.lookup(prompt_of(HumanMessage("q")), LLM)) == ["a"]

    assert cache._connection is not parents
    # Kept open for the process's life: closing it in the child could disturb the parent's
    # locks on the file.
    assert any(kept is parents for kept in cache_module._inherited_connections)
    assert parents.execute("SELECT 1").fetchone() == (1,)
    cache_module._inherited_connections.remove(parents)
