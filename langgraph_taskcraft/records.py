"""Typed records that flow through the graphs and land in the output files."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, Field

DocumentKind = Literal["text", "markdown", "html", "pdf", "image"]
TaskKind = Literal["atomic", "depth", "width"]


def content_id(*parts: str | bytes, length: int = 16) -> str:
    """Stable short id: the SHA-256 of the parts, hex, truncated."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8") if isinstance(part, str) else part)
        digest.update(b"\x00")
    return digest.hexdigest()[:length]


class TokenUsage(BaseModel):
    """LLM calls and tokens spent under one `role:stage` key."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_calls: int = 0
    """Calls answered by the LLM cache: counted in `calls`, their tokens not spent again."""


Usage = dict[str, TokenUsage]
"""Token usage keyed by `role:stage`, e.g. `judge:agent_judgement`."""


def merge_usage(left: Usage | None, right: Usage | None) -> Usage:
    """Add two usage tables (also the state reducer for usage)."""
    merged = {key: value.model_copy() for key, value in (left or {}).items()}
    for key, value in (right or {}).items():
        current = merged.setdefault(key, TokenUsage())
        current.calls += value.calls
        current.input_tokens += value.input_tokens
        current.output_tokens += value.output_tokens
        current.cached_calls += value.cached_calls
    return merged


class ImageData(BaseModel):
    """An image, already downscaled, ready to send to a multimodal model."""

    mime_type: str
    base64: str
    width: int
    height: int
    caption: str = ""


class DocumentRecord(BaseModel):
    """One loaded document: what the generator reads and the local search indexes."""

    id: str = Field(description="Content hash of the document text (and image bytes).")
    source: str = Field(description="Path or URL the document came from, or `text:` for raw text.")
    kind: DocumentKind
    identifier: str = Field(description="Content identifier: title, else file name or URL.")
    chunks: list[str] = Field(default_factory=list)
    images: list[ImageData] = Field(default_factory=list)
    language: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def text(self) -> str:
        """The whole text."""
        return "\n\n".join(self.chunks)


class DocumentError(BaseModel):
    """A document that could not be loaded or processed; the run goes on without it."""

    source: str
    stage: str = "retrieve"
    error: str = Field(description="Short error class, e.g. `pdf_encrypted`, `http_error`.")
    message: str


class Candidate(BaseModel):
    """An atomic candidate: a conclusion from a document and the question formed from it."""

    id: str
    document_id: str
    source: str
    identifier: str
    relation: str = Field(description="How the answer relates to the identifier (relation R).")
    answer: str
    question: str = ""
    chunk_index: int = 0


class Verification(BaseModel):
    """What the verifier found for one question."""

    accepted: bool
    reason: str | None = Field(default=None, description="Why it was rejected, if it was.")
    llm_only_answer: str | None = None
    llm_only_score: float | None = None
    llm_only_reasons: list[str] = Field(default_factory=list)
    agent_answer: str | None = None
    agent_score: float | None = None
    agent_reasons: list[str] = Field(default_factory=list)
    agent_steps: int = 0
    trajectory: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The agent's run in OpenAI chat format: system, user, assistant tool calls, "
        "tool results, final answer.",
    )
    usage: Usage = Field(default_factory=dict)


class ChainStep(BaseModel):
    """One sub-task of an extended task, in solving order."""

    question: str
    answer: str
    identifier: str = ""
    relation: str = ""
    evidence: str = Field(
        default="", description="Where the relation was found (URL or corpus document id)."
    )
    trajectory: list[dict[str, Any]] = Field(default_factory=list)


class Rejection(BaseModel):
    """A candidate or extension attempt that was not accepted, with the stage and reason."""

    id: str
    stage: str = Field(description="Stage that rejected it, e.g. `leak_check`, `llm_only`.")
    reason: str = Field(description="Machine-readable reason, e.g. `answered_without_tools`.")
    detail: str = ""
    question: str = ""
    answer: str = ""
    source: str = ""
    document_id: str = ""
    identifier: str = ""
    verification: Verification | None = None
    usage: Usage = Field(default_factory=dict)


class Task(BaseModel):
    """A verified task: the dataset record."""

    id: str
    question: str
    answer: str
    kind: TaskKind = "atomic"
    hops: int = 1
    width: int = 1
    identifier: str
    relation: str = ""
    source: str
    document_id: str
    verification: Verification
    trajectory: list[dict[str, Any]] = Field(default_factory=list)
    chain: list[ChainStep] = Field(default_factory=list)
    difficulty: int = Field(
        default=1,
        description="Sub-tasks needed to solve it: 1 for an atomic task, its hops for a depth "
        "task, the sum of its members' difficulty for a width task.",
    )
    members: list[Task] = Field(
        default_factory=list, description="The verified tasks a width task merges, in order."
    )
    final_verification: Verification | None = Field(
        default=None,
        description="The verifier's run on the final extended question (`verify_final_task`).",
    )
    failed_attempts: list[Rejection] = Field(default_factory=list)
    usage: Usage = Field(default_factory=dict)
