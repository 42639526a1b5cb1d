"""Verify one atomic candidate and turn it into a task (or a rejection with its reason)."""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Command, Send

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.events import emit
from langgraph_taskcraft.nodes.difficulty import next_extension
from langgraph_taskcraft.nodes.verifier import rejection_detail, verify
from langgraph_taskcraft.records import Candidate, Rejection, Task, Verification
from langgraph_taskcraft.state import CandidateBranch, TaskBranch


def task_from(candidate: Candidate, verification: Verification) -> Task:
    """The atomic task record of an accepted candidate."""
    return Task(
        id=candidate.id,
        question=candidate.question,
        answer=candidate.answer,
        kind="atomic",
        hops=1,
        identifier=candidate.identifier,
        relation=candidate.relation,
        source=candidate.source,
        document_id=candidate.document_id,
        # The trajectory is kept once, at the top of the record (it is large).
        verification=verification.model_copy(update={"trajectory": []}),
        trajectory=verification.trajectory,
        usage=verification.usage,
    )


def rejection_from(
    origin: Candidate | Task, stage: str, reason: str, detail: str = "", **extra: Any
) -> Rejection:
    """A rejection record that keeps the candidate's (or task's) question, answer and origin.

    `extra` sets further fields (`verification`, `usage`) or another `question`, e.g. the
    extended question an attempt wrote.
    """
    fields: dict[str, Any] = {"question": origin.question, **extra}
    return Rejection(
        id=origin.id,
        stage=stage,
        reason=reason,
        detail=detail,
        answer=origin.answer,
        source=origin.source,
        document_id=origin.document_id,
        identifier=origin.identifier,
        **fields,
    )


async def verify_candidate(
    state: CandidateBranch, runtime: Runtime[Context]
) -> Command[Literal["depth_hop", "collect"]]:
    """Run the verifier on one candidate; accepted tasks go on to extension or out."""
    candidate = state.candidate
    emit(runtime, "verify", "started", id=candidate.id, question=candidate.question)
    try:
        verification = await verify(
            candidate.question,
            candidate.answer,
            context=runtime.context,
            documents=state.documents,
        )
    except Exception as exc:  # provider failure after retries: this item fails, the run goes on
        rejection = rejection_from(candidate, "verify", "llm_error", f"{type(exc).__name__}: {exc}")
        emit(runtime, "verify", "failed", id=candidate.id, reason=rejection.detail)
        return Command(update={"rejected": [rejection]}, goto="collect")
    if not verification.accepted:
        stage = "llm_only" if verification.agent_answer is None else "agent"
        rejection = rejection_from(
            candidate,
            stage,
            verification.reason or "rejected",
            rejection_detail(verification),
            verification=verification,
            usage=verification.usage,
        )
        emit(runtime, "verify", "rejected", id=candidate.id, reason=rejection.reason)
        return Command(
            update={"rejected": [rejection], "usage": verification.usage}, goto="collect"
        )
    task = task_from(candidate, verification)
    emit(runtime, "verify", "accepted", id=task.id, question=task.question)
    update = {"usage": verification.usage}
    if next_extension(task, runtime.context) == "depth_hop":
        return Command(
            update=update, goto=Send("depth_hop", TaskBranch(task=task, documents=state.documents))
        )
    return Command(update={**update, "tasks": [task]}, goto="collect")
