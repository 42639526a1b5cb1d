"""Run-wide LLM limits: the token bucket (on a fake clock) and the callback handler."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from langgraph_taskcraft.limits import (
    LLMLimits,
    TokenBucket,
    estimate_prompt_tokens,
    llm_limits,
    with_callback,
)


class FakeClock:
    """Time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def reply(input_tokens: int, output_tokens: int, *, cached: bool = False) -> LLMResult:
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }
    if cached:
        usage["total_cost"] = 0  # how LangChain marks a cache hit
    message = AIMessage(content="ok", usage_metadata=usage)
    return LLMResult(generations=[[ChatGeneration(message=message)]])


async def test_bucket_lets_a_minute_of_tokens_through_then_paces() -> None:
    clock = FakeClock()
    bucket = TokenBucket(600, clock=clock, sleep=clock.sleep)  # 10 tokens a second
    await bucket.acquire(400)
    await bucket.acquire(200)
    assert clock.now == 0  # the first minute's worth passes at once
    await bucket.acquire(100)
    assert clock.now == pytest.approx(10.0)  # 100 tokens at 10/s
    await bucket.acquire(50)
    assert clock.now == pytest.approx(15.0)


async def test_bucket_corrections_give_back_and_charge_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(600, clock=clock, sleep=clock.sleep)
    await bucket.acquire(600)
    bucket.adjust(-300)  # the request used 300 fewer tokens than estimated
    assert bucket.level == pytest.approx(300)
    await bucket.acquire(300)
    assert clock.now == 0
    bucket.adjust(200)  # and this one 200 more: the bucket is in debt
    assert bucket.level == pytest.approx(-200)
    await bucket.acquire(100)
    assert clock.now == pytest.approx(30.0)  # 300 tokens to pay back and take


async def test_bucket_never_blocks_a_request_larger_than_a_minute() -> None:
    clock = FakeClock()
    bucket = TokenBucket(600, clock=clock, sleep=clock.sleep)
    await bucket.acquire(100)
    await bucket.acquire(5000)  # waits for a full bucket, then goes into debt
    assert clock.now == pytest.approx(10.0)
    assert bucket.level == pytest.approx(600 - 5000)
    await bucket.acquire(600)
    assert clock.now == pytest.approx(10.0 + (4400 + 600) / 10)


async def test_bucket_serves_waiters_first_come_first_served() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, clock=clock, sleep=clock.sleep)  # 1 token a second
    await bucket.acquire(60)
    order: list[str] = []

    async def take(name: str, tokens: int) -> None:
        await bucket.acquire(tokens)
        order.append(name)

    await asyncio.gather(take("big", 30), take("small", 1))
    assert order == ["big", "small"]
    assert clock.now == pytest.approx(31.0)


def test_prompt_estimate_counts_text_tool_schemas_and_images() -> None:
    plain = estimate_prompt_tokens([HumanMessage("x" * 400)])
    assert plain == 100 + 4
    with_tools = estimate_prompt_tokens(
        [SystemMessage("s" * 40), HumanMessage("x" * 400)],
        {"tools": [{"type": "function", "function": {"name": "search", "parameters": {}}}]},
    )
    assert with_tools > plain + 10
    image = HumanMessage(
        content=[
            {"type": "text", "text": "describe"},
            {"type": "image", "base64": "AAAA" * 1000, "mime_type": "image/png"},
        ]
    )
    assert 800 <= estimate_prompt_tokens([image]) < 900  # an image is not its base64 length


async def test_handler_bounds_calls_in_flight() -> None:
    limits = LLMLimits(max_calls=2)
    answered = [asyncio.Event() for _ in range(3)]

    async def call(number: int) -> None:
        # What LangChain does around a request: start callback, request, end callback.
        run_id = uuid4()
        await limits.on_chat_model_start({}, [[HumanMessage("hello")]], run_id=run_id)
        await answered[number].wait()
        if number == 1:
            await limits.on_llm_error(RuntimeError("429"), run_id=run_id)
        else:
            await limits.on_llm_end(reply(10, 2), run_id=run_id)

    calls = [asyncio.ensure_future(call(number)) for number in range(3)]
    await asyncio.sleep(0.01)
    assert (limits.stats.calls, limits.stats.in_flight) == (2, 2)  # the third one waits
    answered[0].set()
    await asyncio.sleep(0.01)
    assert (limits.stats.calls, limits.stats.in_flight) == (3, 2)
    answered[1].set()
    answered[2].set()
    await asyncio.gather(*calls)
    assert (limits.stats.failed, limits.stats.max_in_flight, limits.stats.in_flight) == (1, 2, 0)


async def test_a_cancelled_call_frees_its_slot_when_its_task_ends() -> None:
    limits = LLMLimits(max_calls=1)
    started = asyncio.Event()

    async def call_then_get_cancelled() -> None:
        # LangChain sends no end callback for a call whose task is cancelled.
        await limits.on_chat_model_start({}, [[HumanMessage("hi")]], run_id=uuid4())
        started.set()
        await asyncio.sleep(60)

    task = asyncio.ensure_future(call_then_get_cancelled())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    run_id = uuid4()
    await asyncio.wait_for(limits.on_chat_model_start({}, [[HumanMessage("hi")]], run_id=run_id), 1)
    await limits.on_llm_end(reply(1, 1), run_id=run_id)
    assert limits.stats.in_flight == 0


async def test_handler_corrects_the_bucket_with_reported_usage_and_refunds_cache_hits() -> None:
    clock = FakeClock()
    limits = LLMLimits(tokens_per_minute=6000, clock=clock, sleep=clock.sleep)
    assert limits.bucket is not None
    prompt: list[list[BaseMessage]] = [[HumanMessage("x" * 4000)]]  # about 1000 tokens
    estimate = estimate_prompt_tokens(prompt[0])
    run_id = uuid4()
    await limits.on_chat_model_start({}, prompt, run_id=run_id)
    assert limits.bucket.level == pytest.approx(6000 - estimate)
    await limits.on_llm_end(reply(1200, 300), run_id=run_id)
    assert limits.bucket.level == pytest.approx(6000 - 1500)
    cached = uuid4()
    await limits.on_chat_model_start({}, prompt, run_id=cached)
    await limits.on_llm_end(reply(1200, 300, cached=True), run_id=cached)
    assert limits.bucket.level == pytest.approx(6000 - 1500)  # a cache hit costs nothing
    assert (limits.stats.cached, limits.stats.input_tokens, limits.stats.output_tokens) == (
        1,
        1200,
        300,
    )


async def test_handler_waits_for_tokens_before_the_request() -> None:
    clock = FakeClock()
    limits = LLMLimits(tokens_per_minute=600, clock=clock, sleep=clock.sleep)
    prompt: list[list[BaseMessage]] = [[HumanMessage("x" * 1600)]]  # 404 tokens estimated
    assert estimate_prompt_tokens(prompt[0]) == 404
    waited = []
    for _ in range(3):
        run_id = uuid4()
        before = clock.now
        await limits.on_chat_model_start({}, prompt, run_id=run_id)
        waited.append(clock.now - before)
        await limits.on_llm_end(reply(400, 100), run_id=run_id)  # 96 more than estimated
    # 10 tokens a second. First: 600 in the bucket, none waited; 196 left, corrected to 100.
    # Second: waits for 304 more, takes 404, corrected to -96. Third: waits for 500.
    assert waited == pytest.approx([0.0, 30.4, 50.0])


async def test_limits_are_shared_per_configuration_and_loop() -> None:
    from langgraph_taskcraft.context import Context

    context = Context(max_llm_calls=3, tokens_per_minute=1000)
    assert llm_limits(context) is llm_limits(Context(max_llm_calls=3, tokens_per_minute=1000))
    assert llm_limits(context) is not llm_limits(Context(max_llm_calls=4))
    config = with_callback({"configurable": {"thread_id": "t"}}, llm_limits(context))
    assert config["callbacks"] == [llm_limits(context)]
    assert with_callback(config, llm_limits(context))["callbacks"] == [llm_limits(context)]
