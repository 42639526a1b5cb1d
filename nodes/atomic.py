"""Atomic task formation: conclusions from documents, one lookup question per conclusion.

For each document the generator reads the first `max_chunks_per_document` chunks (and the
document's images, with the first chunk) and returns short verifiable answers with the relation
that links each to the document's identifier. Each (identifier, relation, answer) then becomes a
question that names the identifier, needs the document to answer and has one short answer.
Answers are normalised (`normalise.normalise_answer`); questions that give their answer away
are rejected (`leak_check`/`answer_in_question`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.messages.content import create_image_block
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field, field_validator

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.llm import LLMOutputInvalid, ainvoke_structured, chat_model
from langgraph_taskcraft.nodes.normalise import answer_in_question, answer_key, normalise_answer
from langgraph_taskcraft.prompts import render
from langgraph_taskcraft.records import (
    Candidate,
    DocumentError,
    DocumentRecord,
    Rejection,
    Task,
    Usage,
    content_id,
)
from langgraph_taskcraft.state import TaskcraftState

logger = logging.getLogger(__name__)

T = TypeVar("T")

EXTRACT_KEY = "generator:extract"
QUESTION_KEY = "generator:form_question"

MAX_IMAGES_PER_DOCUMENT = 8
"""Images of one document sent to the generator (with its first chunk)."""

MAX_ANSWER_WORDS = 12
"""Longer answers are not short facts; they are rejected with `answer_too_long`."""

MAX_EXAMPLES = 3
"""Few-shot examples rendered into the question prompt."""


class Conclusion(BaseModel):
    """One fact of a document: a short answer and how it relates to the identifier."""

    answer: str = Field(
        description="Short verifiable value from the text: a name, entity, number with unit, "
        "date or term; a few words at most."
    )
    relation: str = Field(
        description="How the answer relates to the identifier, so that the answer is its only "
        "correct value, e.g. 'year the company opened its first factory'."
    )


class Conclusions(BaseModel):
    """The generator's reply for one chunk."""

    identifier: str = Field(
        default="",
        description="Content identifier that lets a searcher find this document, e.g. its full "
        "title; the given identifier when the text shows nothing more precise.",
    )
    conclusions: list[Conclusion] = Field(default_factory=list)


class FormedQuestion(BaseModel):
    """The generator's question for one conclusion."""

    question: str = Field(description="One question that names the identifier.")
    answer: str = Field(description="The given answer, possibly shortened.")

    @field_validator("question", "answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("must not be empty")
        return value


class QuestionExample(NamedTuple):
    """A previously accepted atomic task, shown to the generator as a few-shot example."""

    identifier: str
    relation: str
    answer: str
    question: str


@dataclass
class _Fact:
    """A conclusion with its origin, before a question is formed."""

    identifier: str
    relation: str
    answer: str
    chunk_index: int


@dataclass
class _DocumentOutcome:
    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def extraction_messages(
    document: DocumentRecord, chunk_index: int, context: Context
) -> list[BaseMessage]:
    """The prompt that asks for the conclusions of one chunk (images go with chunk 0)."""
    text = document.chunks[chunk_index] if chunk_index < len(document.chunks) else ""
    prompt = render(
        "atomic_extract",
        identifier=document.identifier,
        part=f"chunk {chunk_index + 1} of {max(1, len(document.chunks))}",
        max_conclusions=max(1, context.max_candidates_per_document),
        text=text,
    )
    images = document.images[:MAX_IMAGES_PER_DOCUMENT] if chunk_index == 0 else []
    if not images:
        return [HumanMessage(prompt)]
    content: list[str | dict[str, Any]] = [{"type": "text", "text": prompt}]
    for number, image in enumerate(images, start=1):
        label = f"Image {number} of {document.identifier}"
        if image.caption:
            label += f": {image.caption}"
        content.append({"type": "text", "text": label})
        content.append(dict(create_image_block(base64=image.base64, mime_type=image.mime_type)))
    return [HumanMessage(content=content)]


async def extract_conclusions(
    model: BaseChatModel,
    document: DocumentRecord,
    chunk_index: int,
    *,
    context: Context,
    usage: Usage,
) -> Conclusions:
    """Conclusions (answer, relation) of one chunk and the identifier the model settled on.

    Raises:
        LLMOutputInvalid: when the structured reply never parsed.
    """
    messages = extraction_messages(document, chunk_index, context)
    return await ainvoke_structured(
        model, Conclusions, messages, context=context, usage=usage, key=EXTRACT_KEY
    )


def render_examples(examples: Sequence[QuestionExample] | None) -> str:
    """The few-shot block of the question prompt ("" without examples)."""
    if not examples:
        return ""
    lines = ["", "Questions accepted earlier; match their style and difficulty, not their topics:"]
    for identifier, relation, answer, question in examples:
        lines.append(
            f'- identifier "{identifier}", relation "{relation}", answer "{answer}" → question '
            f'"{question}"'
        )
    return "\n".join(lines) + "\n"


async def form_question(
    model: BaseChatModel,
    identifier: str,
    relation: str,
    answer: str,
    *,
    context: Context,
    usage: Usage,
    examples: Sequence[QuestionExample] | None = None,
) -> FormedQuestion:
    """One lookup question for (identifier, relation, answer).

    `examples` are previously accepted atomic tasks (identifier, relation, answer, question)
    rendered into the prompt as few-shot examples; `examples_from_tasks` builds them from a
    run's accepted tasks. The returned answer is the model's, not yet checked against `answer`.

    Raises:
        LLMOutputInvalid: when the structured reply never parsed.
    """
    prompt = render(
        "atomic_question",
        identifier=identifier,
        relation=relation,
        answer=answer,
        examples=render_examples(examples),
    )
    return await ainvoke_structured(
        model,
        FormedQuestion,
        [HumanMessage(prompt)],
        context=context,
        usage=usage,
        key=QUESTION_KEY,
    )


def examples_from_tasks(tasks: Iterable[Task], limit: int = MAX_EXAMPLES) -> list[QuestionExample]:
    """Few-shot examples from accepted atomic tasks (the most recent `limit`)."""
    examples = [
        QuestionExample(task.identifier, task.relation, task.answer, task.question)
        for task in tasks
        if task.kind == "atomic" and task.relation and task.question
    ]
    return examples[-limit:] if limit > 0 else []


def chunk_indices(document: DocumentRecord, context: Context) -> list[int]:
    """The chunks of a document the generator reads (an image-only document: one call)."""
    count = min(len(document.chunks), max(0, context.max_chunks_per_document))
    if count == 0 and document.images:
        return [0]  # an image-only document: one call with its images
    return list(range(count))


def _rejection(
    document: DocumentRecord,
    stage: str,
    reason: str,
    detail: str,
    *,
    id_parts: Sequence[str],
    identifier: str = "",
    question: str = "",
    answer: str = "",
) -> Rejection:
    return Rejection(
        id=content_id(document.id, *id_parts),
        stage=stage,
        reason=reason,
        detail=detail,
        question=question,
        answer=answer,
        source=document.source,
        document_id=document.id,
        identifier=identifier or document.identifier,
    )


async def _all(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; the first exception cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coroutine) for coroutine in coroutines]
    except BaseExceptionGroup as group_error:
        raise _first_leaf(group_error) from None
    return [task.result() for task in tasks]


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


class _DocumentRun:
    """Atomic candidates of one document."""

    def __init__(
        self,
        document: DocumentRecord,
        *,
        model: BaseChatModel,
        context: Context,
        usage: Usage,
        limiter: asyncio.Semaphore,
        examples: Sequence[QuestionExample],
    ) -> None:
        self.document = document
        self.model = model
        self.context = context
        self.usage = usage
        self.limiter = limiter
        self.examples = examples
        self.outcome = _DocumentOutcome()

    async def run(self) -> _DocumentOutcome:
        indices = chunk_indices(self.document, self.context)
        replies = await _all(self._extract(index) for index in indices)
        facts = self._distinct_facts(
            [(index, reply) for index, reply in zip(indices, replies, strict=True) if reply]
        )
        await self._form_candidates(facts)
        return self.outcome

    async def _limited(
        self,
        call: Callable[[], Awaitable[T]],
        rejection: Callable[[LLMOutputInvalid], Rejection],
    ) -> T | None:
        """One model call within the concurrency limit; a reply that never parsed is rejected."""
        try:
            async with self.limiter:
                return await call()
        except LLMOutputInvalid as exc:
            self.outcome.rejected.append(rejection(exc))
            return None

    async def _extract(self, chunk_index: int) -> Conclusions | None:
        return await self._limited(
            lambda: extract_conclusions(
                self.model, self.document, chunk_index, context=self.context, usage=self.usage
            ),
            lambda exc: _rejection(
                self.document,
                "extract",
                LLMOutputInvalid.reason,
                f"chunk {chunk_index}: {exc.detail}",
                id_parts=("extract", str(chunk_index)),
            ),
        )

    def _distinct_facts(self, replies: list[tuple[int, Conclusions]]) -> list[_Fact]:
        """Normalised facts in chunk order, one per distinct answer; overlong answers rejected."""
        facts: list[_Fact] = []
        seen: set[str] = set()
        for chunk_index, reply in replies:
            identifier = " ".join(reply.identifier.split()) or self.document.identifier
            for conclusion in reply.conclusions:
                answer = normalise_answer(conclusion.answer)
                relation = " ".join(conclusion.relation.split())
                key = answer_key(answer)
                if not key or not relation or key in seen:
                    continue
                seen.add(key)
                if len(answer.split()) > MAX_ANSWER_WORDS:
                    self.outcome.rejected.append(
                        _rejection(
                            self.document,
                            "extract",
                            "answer_too_long",
                            f"{len(answer.split())} words; at most {MAX_ANSWER_WORDS}",
                            id_parts=(answer, relation),
                            answer=answer,
                            identifier=identifier,
                        )
                    )
                    continue
                facts.append(_Fact(identifier, relation, answer, chunk_index))
        return facts

    async def _form_candidates(self, facts: list[_Fact]) -> None:
        """Form questions until the document has its quota of candidates or runs out of facts.

        Only as many facts as places remain are sent at a time, so a rejected question is
        replaced by the next fact instead of every fact costing a call.
        """
        limit = max(0, self.context.max_candidates_per_document)
        kept_answers: set[str] = set()
        pending = list(facts)
        while pending and len(self.outcome.candidates) < limit:
            batch = pending[: limit - len(self.outcome.candidates)]
            pending = pending[len(batch) :]
            results = await _all(self._question(fact) for fact in batch)
            for fact, formed in zip(batch, results, strict=True):
                if formed is not None:
                    self._accept_or_reject(fact, formed, kept_answers)

    async def _question(self, fact: _Fact) -> FormedQuestion | None:
        return await self._limited(
            lambda: form_question(
                self.model,
                fact.identifier,
                fact.relation,
                fact.answer,
                context=self.context,
                usage=self.usage,
                examples=self.examples,
            ),
            lambda exc: _rejection(
                self.document,
                "form_question",
                LLMOutputInvalid.reason,
                exc.detail,
                id_parts=(fact.answer, fact.relation),
                answer=fact.answer,
                identifier=fact.identifier,
            ),
        )

    def _accept_or_reject(self, fact: _Fact, formed: FormedQuestion, kept: set[str]) -> None:
        answer = _tightened_answer(fact.answer, formed.answer)
        question = formed.question
        if answer_in_question(answer, question):
            self.outcome.rejected.append(
                _rejection(
                    self.document,
                    "leak_check",
                    "answer_in_question",
                    f"the answer {answer!r} appears in the question",
                    id_parts=(answer, question),
                    question=question,
                    answer=answer,
                    identifier=fact.identifier,
                )
            )
            return
        key = answer_key(answer)
        if key in kept:  # two facts tightened to the same answer: keep the first
            return
        kept.add(key)
        self.outcome.candidates.append(
            Candidate(
                id=content_id(self.document.id, answer, question),
                document_id=self.document.id,
                source=self.document.source,
                identifier=fact.identifier,
                relation=fact.relation,
                answer=answer,
                question=question,
                chunk_index=fact.chunk_index,
            )
        )


def _tightened_answer(original: str, proposed: str) -> str:
    """The model's shorter answer if it is part of the original one, else the original.

    A rewrite that is not contained in the extracted answer may refer to something else, so the
    answer read from the document wins.
    """
    tightened = normalise_answer(proposed)
    if tightened and answer_in_question(tightened, original):
        return tightened
    return original


async def form_candidates(state: TaskcraftState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Atomic candidates (question, answer) of every document in the state.

    Documents run concurrently; model calls are bounded by `max_concurrency`. A reply that never
    parses rejects its chunk or candidate (`llm_output_invalid`); a provider error fails only its
    document (a `DocumentError`). Accepted atomic tasks already in the state serve as few-shot
    examples for the questions.
    """
    context = runtime.context or Context()
    model = chat_model(context, "generator")
    usage: Usage = {}
    limiter = asyncio.Semaphore(max(1, context.max_concurrency))
    examples = examples_from_tasks(state.tasks)

    async def one_document(document: DocumentRecord) -> _DocumentOutcome | DocumentError:
        if not chunk_indices(document, context):
            return DocumentError(
                source=document.source,
                stage="form_candidates",
                error="empty_document",
                message="the document has no text or images to extract facts from",
            )
        run = _DocumentRun(
            document,
            model=model,
            context=context,
            usage=usage,
            limiter=limiter,
            examples=examples,
        )
        try:
            return await run.run()
        except Exception as exc:  # provider failure after its retries: only this document fails
            logger.warning("form_candidates failed for %s: %r", document.source, exc)
            return DocumentError(
                source=document.source,
                stage="form_candidates",
                error=type(exc).__name__,
                message=str(exc) or repr(exc),
            )

    outcomes = await asyncio.gather(*(one_document(d) for d in state.documents))
    candidates: list[Candidate] = []
    rejected: list[Rejection] = []
    errors: list[DocumentError] = []
    for outcome in outcomes:
        if isinstance(outcome, DocumentError):
            errors.append(outcome)
        else:
            candidates.extend(outcome.candidates)
            rejected.extend(outcome.rejected)
    return {"candidates": candidates, "rejected": rejected, "usage": usage, "errors": errors}
