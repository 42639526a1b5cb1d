"""Graph state: what a caller passes in (input) and what the graph accumulates.

Lists written by parallel branches use `operator.add` so that fan-out results are appended,
never overwritten; usage tables are added key by key.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Annotated

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

    sources: list[str] = field(default_factory=list)
    """Paths (files or folders) and URLs to generate tasks from."""

    texts: list[str] = field(default_factory=list)
    """Raw texts to generate tasks from (the first line serves as identifier)."""


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
