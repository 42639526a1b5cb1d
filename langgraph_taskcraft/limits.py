"""Run-wide limits on LLM calls: requests in flight and tokens per minute, across every model.

`LLMLimits` is a LangChain callback handler. Passed in a run's config (`callbacks`), it sees
every chat-model call of the graph, nested agents and tools included, whatever the model or
provider: before a request it waits for a slot (at most `max_calls` in flight) and for its
estimated prompt tokens in a shared token bucket (`tokens_per_minute`); after the reply it frees
the slot and corrects the bucket with the tokens the provider reported. Requests per minute are
limited by the models' own rate limiter (`Context.requests_per_minute`, see `llm.py`).

The handler runs inline (`run_inline`), in the task that makes the call, so the wait really
happens before the request. A call cancelled mid-way gets no end callback from LangChain; its
slot is then freed when the task that made the call finishes.

Limits hold per process and event loop (`llm_limits`); the Ray executor splits the run's budgets
evenly among its workers, so the totals hold for the whole run.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

CHARS_PER_TOKEN = 4.0
"""Rough characters per token of English text and JSON, for estimating a prompt's size."""

TOKENS_PER_MESSAGE = 4
"""Per-message overhead of chat formats (role markers, separators)."""

TOKENS_PER_IMAGE = 800
"""Estimated tokens of one image block (a 1024-pixel image in most providers' tiling)."""

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


def _content_size(content: Any) -> tuple[int, int]:
    """(characters of text, images) in a message content (a string or a list of blocks)."""
    if isinstance(content, str):
        return len(content), 0
    chars = images = 0
    for block in content if isinstance(content, list) else [content]:
        if isinstance(block, str):
            chars += len(block)
        elif isinstance(block, Mapping):
            kind = str(block.get("type", ""))
            if kind in ("image", "image_url") or "image" in kind:
                images += 1
            elif isinstance(block.get("text"), str):
                chars += len(block["text"])
            else:
                chars += len(json.dumps(block, default=str))
    return chars, images


_sizes_by_id: dict[int, tuple[Any, int]] = {}


def _serialised_size(value: Any) -> int:
    """Characters of `value` as JSON, remembered per object.

    A bound model passes the same tool list with every call; serialising it each time cost more
    than the rest of the estimate.
    """
    cached = _sizes_by_id.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    size = len(json.dumps(value, default=str))
    if len(_sizes_by_id) >= 256:
        _sizes_by_id.clear()
    _sizes_by_id[id(value)] = (value, size)  # holding the value keeps its id unique
    return size


def estimate_prompt_tokens(
    messages: Sequence[BaseMessage], invocation_params: Mapping[str, Any] | None = None
) -> int:
    """Estimated input tokens of a chat request: its messages, tool calls and tool schemas.

    Characters / `CHARS_PER_TOKEN` plus a small per-message overhead and a flat size per image:
    an estimate that only has to be close, since the bucket is corrected with the real usage.
    """
    chars = 0
    images = 0
    for message in messages:
        text_chars, message_images = _content_size(message.content)
        chars += text_chars
        images += message_images
        for call in getattr(message, "tool_calls", None) or []:
            chars += len(str(call.get("name", ""))) + len(json.dumps(call.get("args", {})))
    tools = (invocation_params or {}).get("tools")
    if tools:
        chars += _serialised_size(tools)
    return (
        math.ceil(chars / CHARS_PER_TOKEN)
        + TOKENS_PER_MESSAGE * len(messages)
        + TOKENS_PER_IMAGE * images
    )


def reported_tokens(response: LLMResult) -> tuple[int, int, bool]:
    """(input tokens, output tokens, served from the LLM cache) of a chat model's reply."""
    input_tokens = output_tokens = 0
    cached = False
    for generations in response.generations:
        for generation in generations:
            metadata = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if not metadata:
                continue
            input_tokens += int(metadata.get("input_tokens", 0) or 0)
            output_tokens += int(metadata.get("output_tokens", 0) or 0)
            # LangChain marks replies taken from its cache with a zero `total_cost`.
            cached = cached or metadata.get("total_cost", None) == 0
    return input_tokens, output_tokens, cached


class TokenBucket:
    """A token bucket refilled at `tokens_per_minute`, holding at most one minute's worth.

    `acquire(n)` waits (first come, first served) until the bucket holds `n` tokens and takes
    them; a request larger than the bucket waits for a full bucket and leaves it in debt, so it
    is never stuck. `adjust(n)` charges `n` more tokens (negative: gives tokens back) once the
    real usage of a request is known; the level may go below zero, and later requests wait for
    the debt to be paid back.
    """

    def __init__(
        self,
        tokens_per_minute: float,
        *,
        capacity: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if tokens_per_minute <= 0:
            raise ValueError(f"tokens_per_minute must be positive, got {tokens_per_minute}")
        self.rate = tokens_per_minute / 60.0
        self.capacity = float(capacity if capacity is not None else tokens_per_minute)
        self._clock = clock
        self._sleep = sleep
        self._level = self.capacity
        self._updated = clock()
        self._queue = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
        self._updated = now

    @property
    def level(self) -> float:
        """Tokens available now (negative while in debt)."""
        self._refill()
        return self._level

    async def acquire(self, tokens: float) -> None:
        """Wait until `tokens` are available, then take them."""
        needed = min(max(0.0, tokens), self.capacity)
        async with self._queue:
            while True:
                self._refill()
                if self._level >= needed:
                    self._level -= max(0.0, tokens)
                    return
                await self._sleep((needed - self._level) / self.rate)

    def adjust(self, tokens: float) -> None:
        """Charge `tokens` more (or give back, when negative) without waiting."""
        self._refill()
        self._level = min(self.capacity, self._level - tokens)


@dataclass
class _Lease:
    estimate: int
    task: asyncio.Task[Any] | None
    on_task_done: Callable[[asyncio.Task[Any]], None] | None


@dataclass
class LLMStats:
    """What the handler has seen: requests, cache hits, reported tokens, concurrency."""

    calls: int = 0
    """Chat-model calls started (cache hits included)."""
    cached: int = 0
    """Calls answered from the LLM cache (no request sent)."""
    failed: int = 0
    input_tokens: int = 0
    """Reported input tokens of the calls that were sent (cache hits excluded)."""
    output_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


class LLMLimits(AsyncCallbackHandler):
    """Bounds every chat-model call of a run: `max_calls` in flight, `tokens_per_minute`.

    0 disables a limit; with both disabled the handler only counts (`stats`). Use it in the
    config of a graph run: `graph.ainvoke(input, {"callbacks": [limits]})`. It must be used on
    the event loop it was created on (calls from other loops, e.g. synchronous `invoke` in a
    worker thread, pass without limits).
    """

    run_inline = True  # awaited in the caller's task, before the request is sent

    def __init__(
        self,
        max_calls: int = 0,
        tokens_per_minute: float = 0.0,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.max_calls = max(0, int(max_calls))
        self.tokens_per_minute = max(0.0, float(tokens_per_minute))
        self._slots = asyncio.Semaphore(self.max_calls) if self.max_calls else None
        self._bucket = (
            TokenBucket(self.tokens_per_minute, clock=clock, sleep=sleep)
            if self.tokens_per_minute
            else None
        )
        self._leases: dict[UUID, _Lease] = {}
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self.stats = LLMStats()

    @property
    def bucket(self) -> TokenBucket | None:
        """The shared token bucket (None without a tokens-per-minute limit)."""
        return self._bucket

    def _on_this_loop(self) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._loop is None:
            self._loop = loop
        return loop is self._loop

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Wait for a slot and for the request's estimated tokens."""
        if not self._on_this_loop():
            return
        # The estimate only feeds the token bucket: without one, skip it (it serialises the
        # request's tool schemas, a noticeable share of the CPU per call).
        estimate = (
            sum(estimate_prompt_tokens(m, invocation_params) for m in messages)
            if self._bucket is not None
            else 0
        )
        if self._slots is not None:
            await self._slots.acquire()
        try:
            if self._bucket is not None:
                await self._bucket.acquire(estimate)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise
        task = asyncio.current_task()
        on_task_done = None
        if task is not None:
            # A cancelled call gets no end callback: free its slot when its task ends.
            def on_task_done(_: asyncio.Task[Any], run_id: UUID = run_id) -> None:
                self._finish(run_id)

            task.add_done_callback(on_task_done)
        self._leases[run_id] = _Lease(estimate, task, on_task_done)
        self.stats.calls += 1
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)

    def _finish(self, run_id: UUID) -> _Lease | None:
        lease = self._leases.pop(run_id, None)
        if lease is None:
            return None
        if lease.task is not None and lease.on_task_done is not None:
            lease.task.remove_done_callback(lease.on_task_done)
        self.stats.in_flight -= 1
        if self._slots is not None:
            self._slots.release()
        return lease

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Free the slot; correct the bucket with the reported usage (a cache hit is free)."""
        lease = self._finish(run_id)
        if lease is None:
            return
        input_tokens, output_tokens, cached = reported_tokens(response)
        if cached:
            self.stats.cached += 1
            used = 0
        else:
            self.stats.input_tokens += input_tokens
            self.stats.output_tokens += output_tokens
            # Without reported usage the estimate stands.
            used = input_tokens + output_tokens if input_tokens or output_tokens else lease.estimate
        if self._bucket is not None:
            self._bucket.adjust(used - lease.estimate)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Free the slot; the estimate stays charged (the request was probably sent)."""
        if self._finish(run_id) is not None:
            self.stats.failed += 1


_limits_by_loop: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, float], LLMLimits]
] = weakref.WeakKeyDictionary()


def llm_limits(context: Any) -> LLMLimits:
    """The process-wide `LLMLimits` of a run configuration on the running event loop.

    Every run with the same `max_llm_calls` and `tokens_per_minute` on this loop shares one
    handler, so the limits hold across all documents in flight.
    """
    loop = asyncio.get_running_loop()
    key = (
        int(getattr(context, "max_llm_calls", 0) or 0),
        float(getattr(context, "tokens_per_minute", 0.0) or 0.0),
    )
    handlers = _limits_by_loop.setdefault(loop, {})
    if key not in handlers:
        handlers[key] = LLMLimits(*key)
    return handlers[key]


def with_callback(config: Mapping[str, Any], handler: Any) -> dict[str, Any]:
    """A copy of a runnable config with `handler` added to its callbacks (once)."""
    updated = dict(config)
    callbacks = updated.get("callbacks")
    if callbacks is None:
        updated["callbacks"] = [handler]
    elif isinstance(callbacks, list):
        if handler not in callbacks:
            updated["callbacks"] = [*callbacks, handler]
    else:  # a callback manager
        manager = callbacks.copy()
        if handler not in manager.handlers:
            manager.add_handler(handler, inherit=True)
        updated["callbacks"] = manager
    return updated
