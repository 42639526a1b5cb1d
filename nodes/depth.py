"""Depth hop: make a verified task one search step harder.

One hop, with up to `max_hop_attempts` attempts, each going through the paper's stages:

1. backward search: a tool-using agent finds a *superset* of the task's identifier (a parent
   page, series, event, citing document) and a relation that, read from the superset, points to
   exactly that identifier;
2. validity check: the judge confirms a true superset, a relation that picks out exactly one item,
   and not a synonym (the official code's check can never reject; this one can);
3. intermediate question: the generator asks for the identifier from the superset, and the
   verifier checks it like an atomic task (the LLM alone fails, the agent succeeds);
4. merge: the generator replaces the identifier in the question by its description through the
   superset;
5. semantic check: the identifier (and the answer) must no longer appear, and the judge confirms
   the same unique answer, exactly one more hop and a natural question.

A hop that succeeds yields a task with one more hop whose `chain` lists the sub-tasks in solving
order; the routing then sends it to another hop or out. Every failed attempt is kept as a
`Rejection` in `task.failed_attempts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import BaseTool
from langgraph.runtime import Runtime
from langgraph.types import Command, Send
from pydantic import BaseModel, Field

from langgraph_taskcraft.context import Context, Role
from langgraph_taskcraft.events import emit
from langgraph_taskcraft.llm import (
    LLMOutputInvalid,
    ainvoke_structured,
    chat_model,
    record_usage,
)
from langgraph_taskcraft.nodes.difficulty import next_extension
from langgraph_taskcraft.nodes.normalise import answer_in_question
from langgraph_taskcraft.nodes.verifier import rejection_detail, verify
from langgraph_taskcraft.nodes.verify import rejection_from
from langgraph_taskcraft.prompts import load, render
from langgraph_taskcraft.records import (
    ChainStep,
    DocumentRecord,
    Rejection,
    Task,
    Usage,
    Verification,
    content_id,
    merge_usage,
)
from langgraph_taskcraft.state import TaskBranch

if TYPE_CHECKING:
    from langgraph_taskcraft.tools import Corpus

SchemaT = TypeVar("SchemaT", bound=BaseModel)

SEARCH_KEY = "agent:depth_superset_search"
SUPERSET_CHECK_KEY = "judge:depth_superset_check"
INTERMEDIATE_KEY = "generator:depth_intermediate_question"
MERGE_KEY = "generator:depth_merge"
MERGE_CHECK_KEY = "judge:depth_merge_check"

# Tools the backward search may use: reading images does not help find a parent page.
_SEARCH_TOOL_EXCLUDED = frozenset({"inspect_image"})


class Superset(BaseModel):
    """A superset of the current identifier, found by the backward search."""

    found: bool = Field(default=True, description="False when no superset could be found.")
    identifier: str = Field(default="", description="Title or name of the superset.")
    relation: str = Field(
        default="",
        description="Short relation that, read from the superset, points to exactly the "
        "identifier, e.g. 'her 1971 studio album'.",
    )
    evidence: str = Field(
        default="", description="URL or corpus document id of the page that states the relation."
    )
    quote: str = Field(default="", description="The sentence of that page that states it.")


class SupersetJudgement(BaseModel):
    """The judge's verdict on a proposed superset."""

    is_superset: bool = Field(description="The superset really contains or points to it.")
    unique: bool = Field(description="The relation picks out exactly one item: the identifier.")
    is_synonym: bool = Field(description="The superset is only another name for the identifier.")
    reason: str = Field(description="One sentence explaining the verdict.")


class IntermediateQuestion(BaseModel):
    """A question whose answer is the current identifier, asked from the superset."""

    question: str


class MergedQuestion(BaseModel):
    """The current question with its identifier replaced by a description via the superset."""

    question: str


class MergeJudgement(BaseModel):
    """The judge's verdict on a merged question."""

    same_answer: bool = Field(description="Exactly one answer, the original one.")
    one_more_hop: bool = Field(description="Exactly one more step than the original question.")
    natural: bool = Field(description="Reads as one fluent question.")
    reason: str = Field(description="One sentence explaining the verdict.")


class HopRejected(Exception):
    """One attempt of a hop failed at `stage` for `reason`."""

    def __init__(self, stage: str, reason: str, detail: str = "", **extra: Any) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.detail = detail
        self.extra = extra

    def rejection_fields(self) -> dict[str, Any]:
        """The `Rejection` fields of this failure: stage, reason, detail, the attempt's question."""
        return {
            "stage": self.stage,
            "reason": self.reason,
            "detail": self.detail,
            **self.extra,
            "question": str(self.extra.get("question", "")),
        }


@contextlib.contextmanager
def failures_as(stage: str) -> Iterator[None]:
    """Turn an unparsable reply or a provider failure inside the block into a `HopRejected`."""
    try:
        yield
    except HopRejected:
        raise
    except LLMOutputInvalid as exc:
        raise HopRejected(stage, LLMOutputInvalid.reason, exc.detail[:500]) from exc
    except Exception as exc:  # provider failure after retries: this attempt fails, the run goes on
        raise HopRejected(stage, "llm_error", f"{type(exc).__name__}: {exc}"[:500]) from exc


async def ask_structured(
    role: Role,
    schema: type[SchemaT],
    prompt: str,
    *,
    stage: str,
    key: str,
    context: Context,
    usage: Usage,
) -> SchemaT:
    """The `role` model's `schema` reply to one prompt; a failure rejects the attempt at `stage`."""
    with failures_as(stage):
        return await ainvoke_structured(
            chat_model(context, role),
            schema,
            [HumanMessage(prompt)],
            context=context,
            usage=usage,
            key=key,
        )


def identifier_names(identifier: str) -> list[str]:
    """Forms under which an identifier may be written in a question.

    The identifier as given, and without a trailing disambiguation in brackets or a file
    extension: "Blue (album)" is also written "Blue", "report.pdf" also "report".
    """
    names = [identifier.strip()]
    bare = re.sub(r"\s*[(\[][^()\[\]]*[)\]]\s*$", "", names[0])
    bare = re.sub(r"\.(?:pdf|html?|md|txt|docx?|png|jpe?g)$", "", bare, flags=re.I)
    if bare and bare != names[0]:
        names.append(bare.strip())
    return [name for name in names if len(name) >= 2]


def names_identifier(question: str, identifier: str) -> bool:
    """Whether the question still names the identifier (case-insensitive, whole words)."""
    return any(answer_in_question(name, question) for name in identifier_names(identifier))


def _same(left: str, right: str) -> bool:
    return " ".join(left.casefold().split()) == " ".join(right.casefold().split())


def atomic_step(task: Task) -> ChainStep:
    """The chain step of a task that has no chain yet: the task itself."""
    return ChainStep(
        question=task.question,
        answer=task.answer,
        identifier=task.identifier,
        relation=task.relation,
        trajectory=task.trajectory,
    )


def solving_chain(task: Task) -> list[ChainStep]:
    """A task's sub-tasks in solving order (an atomic task is its own single step)."""
    return list(task.chain) if task.chain else [atomic_step(task)]


def compose_trajectory(
    question: str, answer: str, chain: Sequence[ChainStep]
) -> list[dict[str, Any]]:
    """One OpenAI-format trajectory that solves `question` by solving the chain in order.

    It keeps the first step's system prompt, asks the composed question, then replays every
    step's tool calls and tool results in solving order (each sub-task's own question and final
    answer are dropped, since the composed run never states them) and ends with the answer.
    Empty when no step has a trajectory.
    """
    if not any(step.trajectory for step in chain):
        return []
    system = next((m for step in chain for m in step.trajectory if m.get("role") == "system"), None)
    messages: list[dict[str, Any]] = [system] if system else []
    messages.append({"role": "user", "content": question})
    for step in chain:
        for message in step.trajectory:
            role = message.get("role")
            if role in ("system", "user"):
                continue
            if role == "assistant" and not message.get("tool_calls"):
                continue
            messages.append(message)
    messages.append({"role": "assistant", "content": answer})
    return messages


async def search_tools(context: Context, documents: Sequence[DocumentRecord]) -> list[BaseTool]:
    """The backward search's tools: the verifier agent's, without image inspection."""
    from langgraph_taskcraft.tools import build_tools

    # Building the tools may read and index a corpus: keep that off the event loop.
    tools = await asyncio.to_thread(build_tools, context, list(documents))
    return [tool for tool in tools if tool.name not in _SEARCH_TOOL_EXCLUDED]


def local_corpus(tools: Sequence[BaseTool]) -> Corpus | None:
    """The corpus the local search tool reads (None with web search)."""
    from langgraph_taskcraft.tools import LocalSearchTool

    return next((tool.corpus for tool in tools if isinstance(tool, LocalSearchTool)), None)


async def find_superset(
    task: Task,
    excluded: Iterable[str],
    *,
    tools: Sequence[BaseTool],
    context: Context,
    usage: Usage,
) -> Superset:
    """Backward search: a tool-using agent run that ends with a `Superset` (stage 1).

    Raises:
        HopRejected: when the agent found nothing or ran out of steps.
    """
    with failures_as("depth_superset_search"):
        from langchain.agents import create_agent
        from langchain.agents.middleware import ModelCallLimitMiddleware
        from langchain.agents.structured_output import ToolStrategy

        max_steps = max(1, int(context.agent_max_steps))
        agent = create_agent(
            chat_model(context, "agent"),
            list(tools),
            system_prompt=load("depth_superset_search_system").strip(),
            response_format=ToolStrategy(Superset),
            middleware=[ModelCallLimitMiddleware(run_limit=max_steps, exit_behavior="end")],
            checkpointer=False,  # a one-shot run, never stored in the caller's thread
            name="superset_search",
        )
        prompt = render(
            "depth_superset_search",
            identifier=task.identifier,
            question=task.question,
            excluded="\n".join(f"- {name}" for name in excluded) or "- (nothing)",
        )
        result = await agent.ainvoke(
            {"messages": [HumanMessage(prompt)]},
            # Each model call takes a few supersteps (limit check, model, counter, tools).
            config={"recursion_limit": 6 * max_steps + 10},
        )
        messages: list[BaseMessage] = list(result["messages"])
        replies = [m for m in messages if isinstance(m, AIMessage)]
        step_limit_reached = len(replies) > max_steps
        if step_limit_reached:
            replies.pop()  # the limit middleware's own message: no model wrote it
        for reply in replies:
            record_usage(usage, SEARCH_KEY, reply)
        superset = result.get("structured_response")
        if not isinstance(superset, Superset):
            detail = "step limit reached" if step_limit_reached else "no Superset reply"
            raise HopRejected("depth_superset_search", "superset_not_found", detail)
        if not superset.found or not superset.identifier.strip() or not superset.relation.strip():
            raise HopRejected("depth_superset_search", "superset_not_found", "the agent gave up")
        return superset


def evidence_passage(text: str, names: Sequence[str], max_chars: int = 600) -> str:
    """The sentences of `text` that name the most of `names` (in text order), within a budget."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    scored = [
        (sum(answer_in_question(name, s) for name in names), i) for i, s in enumerate(sentences)
    ]
    best = max((score for score, _ in scored), default=0)
    chosen = [i for score, i in scored if score == best and score > 0]
    passage = ""
    for index in chosen:
        if passage and len(passage) + len(sentences[index]) + 1 > max_chars:
            break
        passage = f"{passage} {sentences[index]}".strip()
    return passage[:max_chars]


def ground_superset(task: Task, superset: Superset, corpus: Corpus | None) -> Superset:
    """Check the evidence against the local corpus and quote what the document really says.

    The evidence (else the superset's title) must be a document of the corpus that names both
    the superset and the current identifier: the superset's own page that mentions the
    identifier, or the identifier's page that names the superset. Its real sentences replace
    the agent's quote, so the judge never rules on an invented one. With web search (no local
    corpus) the agent's evidence is kept as given.

    Raises:
        HopRejected: `evidence_not_found` or `evidence_unrelated`.
    """
    if corpus is None:
        return superset
    stage = "depth_superset_check"
    document = corpus.resolve(superset.evidence) if superset.evidence.strip() else None
    if document is None:
        document = corpus.resolve(superset.identifier)
    if document is None:
        raise HopRejected(stage, "evidence_not_found", superset.evidence or superset.identifier)
    page = f"{document.title}. {document.text}"
    if not (
        names_identifier(page, task.identifier) and names_identifier(page, superset.identifier)
    ):
        detail = f"{document.id} does not name both {superset.identifier!r} and {task.identifier!r}"
        raise HopRejected(stage, "evidence_unrelated", detail)
    names = [*identifier_names(task.identifier), *identifier_names(superset.identifier)]
    quote = evidence_passage(document.text, names) or evidence_passage(page, names)
    return superset.model_copy(update={"evidence": document.id, "quote": quote})


async def check_superset(
    task: Task,
    superset: Superset,
    rejected: Iterable[str] = (),
    *,
    corpus: Corpus | None = None,
    context: Context,
    usage: Usage,
) -> Superset:
    """Validity check of a superset: programmatic guards, the evidence, then the judge (stage 2).

    Returns the superset with its evidence grounded in the local corpus (see `ground_superset`).

    Raises:
        HopRejected: when the superset is the identifier itself, the answer or an identifier
            already in the chain (the chain would be circular), a superset this hop already
            rejected, not backed by a corpus document, or the judge finds it invalid.
    """
    stage = "depth_superset_check"
    name = superset.identifier
    if _same(name, task.identifier):
        raise HopRejected(stage, "same_as_identifier", name)
    if any(_same(name, used) for used in [task.answer, *(s.identifier for s in task.chain)]):
        raise HopRejected(stage, "cycle", name)
    if any(_same(name, earlier) for earlier in rejected):
        raise HopRejected(stage, "already_rejected", name)
    with failures_as(stage):
        # Reading the corpus may load it from disk on first use.
        superset = await asyncio.to_thread(ground_superset, task, superset, corpus)
    prompt = render(
        "depth_superset_check",
        identifier=task.identifier,
        superset=superset.identifier,
        relation=superset.relation,
        evidence=superset.evidence or "no source given",
        quote=superset.quote or "(no quote)",
    )
    verdict = await ask_structured(
        "judge",
        SupersetJudgement,
        prompt,
        stage=stage,
        key=SUPERSET_CHECK_KEY,
        context=context,
        usage=usage,
    )
    if verdict.is_synonym:
        raise HopRejected(stage, "synonym", verdict.reason)
    if not verdict.is_superset:
        raise HopRejected(stage, "not_superset", verdict.reason)
    if not verdict.unique:
        raise HopRejected(stage, "not_unique", verdict.reason)
    return superset


async def intermediate_task(
    task: Task,
    superset: Superset,
    *,
    context: Context,
    documents: Sequence[DocumentRecord],
    usage: Usage,
) -> tuple[str, Verification]:
    """Write the question whose answer is the identifier and verify it (stage 3).

    Raises:
        HopRejected: when the question gives the identifier away or fails verification.
    """
    prompt = render(
        "depth_intermediate_question",
        superset=superset.identifier,
        relation=superset.relation,
        quote=superset.quote or "(no quote)",
        identifier=task.identifier,
    )
    reply = await ask_structured(
        "generator",
        IntermediateQuestion,
        prompt,
        stage="depth_intermediate_question",
        key=INTERMEDIATE_KEY,
        context=context,
        usage=usage,
    )
    question = reply.question.strip()
    if not question or names_identifier(question, task.identifier):
        raise HopRejected("depth_intermediate_question", "answer_in_question", question=question)
    with failures_as("depth_intermediate_verify"):
        verification = await verify(question, task.identifier, context=context, documents=documents)
    usage.update(merge_usage(usage, verification.usage))
    if not verification.accepted:
        raise HopRejected(
            "depth_intermediate_verify",
            verification.reason or "rejected",
            rejection_detail(verification),
            question=question,
            verification=verification,
        )
    return question, verification


async def merge_question(
    task: Task,
    superset: Superset,
    intermediate_question: str,
    *,
    context: Context,
    usage: Usage,
    feedback: Sequence[str] = (),
) -> str:
    """Replace the identifier by its description through the superset, then check it (4, 5).

    Raises:
        HopRejected: when the merged question still names the identifier or the answer, or the
            judge finds a different answer, not exactly one more hop, or an unnatural question.
    """
    prompt = render(
        "depth_merge",
        question=task.question,
        answer=task.answer,
        identifier=task.identifier,
        intermediate_question=intermediate_question,
        superset=superset.identifier,
        relation=superset.relation,
        feedback=feedback_block(feedback),
    )
    reply = await ask_structured(
        "generator",
        MergedQuestion,
        prompt,
        stage="depth_merge",
        key=MERGE_KEY,
        context=context,
        usage=usage,
    )
    merged = reply.question.strip()
    stage = "depth_merge_check"
    if not merged or _same(merged, task.question):
        raise HopRejected(stage, "unchanged", question=merged)
    if names_identifier(merged, task.identifier):
        raise HopRejected(stage, "identifier_leaked", task.identifier, question=merged)
    if answer_in_question(task.answer, merged):
        raise HopRejected(stage, "answer_in_question", task.answer, question=merged)
    check = render(
        "depth_merge_check",
        question=task.question,
        answer=task.answer,
        identifier=task.identifier,
        relation=superset.relation,
        superset=superset.identifier,
        merged_question=merged,
    )
    verdict = await ask_structured(
        "judge",
        MergeJudgement,
        check,
        stage=stage,
        key=MERGE_CHECK_KEY,
        context=context,
        usage=usage,
    )
    if not verdict.same_answer:
        raise HopRejected(stage, "answer_drift", verdict.reason, question=merged)
    if not verdict.one_more_hop:
        raise HopRejected(stage, "not_one_more_hop", verdict.reason, question=merged)
    if not verdict.natural:
        raise HopRejected(stage, "unnatural", verdict.reason, question=merged)
    return merged


def deepened_task(
    task: Task,
    superset: Superset,
    intermediate_question: str,
    intermediate: Verification,
    merged_question: str,
) -> Task:
    """The task one hop deeper: same answer, merged question, the new step first in the chain.

    Solving order: the new sub-task (superset → old identifier) comes first, then the steps of
    the task it extends, which start from that identifier and end with the answer.
    """
    step = ChainStep(
        question=intermediate_question,
        answer=task.identifier,
        identifier=superset.identifier,
        relation=superset.relation,
        evidence=superset.evidence,
        trajectory=intermediate.trajectory,
    )
    chain = [step, *solving_chain(task)]
    return task.model_copy(
        update={
            "id": content_id(task.id, "depth", merged_question),
            "question": merged_question,
            "kind": "depth",
            "hops": task.hops + 1,
            "difficulty": task.difficulty + 1,
            "identifier": superset.identifier,
            "relation": superset.relation,
            # This hop verified the new sub-task; the final question's own run, if requested,
            # is `final_verification`.
            # Its trajectory is already the chain's first step: stored once.
            "verification": intermediate.model_copy(update={"trajectory": []}),
            "trajectory": compose_trajectory(merged_question, task.answer, chain),
            "chain": chain,
            "final_verification": None,
        },
        deep=True,
    )


async def attempt_hop(
    task: Task,
    rejected_supersets: list[str],
    *,
    context: Context,
    documents: Sequence[DocumentRecord],
    usage: Usage,
    feedback: Sequence[str] = (),
) -> Task:
    """One attempt at one hop: every stage in turn; the first failure raises `HopRejected`.

    `rejected_supersets` (found invalid by earlier attempts of this hop) grows by this attempt's
    superset when the validity check rejects it; a valid superset may be found again after a
    later stage failed, since the intermediate question or the merge may succeed next time.
    """
    excluded = [task.identifier, *(step.identifier for step in task.chain), *rejected_supersets]
    with failures_as("depth_superset_search"):
        tools = await search_tools(context, documents)
    superset = await find_superset(
        task, dict.fromkeys(excluded), tools=tools, context=context, usage=usage
    )
    try:
        superset = await check_superset(
            task,
            superset,
            rejected_supersets,
            corpus=local_corpus(tools),
            context=context,
            usage=usage,
        )
    except HopRejected:
        # An invalid superset: the next search is told to look elsewhere.
        rejected_supersets.append(superset.identifier)
        raise
    question, verification = await intermediate_task(
        task, superset, context=context, documents=documents, usage=usage
    )
    merged = await merge_question(
        task, superset, question, context=context, usage=usage, feedback=feedback
    )
    return deepened_task(task, superset, question, verification, merged)


async def final_verification(
    task: Task, *, context: Context, documents: Sequence[DocumentRecord]
) -> Task:
    """Run the final extended question through the verifier and record it (when asked to)."""
    if not context.verify_final_task or task.kind == "atomic":
        return task
    try:
        verification = await verify(
            task.question, task.answer, context=context, documents=documents
        )
    except Exception as exc:  # recorded, the task is kept: this run is informative only
        verification = Verification(accepted=False, reason="llm_error", agent_reasons=[str(exc)])
    return task.model_copy(
        update={
            "final_verification": verification,
            "usage": merge_usage(task.usage, verification.usage),
        }
    )


async def depth_hop(
    state: TaskBranch, runtime: Runtime[Context]
) -> Command[Literal["depth_hop", "collect"]]:
    """Add one hop to a verified task, then route it to another hop or out of the loop.

    Up to `max_hop_attempts` attempts; the task leaves the loop at the depth it reached when they
    all fail. Either way the number of hops is bounded by `target_hops`, whatever the models say.
    """
    context = runtime.context
    task = state.task
    hop = task.hops + 1
    usage: Usage = {}
    rejections: list[Rejection] = []
    rejected_supersets: list[str] = []
    deeper: Task | None = None
    for attempt in range(1, max(1, int(context.max_hop_attempts)) + 1):
        emit(runtime, "depth_hop", "started", id=task.id, hop=hop, attempt=attempt)
        attempt_usage: Usage = {}
        try:
            deeper = await attempt_hop(
                task,
                rejected_supersets,
                context=context,
                documents=state.documents,
                usage=attempt_usage,
                feedback=[rejection_note(r) for r in rejections if r.stage == "depth_merge_check"],
            )
        except HopRejected as error:
            rejection = rejection_from(task, **error.rejection_fields(), usage=attempt_usage)
            rejections.append(rejection)
            emit(
                runtime,
                "depth_hop",
                "rejected",
                id=task.id,
                hop=hop,
                attempt=attempt,
                rejected_by=rejection.stage,
                reason=rejection.reason,
            )
            continue
        finally:
            usage = merge_usage(usage, attempt_usage)
        break

    # Whether or not a hop succeeded, the task keeps its failed attempts and what they cost.
    attempts_record = {
        "failed_attempts": [*task.failed_attempts, *rejections],
        "usage": merge_usage(task.usage, usage),
    }
    if deeper is None:
        emit(runtime, "depth_hop", "failed", id=task.id, hops=task.hops, attempts=len(rejections))
        leaving = task.model_copy(update=attempts_record)
        leaving = await final_verification(leaving, context=context, documents=state.documents)
        return Command(
            update={"tasks": [leaving], "usage": run_usage(leaving, usage)}, goto="collect"
        )

    deeper = deeper.model_copy(update=attempts_record)
    emit(
        runtime,
        "depth_hop",
        "accepted",
        id=deeper.id,
        parent=task.id,
        hops=deeper.hops,
        question=deeper.question,
    )
    if next_extension(deeper, context) == "depth_hop":
        return Command(
            update={"usage": usage},
            goto=Send("depth_hop", TaskBranch(task=deeper, documents=state.documents)),
        )
    deeper = await final_verification(deeper, context=context, documents=state.documents)
    return Command(update={"tasks": [deeper], "usage": run_usage(deeper, usage)}, goto="collect")


def rejection_note(rejection: Rejection) -> str:
    """One rejected attempt, as the next attempt's prompt is told about it."""
    return f"{rejection.reason}: {rejection.question} ({rejection.detail})"


def feedback_block(notes: Sequence[str]) -> str:
    """Why earlier attempts were rejected, for the next prompt (empty on the first attempt)."""
    if not notes:
        return ""
    lines = "\n".join(f"- {note}" for note in notes)
    return f"\nEarlier merged questions were rejected; avoid their mistakes:\n{lines}\n"


def run_usage(leaving: Task, node_usage: Usage) -> Usage:
    """Usage a node adds to the run: its own, plus the final verification's if it ran."""
    if leaving.final_verification is None:
        return node_usage
    return merge_usage(node_usage, leaving.final_verification.usage)
