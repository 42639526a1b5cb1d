"""Width merge: combine verified tasks into one question answered by all of their answers.

Each attempt (up to `max_width_attempts`):

1. the generator writes one question asking every member's question at once; its answer is the
   members' answers, in order, joined with "; " (built here, never by a model, so every merged
   task carries exactly its own members' answers);
2. no member's answer may appear in the question;
3. the judge splits the question into sub-questions and confirms they are the members' questions
   and nothing else;
4. the agent model alone (no tools) must fail to answer it, judged like the verifier's first
   stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.events import emit
from langgraph_taskcraft.llm import ainvoke_text, chat_model
from langgraph_taskcraft.nodes.depth import (
    HopRejected,
    ask_structured,
    compose_trajectory,
    failures_as,
    feedback_block,
    final_verification,
    rejection_note,
    run_usage,
    solving_chain,
)
from langgraph_taskcraft.nodes.normalise import answer_in_question
from langgraph_taskcraft.nodes.verifier import judge_answer
from langgraph_taskcraft.prompts import render
from langgraph_taskcraft.records import (
    DocumentRecord,
    Rejection,
    Task,
    Usage,
    Verification,
    content_id,
    merge_usage,
)
from langgraph_taskcraft.state import WidthBranch

ANSWER_SEPARATOR = "; "
MERGE_KEY = "generator:width_merge"
DECOMPOSE_KEY = "judge:width_decompose_check"
LLM_ONLY_ANSWER_KEY = "agent:width_llm_only_answer"
LLM_ONLY_JUDGEMENT_KEY = "judge:width_llm_only_judgement"


class WidthQuestion(BaseModel):
    """One question that asks every member question at once."""

    question: str


class WidthDecomposition(BaseModel):
    """The judge's decomposition of a merged question and its verdict."""

    sub_questions: list[str] = Field(
        description="The independent questions the merged question asks, in order."
    )
    decomposes: bool = Field(
        description="Each original question is asked by exactly one sub-question, same answer."
    )
    nothing_else: bool = Field(description="The merged question asks nothing beyond them.")
    reason: str = Field(description="One sentence explaining the verdict.")


def combined_answer(members: Sequence[Task]) -> str:
    """The answer of a width task: its members' answers in order."""
    return ANSWER_SEPARATOR.join(member.answer for member in members)


def _merge_id(members: Sequence[Task]) -> str:
    """The id of the width merge of these members (of its task, or its rejections)."""
    return content_id("width", *(member.id for member in members))


def _group_fields(members: Sequence[Task]) -> dict[str, Any]:
    """What a width task, or a failed merge's rejection, takes from its members."""
    return {
        "id": _merge_id(members),
        "answer": combined_answer(members),
        "identifier": ANSWER_SEPARATOR.join(member.identifier for member in members),
        "source": ANSWER_SEPARATOR.join(dict.fromkeys(member.source for member in members)),
        "document_id": ",".join(dict.fromkeys(member.document_id for member in members)),
    }


def _members_block(members: Sequence[Task]) -> str:
    return "\n".join(
        f"{number}. Question: {member.question}\n   Answer: {member.answer}"
        for number, member in enumerate(members, start=1)
    )


def _questions_block(members: Sequence[Task]) -> str:
    return "\n".join(
        f"{number}. {member.question}" for number, member in enumerate(members, start=1)
    )


async def write_question(
    members: Sequence[Task], feedback: Sequence[str], *, context: Context, usage: Usage
) -> str:
    """Stage 1: the generator's merged question."""
    prompt = render(
        "width_merge",
        members=_members_block(members),
        feedback=feedback_block(feedback),
        answer=combined_answer(members),
    )
    reply = await ask_structured(
        "generator",
        WidthQuestion,
        prompt,
        stage="width_merge",
        key=MERGE_KEY,
        context=context,
        usage=usage,
    )
    question = reply.question.strip()
    if not question:
        raise HopRejected("width_merge", "empty_question")
    return question


async def check_decomposition(
    question: str, members: Sequence[Task], *, context: Context, usage: Usage
) -> list[str]:
    """Stage 3: the judge's sub-questions must be exactly the members' questions."""
    stage = "width_decompose_check"
    prompt = render(
        "width_decompose_check", merged_question=question, members=_questions_block(members)
    )
    verdict = await ask_structured(
        "judge",
        WidthDecomposition,
        prompt,
        stage=stage,
        key=DECOMPOSE_KEY,
        context=context,
        usage=usage,
    )
    if len(verdict.sub_questions) != len(members) or not verdict.decomposes:
        detail = f"{len(verdict.sub_questions)} sub-questions for {len(members)} tasks; "
        raise HopRejected(stage, "not_decomposable", detail + verdict.reason, question=question)
    if not verdict.nothing_else:
        raise HopRejected(stage, "asks_more", verdict.reason, question=question)
    return verdict.sub_questions


async def check_llm_only(
    question: str, answer: str, *, context: Context, usage: Usage
) -> Verification:
    """Stage 4: the agent model alone must not answer it (the verifier's first stage)."""
    stage = "width_llm_only"
    with failures_as(stage):
        llm_answer = await ainvoke_text(
            chat_model(context, "agent"),
            [HumanMessage(render("verifier_answer_without_tools", question=question))],
            usage=usage,
            key=LLM_ONLY_ANSWER_KEY,
        )
        score, reasons = await judge_answer(
            question, answer, llm_answer, context=context, usage=usage, key=LLM_ONLY_JUDGEMENT_KEY
        )
    verification = Verification(
        accepted=score < context.llm_only_max_score,
        reason=None if score < context.llm_only_max_score else "answered_without_tools",
        llm_only_answer=llm_answer,
        llm_only_score=score,
        llm_only_reasons=reasons,
    )
    if not verification.accepted:
        raise HopRejected(
            stage,
            "answered_without_tools",
            "; ".join(reasons),
            question=question,
            verification=verification,
        )
    return verification


def merged_task(
    members: Sequence[Task],
    question: str,
    verification: Verification,
    rejections: list[Rejection],
    usage: Usage,
) -> Task:
    """The width task: its own members' answers, their sub-tasks in order, summed width."""
    fields = _group_fields(members)
    chain = [step for member in members for step in solving_chain(member)]
    member_usage: Usage = {}
    for member in members:
        member_usage = merge_usage(member_usage, member.usage)
    return Task(
        **fields,
        question=question,
        kind="width",
        hops=max(member.hops for member in members),
        width=sum(member.width for member in members),
        difficulty=sum(member.difficulty for member in members),
        verification=verification.model_copy(update={"usage": usage}),
        trajectory=compose_trajectory(question, fields["answer"], chain),
        chain=chain,
        members=list(members),
        failed_attempts=rejections,
        usage=merge_usage(member_usage, usage),
    )


async def attempt_merge(
    members: Sequence[Task], feedback: Sequence[str], *, context: Context, usage: Usage
) -> tuple[str, Verification]:
    """One attempt: write, leak check, decomposition check, LLM-only check."""
    question = await write_question(members, feedback, context=context, usage=usage)
    for member in members:
        if answer_in_question(member.answer, question):
            raise HopRejected(
                "width_merge_check", "answer_in_question", member.answer, question=question
            )
    await check_decomposition(question, members, context=context, usage=usage)
    verification = await check_llm_only(
        question, combined_answer(members), context=context, usage=usage
    )
    return question, verification


async def width_merge(state: WidthBranch, runtime: Runtime[Context]) -> dict[str, Any]:
    """Merge one group of verified tasks into a width task, within `max_width_attempts`."""
    context = runtime.context
    members = list(state.members)
    # The run's documents, for the optional final verification's local search.
    documents: Sequence[DocumentRecord] = state.documents
    group_id = _merge_id(members)
    usage: Usage = {}
    rejections: list[Rejection] = []
    for attempt in range(1, max(1, int(context.max_width_attempts)) + 1):
        emit(runtime, "width_merge", "started", id=group_id, members=len(members), attempt=attempt)
        attempt_usage: Usage = {}
        feedback = [rejection_note(r) for r in rejections if r.question]
        try:
            question, verification = await attempt_merge(
                members, feedback, context=context, usage=attempt_usage
            )
        except HopRejected as error:
            rejection = Rejection(
                **_group_fields(members), **error.rejection_fields(), usage=attempt_usage
            )
            rejections.append(rejection)
            emit(
                runtime,
                "width_merge",
                "rejected",
                id=group_id,
                attempt=attempt,
                rejected_by=rejection.stage,
                reason=rejection.reason,
            )
            continue
        finally:
            usage = merge_usage(usage, attempt_usage)
        task = merged_task(members, question, verification, rejections, usage)
        task = await final_verification(task, context=context, documents=documents)
        usage = run_usage(task, usage)
        emit(runtime, "width_merge", "accepted", id=task.id, width=task.width, question=question)
        return {"tasks": [task], "usage": usage}
    emit(runtime, "width_merge", "failed", id=group_id, attempts=len(rejections))
    return {"rejected": rejections, "usage": usage}
