"""Chat models per role, structured output with bounded re-asks, and token accounting.

Nothing here builds a client at import time: models are built on first use, from the context,
and cached per spec so that one run shares connection pools and the rate limiter.
"""

from __future__ import annotations

import asyncio
import importlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.rate_limiters import InMemoryRateLimiter
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, RunnableSequence
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

from langgraph_taskcraft.context import Context, Role
from langgraph_taskcraft.records import TokenUsage, Usage

SchemaT = TypeVar("SchemaT", bound=BaseModel)


class LLMOutputInvalid(Exception):
    """A structured reply still did not parse after the allowed re-asks."""

    reason = "llm_output_invalid"

    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(f"{stage}: the model's reply did not match the schema: {detail}")
        self.stage = stage
        self.detail = detail


@cache
def _builtin_providers() -> frozenset[str]:
    # Asked on every model lookup (each LLM call): build the set once.
    from langchain.chat_models.base import _BUILTIN_PROVIDERS

    return frozenset(_BUILTIN_PROVIDERS)


def is_provider_spec(spec: str) -> bool:
    """`openai:gpt-4.1` is a provider spec; `my_pkg.models:chat` names a Python object."""
    provider, sep, _ = spec.partition(":")
    return bool(sep) and provider in _builtin_providers()


def load_object_model(spec: str) -> BaseChatModel:
    """Resolve `package.module:attribute` to a chat model (an instance, or a factory's result)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not attribute:
        raise ValueError(f"model {spec!r}: expected `provider:model` or `module:attribute`")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"model {spec!r}: {module_name!r} is neither a LangChain provider nor an importable "
            f"module ({exc})"
        ) from exc
    for part in attribute.split("."):
        target = getattr(target, part)
    if not isinstance(target, BaseChatModel) and callable(target):
        target = target()
    if not isinstance(target, BaseChatModel):
        raise TypeError(f"model {spec!r} is a {type(target).__name__}, not a BaseChatModel")
    return target


@lru_cache(maxsize=16)
def _rate_limiter(requests_per_minute: float) -> InMemoryRateLimiter:
    return InMemoryRateLimiter(
        requests_per_second=requests_per_minute / 60.0,
        check_every_n_seconds=0.05,
        max_bucket_size=max(1.0, requests_per_minute / 60.0),
    )


ModelKey = tuple[str, str, float, int, float, float, int | None]

# Models are cached per event loop: an OpenAI client's connection pool belongs to the loop that
# opened it, so a second `asyncio.run` (a notebook, a script calling `run_batch` twice) must not
# reuse it. Outside a loop (sync use) one shared table serves.
_models_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[ModelKey, BaseChatModel]]
_models_by_loop = weakref.WeakKeyDictionary()
_models_outside_loops: dict[ModelKey, BaseChatModel] = {}


def _provider_model(key: ModelKey) -> BaseChatModel:
    from langchain.chat_models import init_chat_model

    spec, base_url, temperature, max_retries, timeout, requests_per_minute, seed = key
    kwargs: dict[str, Any] = {
        "temperature": temperature,
        "max_retries": max_retries,
        "timeout": timeout,
    }
    if spec.partition(":")[0] == "openai":
        import openai

        if base_url:
            kwargs["base_url"] = base_url
        if seed is not None:  # other providers' clients refuse an unknown `seed` argument
            kwargs["seed"] = seed
        # Its own async HTTP client (langchain-openai otherwise shares one across loops).
        kwargs["http_async_client"] = openai.DefaultAsyncHttpxClient(timeout=timeout)
    if requests_per_minute > 0:
        kwargs["rate_limiter"] = _rate_limiter(requests_per_minute)
    return init_chat_model(spec, **kwargs)


def chat_model(context: Context, role: Role) -> BaseChatModel:
    """The chat model configured for a role (built lazily, cached per configuration and loop)."""
    spec = context.model_spec(role)
    if not is_provider_spec(spec):
        return load_object_model(spec)
    key: ModelKey = (
        spec,
        context.base_url,
        float(context.temperature),
        int(context.max_retries),
        float(context.request_timeout),
        float(context.requests_per_minute),
        context.seed,
    )
    try:
        models = _models_by_loop.setdefault(asyncio.get_running_loop(), {})
    except RuntimeError:
        models = _models_outside_loops
    if key not in models:
        models[key] = _provider_model(key)
    return models[key]


def record_usage(usage: Usage, key: str, message: BaseMessage | None) -> None:
    """Count one call (and its tokens, when the provider reports them) under `key`.

    A reply served by LangChain's LLM cache (which marks it with `total_cost: 0`) counts as a
    cached call: its tokens were paid for by the run that cached it.
    """
    entry = usage.setdefault(key, TokenUsage())
    entry.calls += 1
    metadata = getattr(message, "usage_metadata", None) or {}
    if metadata.get("total_cost") == 0:
        entry.cached_calls += 1
        return
    entry.input_tokens += int(metadata.get("input_tokens", 0) or 0)
    entry.output_tokens += int(metadata.get("output_tokens", 0) or 0)


async def ainvoke_text(
    model: BaseChatModel,
    messages: Sequence[BaseMessage],
    *,
    usage: Usage,
    key: str,
) -> str:
    """Plain text reply of a model; usage recorded under `key`."""
    reply = await model.ainvoke(list(messages))
    record_usage(usage, key, reply)
    return message_text(reply)


@dataclass(frozen=True)
class _StructuredCall:
    """A structured-output request split in two: the model call and the parsing of its reply.

    `model.with_structured_output(schema, include_raw=True)` wraps the call in a map, an assign,
    lambdas (run in a thread pool when awaited) and a fallback: several milliseconds of CPU per
    call. Here the model (with the schema bound) is awaited as one traced chat-model call, and
    its reply is parsed in place by the provider's own parser steps.
    """

    model: Runnable
    parser: Runnable | None
    """None: `model` is the `include_raw=True` runnable itself (a shape we could not split)."""

    async def ainvoke(self, prompt: list[BaseMessage]) -> tuple[Any, Any, Exception | None]:
        """(raw reply, parsed value or None, parsing error or None)."""
        if self.parser is None:
            result: dict[str, Any] = await self.model.ainvoke(prompt)
            return result.get("raw"), result.get("parsed"), result.get("parsing_error")
        raw = await self.model.ainvoke(prompt)
        try:
            # No callbacks: the parse is pure CPU, and the run's async handlers would otherwise
            # be driven from this synchronous call in a thread of their own.
            return raw, self.parser.invoke(raw, _NO_CALLBACKS), None
        except Exception as exc:  # any parser failure is a re-ask, as with `include_raw=True`
            return raw, None, exc


_NO_CALLBACKS: RunnableConfig = {"callbacks": []}

_structured_calls: dict[tuple[int, type[BaseModel], str], tuple[BaseChatModel, _StructuredCall]]
_structured_calls = {}


def _precomputed_trace_schema(bound: Runnable) -> Runnable:
    """`bound` with its `ls_structured_output_format` schema converted once, not per call.

    LangChain converts that schema (a pydantic class) to JSON Schema on every call, only to put
    it in the run's tracing metadata; given the OpenAI tool dict it yields the same metadata.
    """
    if not isinstance(bound, RunnableBinding):
        return bound
    trace_format = bound.kwargs.get("ls_structured_output_format")
    if not isinstance(trace_format, dict) or isinstance(trace_format.get("schema"), dict):
        return bound
    try:
        schema = convert_to_openai_tool(trace_format["schema"])
    except Exception:  # noqa: BLE001 - LangChain then leaves the metadata out; so do we
        return bound
    return bound.bind(ls_structured_output_format={**trace_format, "schema": schema})


def _build_structured_call(
    model: BaseChatModel, schema: type[BaseModel], method: str
) -> _StructuredCall:
    options: dict[str, Any] = {}
    # BaseChatModel's generic implementation (tool calling) accepts no `method`; providers do.
    if type(model).with_structured_output is not BaseChatModel.with_structured_output:
        options["method"] = method
    structured = model.with_structured_output(schema, **options)
    # Providers return `model_with_schema | parser steps`; anything else keeps the slow path.
    if isinstance(structured, RunnableSequence) and len(structured.steps) >= 2:
        first, *rest = structured.steps
        parser = rest[0] if len(rest) == 1 else RunnableSequence(*rest)
        return _StructuredCall(_precomputed_trace_schema(first), parser)
    return _StructuredCall(model.with_structured_output(schema, include_raw=True, **options), None)


def _structured_call(model: BaseChatModel, schema: type[BaseModel], method: str) -> _StructuredCall:
    """The structured-output call of `model` for `schema`, built once per model and schema.

    Building it converts the schema to JSON Schema, a noticeable share of the CPU per call.
    """
    key = (id(model), schema, method)
    cached = _structured_calls.get(key)
    if cached is not None and cached[0] is model:
        return cached[1]
    call = _build_structured_call(model, schema, method)
    if len(_structured_calls) >= 64:  # models made afresh by a factory: do not hoard them
        _structured_calls.clear()
    _structured_calls[key] = (model, call)  # holding the model keeps its id unique
    return call


async def ainvoke_structured(
    model: BaseChatModel,
    schema: type[SchemaT],
    messages: Sequence[BaseMessage],
    *,
    context: Context,
    usage: Usage,
    key: str,
) -> SchemaT:
    """Ask for a reply matching `schema`, re-asking a bounded number of times.

    Raises:
        LLMOutputInvalid: when no attempt produced a reply that validates.
    """
    structured = _structured_call(model, schema, context.structured_output_method)
    prompt = list(messages)
    problem = "no reply"
    for _ in range(1 + max(0, int(context.structured_output_retries))):
        raw, parsed, error = await structured.ainvoke(prompt)
        record_usage(usage, key, raw)
        if isinstance(parsed, schema) and error is None:
            return parsed
        problem = str(error or "the reply contained no structured output")
        # Re-ask with the error spelled out; the raw reply is not echoed back because a dangling
        # tool call without its result is invalid input for most providers.
        prompt = [
            *messages,
            HumanMessage(
                f"Your previous reply could not be used ({problem[:500]}). Reply again, calling "
                f"`{schema.__name__}` with arguments that match its schema exactly."
            ),
        ]
    raise LLMOutputInvalid(key, problem)


def message_text(message: BaseMessage | AIMessage) -> str:
    """Text content of a message, whatever the provider's content format."""
    return message.text.strip()
