"""Verification of a question (the paper's verifier): an LLM alone must fail, an agent must succeed.

Stages, each a graph node:

1. `answer_without_tools`: the agent model answers from memory, with no tools.
2. `judge_llm_only`: the judge compares that answer with the golden answer
   (`judge_samples` verdicts). If the model alone already scores at least `llm_only_max_score`
   the task does not need tools: rejected `answered_without_tools`, and the agent is skipped.
3. `run_agent`: a tool-using ReAct agent (`langchain.agents.create_agent`) answers within
   `agent_max_steps` model calls; its messages are kept as an OpenAI-format trajectory.
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
from typing import Annotated, Any, Literal, TypeVar

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    convert_to_openai_messages,
)
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

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
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelCallLimitMiddleware

    context = runtime.context
    max_steps = max(1, int(context.agent_max_steps))
    tools = _agent_tools_override.get()
    if tools is None:
        tools = await _default_tools(context, state.documents)
    system_prompt = load("verifier_agent").strip()
    agent = create_agent(
        chat_model(context, "agent"),
        list(tools),
        system_prompt=system_prompt,
        middleware=[ModelCallLimitMiddleware(run_limit=max_steps, exit_behavior="end")],
        # One-shot run: never persist it into (or resume it from) a caller's checkpointer.
        checkpointer=False,
    )
    question = HumanMessage(state.question)
    result = await agent.ainvoke(
        {"messages": [question]},
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


async def verify(
    question: str,
    golden_answer: str,
    *,
    context: Context,
    documents: Sequence[DocumentRecord] = (),
    config: RunnableConfig | None = None,
    tools: Sequence[BaseTool] | None = None,
) -> Verification:
    """Run the `verifier` graph on one question and return its verdict.

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
    global _isolated_graph
    if _isolated_graph is None:
        from langgraph_taskcraft.graphs.verifier import graph

        # Called from a node of a checkpointed graph, the verifier would otherwise inherit the
        # caller's checkpointer and store every stage of every verification (trajectories
        # included) in the caller's thread; a verification is short and never resumed.
        _isolated_graph = graph.copy(update={"checkpointer": False})
    tools_scope = override_agent_tools(tools) if tools is not None else contextlib.nullcontext()
    with tools_scope:
        result = await _isolated_graph.ainvoke(
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
