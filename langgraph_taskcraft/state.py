"""Graph state: what a caller passes in (input) and what the graph accumulates.

Lists written by parallel branches use `operator.add` so that fan-out results are appended,
never overwritten; usage tables are added key by key.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field

from langgraph_taskcraft.records import (
    Candidate,
    DocumentError,
    DocumentRecord,
    Rejection,
    Task,
    Usage,
    merge_usage,
)


@dataclass(kw_only=True)
class InputState:
    """Input of the `taskcraft` graph."""

    sources: Annotated[
        list[str], Field(description="Paths (files, folders, globs) and URLs to make tasks from.")
    ] = field(default_factory=list)
    texts: Annotated[
        list[str], Field(description="Raw texts to make tasks from (first line: the identifier).")
    ] = field(default_factory=list)
    merge_width: Annotated[
        bool,
        Field(
            description="Merge this run's tasks in width when the context asks for it (a batch "
            "run turns it off per document and merges across documents at the end)."
        ),
    ] = field(default=True)


@dataclass(kw_only=True)
class OutputState:
    """What the `taskcraft` graph returns."""

    tasks: Annotated[list[Task], operator.add] = field(default_factory=list)
    rejected: Annotated[list[Rejection], operator.add] = field(default_factory=list)
    errors: Annotated[list[DocumentError], operator.add] = field(default_factory=list)
    usage: Annotated[Usage, merge_usage] = field(default_factory=dict)


@dataclass(kw_only=True)
class TaskcraftState(InputState, OutputState):
    """Full state of the `taskcraft` graph."""

    documents: list[DocumentRecord] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


@dataclass(kw_only=True)
class CandidateBranch:
    """Payload of one fan-out branch: a candidate on its way through verification."""

    candidate: Candidate
    documents: list[DocumentRecord] = field(default_factory=list)
    """The run's documents, which the local search tool indexes when no corpus is configured."""


@dataclass(kw_only=True)
class TaskBranch:
    """Payload of one extension branch: a verified task being made harder."""

    task: Task
    documents: list[DocumentRecord] = field(default_factory=list)


@dataclass(kw_only=True)
class WidthBranch:
    """Payload of one width merge: the verified tasks to combine."""

    members: list[Task]
    documents: list[DocumentRecord] = field(default_factory=list)


@dataclass(kw_only=True)
class WidthInput:
    """Input of the `taskcraft_width` graph: verified tasks to merge in width."""

    verified: Annotated[
        list[Task],
        Field(
            description="Verified tasks (e.g. lines of a tasks.jsonl), merged in groups of "
            "`target_width`."
        ),
    ] = field(default_factory=list)
    documents: Annotated[
        list[DocumentRecord],
        Field(
            description="Documents the optional final verification searches when no corpus "
            "is configured."
        ),
    ] = field(default_factory=list)


@dataclass(kw_only=True)
class WidthState(WidthInput, OutputState):
    """Full state of the `taskcraft_width` graph."""
