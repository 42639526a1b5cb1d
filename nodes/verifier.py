"""Verification of a question (the paper's verifier): an LLM alone must fail, an agent must succeed.

Stages, each a graph node:

1. `answer_without_tools`: the agent model answers from memory, with no tools.
2. `judge_llm_only`: the judge compares that answer with the golden answer
   (`judge_samples` verdicts). If the model alone already scores at least `llm_only_max_score`
   the task does not need tools: rejected `answered_without_tools`, and the agent is skipped.
3. `run_agent`: a tool-using ReAct agent answers within `agent_max_steps` model calls; its
   messages are kept as an OpenAI-format trajectory. The loop is `langchain.agents.create_agent`'s
   (with `ModelCallLimitMiddleware`), run inline with the tools bound once per run; tools that
   need injected arguments (state, runtime) run through `create_agent` itself.
4. `judge_agent`: accepted only when the agent scores at least `agent_min_score`, else rejected
   `agent_failed`. (The paper's official code never checks the agent's score; we do.)

A judge reply that never parses rejects with `llm_output_invalid`. Provider errors propagate:
the caller records them as a per-item error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    convert_to_openai_messages,
)
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field, ValidationError

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.llm import (
    LLMOutputInvalid,
    ainvoke_structured,
    ainvoke_text,
    chat_model,
    message_text,
    record_usage,
)
from langgraph_taskcraft.prompts import load, render
from langgraph_taskcraft.records import DocumentRecord, Usage, Verification, merge_usage

LLM_ONLY_ANSWER_KEY = "agent:llm_only_answer"
LLM_ONLY_JUDGEMENT_KEY = "judge:llm_only_judgement"
AGENT_RUN_KEY = "agent:agent_run"
AGENT_JUDGEMENT_KEY = "judge:agent_judgement"

STEP_LIMIT_REACHED = "step limit reached"

_ResultT = TypeVar("_ResultT")


class AnswerJudgement(BaseModel):
    """The judge's verdict on one answer."""

    correct: bool = Field(
        description="True when the answer states the same fact as the golden one."
    )
    reason: str = Field(description="One sentence explaining the verdict.")


class VerifierInput(BaseModel):
    """Input of the `verifier` graph: a question, its golden answer, the documents to search."""

    question: str = Field(description="The question to verify.")
    golden_answer: str = Field(description="The answer the question must lead to.")
    documents: list[DocumentRecord] = Field(
        default_factory=list,
        description="Documents the agent's local search indexes when `corpus_path` is empty.",
    )


class VerifierOutput(BaseModel):
    """What the `verifier` graph returns."""

    verification: Verification | None = None


class VerifierState(VerifierInput, VerifierOutput):
    """Full state of the `verifier` graph: the input, each stage's findings, the verdict."""

    llm_only_answer: str | None = None
    llm_only_score: float | None = None
    llm_only_reasons: list[str] = Field(default_factory=list)
    agent_answer: str | None = None
    agent_steps: int = 0
    agent_step_limit_reached: bool = False
    trajectory: list[dict[str, Any]] = Field(default_factory=list)
    usage: Annotated[Usage, merge_usage] = Field(default_factory=dict)


# Tools for the agent that replace `build_tools` within the current (async) context. A
# ContextVar keeps the graph state serialisable (the server never sees tool objects) while a
# caller, typically a test or `verify(tools=...)`, can still supply its own tools.
_agent_tools_override: ContextVar[Sequence[BaseTool] | None] = ContextVar(
    "taskcraft_agent_tools_override", default=None
)


@contextlib.contextmanager
def override_agent_tools(tools: Sequence[BaseTool]) -> Iterator[None]:
    """Give the verifier agent `tools` instead of `build_tools(...)` inside this block.

    Applies to verifier graphs invoked from the current task (and the tasks it starts).
    """
    token = _agent_tools_override.set(tools)
    try:
        yield
    finally:
        _agent_tools_override.reset(token)


async def answer_without_tools(state: VerifierState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Ask the agent model for an answer with no tools at all."""
    usage: Usage = {}
    prompt = render("verifier_answer_without_tools", question=state.question)
    answer = await ainvoke_text(
        chat_model(runtime.context, "agent"),
        [HumanMessage(prompt)],
        usage=usage,
        key=LLM_ONLY_ANSWER_KEY,
    )
    return {"llm_only_answer": answer, "usage": usage}


async def judge_llm_only(state: VerifierState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Judge the tool-less answer; reject the task when the model alone already answers it."""
    context = runtime.context
    usage: Usage = {}
    try:
        score, reasons = await judge_answer(
            state.question,
            state.golden_answer,
            state.llm_only_answer or "",
            context=context,
            usage=usage,
            key=LLM_ONLY_JUDGEMENT_KEY,
        )
    except LLMOutputInvalid as exc:
        verification = _verification(
            state,
            usage,
            accepted=False,
            reason=LLMOutputInvalid.reason,
            llm_only_reasons=[str(exc)],
        )
        return {"usage": usage, "verification": verification}
    update: dict[str, Any] = {
        "llm_only_score": score,
        "llm_only_reasons": reasons,
        "usage": usage,
    }
    if score >= context.llm_only_max_score:
        update["verification"] = _verification(
            state,
            usage,
            accepted=False,
            reason="answered_without_tools",
            llm_only_score=score,
            llm_only_reasons=reasons,
        )
    return update


def route_after_llm_only(state: VerifierState) -> Literal["run_agent", "__end__"]:
    """Run the agent only when the tool-less judgement left the task undecided."""
    return "__end__" if state.verification is not None else "run_agent"


async def run_agent(state: VerifierState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Let a tool-using ReAct agent answer the question within `agent_max_steps` model calls."""
    context = runtime.context
    max_steps = max(1, int(context.agent_max_steps))
    tools = _agent_tools_override.get()
    if tools is None:
        tools = await _default_tools(context, state.documents)
    system_prompt = load("verifier_agent").strip()
    model = chat_model(context, "agent")
    question = HumanMessage(state.question)
    request = AgentRequest(model, tools, system_prompt, question, max_steps)
    if any(_injects_arguments(tool) for tool in tools):
        run = await _run_create_agent(request)
    else:
        run = await _run_react_loop(request)
    messages, model_replies, step_limit_reached = run
    usage: Usage = {}
    for reply in model_replies:
        record_usage(usage, AGENT_RUN_KEY, reply)
    final = model_replies[-1] if model_replies else None
    answer = None
    if not step_limit_reached and final is not None and not final.tool_calls:
        answer = message_text(final)
    trajectory = convert_to_openai_messages([SystemMessage(system_prompt), *messages])
    return {
        "agent_answer": answer,
        "agent_steps": len(model_replies),
        "agent_step_limit_reached": step_limit_reached,
        "trajectory": trajectory,
        "usage": usage,
    }


AgentRun = tuple[list[BaseMessage], list[AIMessage], bool]
"""(messages after the system prompt, the model's replies, whether the step limit ended it)."""


@dataclass(frozen=True)
class AgentRequest:
    """One agent run: the model, its tools and prompt, the question, the model-call limit."""

    model: BaseChatModel
    tools: Sequence[BaseTool]
    system_prompt: str
    question: HumanMessage
    max_steps: int


async def _run_react_loop(request: AgentRequest) -> AgentRun:
    """The ReAct loop of `create_agent` with a model-call limit, without a graph per run.

    Same messages as `create_agent(model, tools, system_prompt=...)` with
    `ModelCallLimitMiddleware(run_limit=max_steps, exit_behavior="end")`: the model is called
    with the system prompt and the conversation; the tool calls of each reply run concurrently
    (errors come back as `ToolNode` words them); the run ends at a reply without tool calls or
    after `max_steps` model calls (the last step's tools still run). Tools are bound once per
    run (`create_agent` binds them on every model call) and no agent graph is compiled and
    stepped: that was a large share of the CPU per LLM call.
    """
    bound = request.model.bind_tools(list(request.tools))
    tools_by_name = {tool.name: tool for tool in request.tools}
    system = SystemMessage(request.system_prompt)
    messages: list[BaseMessage] = [request.question]
    replies: list[AIMessage] = []
    while len(replies) < request.max_steps:
        reply = await bound.ainvoke([system, *messages])
        if not isinstance(reply, AIMessage):
            raise TypeError(f"the agent model returned a {type(reply).__name__}, not a message")
        replies.append(reply)
        messages.append(reply)
        if not reply.tool_calls:
            return messages, replies, False
        results = await _gather_or_cancel(
            [_call_tool(tools_by_name, call) for call in reply.tool_calls]
        )
        messages.extend(results)
    return messages, replies, True


async def _call_tool(tools_by_name: dict[str, BaseTool], call: ToolCall) -> ToolMessage:
    """Run one tool call as `ToolNode` does: unknown tools and invalid arguments are answered
    with an error message for the model; any other exception propagates."""
    from langgraph.prebuilt.tool_node import INVALID_TOOL_NAME_ERROR_TEMPLATE, ToolInvocationError

    tool = tools_by_name.get(call["name"])
    if tool is None:
        content = INVALID_TOOL_NAME_ERROR_TEMPLATE.format(
            requested_tool=call["name"], available_tools=", ".join(tools_by_name)
        )
        return ToolMessage(content, name=call["name"], tool_call_id=call["id"], status="error")
    try:
        result = await tool.ainvoke({**call, "type": "tool_call"})
    except ValidationError as exc:
        error = ToolInvocationError(call["name"], exc, call["args"], exc.errors(include_url=False))
        return ToolMessage(
            error.message, name=call["name"], tool_call_id=call["id"], status="error"
        )
    if isinstance(result, ToolMessage):
        return result
    return ToolMessage(str(result), name=call["name"], tool_call_id=call["id"])


def _injects_arguments(tool: BaseTool) -> bool:
    """Whether a tool takes arguments the model does not write (state, runtime, store).

    Only `create_agent`'s `ToolNode` fills those in; such tools take that slower path.
    """
    if isinstance(tool.args_schema, dict):
        return False
    try:
        call_schema = tool.tool_call_schema  # memoised per tool; binding needs it anyway
        if isinstance(call_schema, dict):
            return False
        if not issubclass(call_schema, BaseModel):
            return True  # pydantic v1 schemas: left to ToolNode
        input_schema = tool.get_input_schema()
        if not issubclass(input_schema, BaseModel):
            return True
        return set(call_schema.model_fields) != set(input_schema.model_fields)
    except Exception:  # noqa: BLE001 - in doubt, let ToolNode handle it
        return True


async def _run_create_agent(request: AgentRequest) -> AgentRun:
    """The same run with `langchain.agents.create_agent` (for tools with injected arguments)."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelCallLimitMiddleware

    max_steps = request.max_steps
    agent = create_agent(
        request.model,
        list(request.tools),
        system_prompt=request.system_prompt,
        middleware=[ModelCallLimitMiddleware(run_limit=max_steps, exit_behavior="end")],
        # One-shot run: never persist it into (or resume it from) a caller's checkpointer.
        checkpointer=False,
    )
    result = await agent.ainvoke(
        {"messages": [request.question]},
        # Each model call takes a few supersteps (limit check, model, counter, tools).
        config={"recursion_limit": 6 * max_steps + 10, "run_name": "verifier_agent"},
    )
    messages: list[BaseMessage] = list(result["messages"])
    model_replies = [m for m in messages if isinstance(m, AIMessage)]
    step_limit_reached = len(model_replies) > max_steps
    if step_limit_reached:
        # The limit middleware ends the run by appending a message of its own, which no model
        # wrote: it is dropped from the steps, the usage and the trajectory.
        injected = model_replies.pop()
        messages = [m for m in messages if m is not injected]
    return messages, model_replies, step_limit_reached


async def _default_tools(
    context: Context, documents: Sequence[DocumentRecord]
) -> Sequence[BaseTool]:
    """The configured tools (search, open_page, read_pdf, inspect_image) for this run."""
    from langgraph_taskcraft.tools import build_tools

    # Building tools may read a corpus and index it: keep that off the event loop.
    return await asyncio.to_thread(build_tools, context, documents)


async def judge_agent(state: VerifierState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Judge the agent's answer: accepted when it scores at least `agent_min_score`."""
    context = runtime.context
    usage: Usage = {}
    if not state.agent_answer:
        detail = STEP_LIMIT_REACHED if state.agent_step_limit_reached else "no final answer"
        verification = _verification(
            state, usage, accepted=False, reason="agent_failed", agent_reasons=[detail]
        )
        return {"verification": verification}
    try:
        score, reasons = await judge_answer(
            state.question,
            state.golden_answer,
            state.agent_answer,
            context=context,
            usage=usage,
            key=AGENT_JUDGEMENT_KEY,
        )
    except LLMOutputInvalid as exc:
        verification = _verification(
            state, usage, accepted=False, reason=LLMOutputInvalid.reason, agent_reasons=[str(exc)]
        )
        return {"usage": usage, "verification": verification}
    accepted = score >= context.agent_min_score
    verification = _verification(
        state,
        usage,
        accepted=accepted,
        reason=None if accepted else "agent_failed",
        agent_score=score,
        agent_reasons=reasons,
    )
    return {"usage": usage, "verification": verification}


async def judge_answer(
    question: str,
    golden_answer: str,
    answer: str,
    *,
    context: Context,
    usage: Usage,
    key: str,
) -> tuple[float, list[str]]:
    """Score `answer` against `golden_answer`: the share of `judge_samples` correct verdicts.

    An empty answer scores 0 without asking the judge.

    Raises:
        LLMOutputInvalid: when a verdict never parsed.
    """
    if not answer.strip():
        return 0.0, ["empty answer"]
    model = chat_model(context, "judge")
    prompt = render(
        "verifier_judge_answer",
        question=question,
        golden_answer=golden_answer,
        candidate_answer=answer,
    )
    samples = max(1, int(context.judge_samples))
    # Each sample's prompt names its number: the samples stay independent draws even when an
    # LLM cache would otherwise return the first verdict for all of them.
    verdicts = await _gather_or_cancel(
        [
            ainvoke_structured(
                model,
                AnswerJudgement,
                [
                    HumanMessage(
                        prompt if samples == 1 else f"{prompt}\n\n(Verdict {i} of {samples}.)"
                    )
                ],
                context=context,
                usage=usage,
                key=key,
            )
            for i in range(1, samples + 1)
        ]
    )
    correct = sum(1 for verdict in verdicts if verdict.correct)
    return correct / samples, [verdict.reason for verdict in verdicts]


async def _gather_or_cancel(calls: Sequence[Awaitable[_ResultT]]) -> list[_ResultT]:
    """Await all calls concurrently; on the first failure cancel the rest, then re-raise.

    Unlike a TaskGroup the original exception (not an ExceptionGroup) reaches the caller, so
    `LLMOutputInvalid` and provider errors keep their type.
    """
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _verification(state: VerifierState, usage: Usage, **fields: Any) -> Verification:
    """The verdict record: what the state holds so far, this node's findings and all usage."""
    values: dict[str, Any] = {
        "llm_only_answer": state.llm_only_answer,
        "llm_only_score": state.llm_only_score,
        "llm_only_reasons": state.llm_only_reasons,
        "agent_answer": state.agent_answer,
        "agent_steps": state.agent_steps,
        "trajectory": state.trajectory,
        "usage": merge_usage(state.usage, usage),
    }
    values.update(fields)
    return Verification(**values)


def rejection_detail(verification: Verification) -> str:
    """A short human-readable explanation of a rejection, e.g. for `Rejection.detail`."""
    if verification.accepted:
        return ""
    if verification.reason == "agent_failed" or verification.agent_reasons:
        reasons = verification.agent_reasons
    else:
        reasons = verification.llm_only_reasons
    return "; ".join(reason for reason in reasons if reason)


_isolated_graph: Any = None


def _verifier_graph() -> Any:
    """The compiled `verifier` graph without a checkpointer."""
    global _isolated_graph
    if _isolated_graph is None:
        from langgraph_taskcraft.graphs.verifier import graph

        # Called from a node of a checkpointed graph, the verifier would otherwise inherit the
        # caller's checkpointer and store every stage of every verification (trajectories
        # included) in the caller's thread; a verification is short and never resumed.
        _isolated_graph = graph.copy(update={"checkpointer": False})
    return _isolated_graph


def _apply(state: VerifierState, update: dict[str, Any]) -> VerifierState:
    """`state` after a node's update, with the graph's reducer for `usage`."""
    if "usage" in update:
        update = {**update, "usage": merge_usage(state.usage, update["usage"])}
    return state.model_copy(update=update)


async def run_verifier_stages(
    question: str,
    golden_answer: str,
    *,
    context: Context,
    documents: Sequence[DocumentRecord] = (),
) -> VerifierState:
    """Run the `verifier` graph's nodes in its order, in this task, without the graph.

    The same nodes, edges and usage reducer as `graphs/verifier.py`; what is saved is a nested
    graph run (its task scheduling, channels and callbacks) per verification, a noticeable share
    of the CPU per LLM call of a batch. Model and tool calls still inherit the caller's config
    (callbacks, limits, tracing) from the running node.
    """
    runtime: Runtime[Context] = Runtime(context=context)
    state = VerifierState(question=question, golden_answer=golden_answer, documents=[*documents])
    state = _apply(state, await answer_without_tools(state, runtime))
    state = _apply(state, await judge_llm_only(state, runtime))
    if route_after_llm_only(state) == "run_agent":
        state = _apply(state, await run_agent(state, runtime))
        state = _apply(state, await judge_agent(state, runtime))
    return state


async def verify(
    question: str,
    golden_answer: str,
    *,
    context: Context,
    documents: Sequence[DocumentRecord] = (),
    config: RunnableConfig | None = None,
    tools: Sequence[BaseTool] | None = None,
) -> Verification:
    """Verify one question with the `verifier` graph's stages and return the verdict.

    Without `config` the stages run inline (`run_verifier_stages`), inheriting the calling
    node's config; with one, the compiled `verifier` graph runs with it.

    Args:
        question: The question to verify.
        golden_answer: The answer it must lead to.
        context: Run configuration (models, judge samples, thresholds, step limit).
        documents: Documents the agent's local search indexes when `corpus_path` is empty.
        config: Runnable config (callbacks, tags) for tracing.
        tools: Tools for the agent instead of `build_tools(context, documents)`.

    Raises:
        Exception: provider errors (after the client's own retries) propagate.
    """
    tools_scope = override_agent_tools(tools) if tools is not None else contextlib.nullcontext()
    with tools_scope:
        if config is None:
            state = await run_verifier_stages(
                question, golden_answer, context=context, documents=documents
            )
            verification = state.verification
        else:
            result = await _verifier_graph().ainvoke(
                VerifierInput(
                    question=question, golden_answer=golden_answer, documents=list(documents)
                ),
                config=config,
                context=context,
            )
            verification = result.get("verification")
    if not isinstance(verification, Verification):
        raise RuntimeError("the verifier graph ended without a verification")
    return verification
