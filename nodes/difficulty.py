"""Difficulty control: where a verified task goes next (depth hop, width merge, or out).

Every route is bounded by the context's targets and attempt limits, so no model reply can keep
the graph looping.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from itertools import zip_longest
from typing import Literal, Protocol, TypeVar

from langgraph.constants import END
from langgraph.runtime import Runtime
from langgraph.types import Send

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.records import DocumentRecord, Task
from langgraph_taskcraft.state import TaskcraftState, WidthBranch, WidthInput


def wants_depth(context: Context) -> bool:
    """Whether the strategy extends tasks in depth."""
    return context.extension_strategy in ("depth", "both") and context.target_hops > 1


def wants_width(context: Context) -> bool:
    """Whether the strategy merges tasks in width."""
    return context.extension_strategy in ("width", "both") and context.target_width > 1


def next_extension(task: Task, context: Context) -> Literal["depth_hop", "collect"]:
    """Send a task to another depth hop while it is below the target, else out of the loop."""
    if wants_depth(context) and task.hops < context.target_hops:
        return "depth_hop"
    return "collect"


class Groupable(Protocol):
    """What grouping needs of a task (a `Task`, or a light summary of one)."""

    @property
    def id(self) -> str: ...  # noqa: D102

    @property
    def kind(self) -> str: ...  # noqa: D102

    @property
    def document_id(self) -> str: ...  # noqa: D102


G = TypeVar("G", bound=Groupable)


def width_groups(tasks: Iterable[G], context: Context) -> list[list[G]]:
    """Groups of `target_width` tasks, each task in at most one group.

    Tasks are taken round-robin over their documents, so a group mixes documents whenever the
    run has several, and in a stable order (by document, then task id) so that the grouping does
    not depend on which branch finished first. A short remainder is left unmerged.
    """
    size = max(2, context.target_width)
    by_document: dict[str, list[G]] = defaultdict(list)
    for task in sorted(tasks, key=lambda t: (t.document_id, t.id)):
        if task.kind != "width":
            by_document[task.document_id].append(task)
    queues = [by_document[key] for key in sorted(by_document)]
    ordered = [task for round_ in zip_longest(*queues) for task in round_ if task is not None]
    return [ordered[i : i + size] for i in range(0, len(ordered) - size + 1, size)]


def _width_sends(
    tasks: list[Task], documents: list[DocumentRecord], context: Context
) -> list[Send] | str:
    groups = width_groups(tasks, context) if wants_width(context) else []
    if not groups:
        return END
    return [
        Send("width_merge", WidthBranch(members=group, documents=documents)) for group in groups
    ]


def plan_width_merges(state: TaskcraftState, runtime: Runtime[Context]) -> list[Send] | str:
    """After all branches are collected: one width-merge branch per group, or the end.

    A batch run turns this off per document (`merge_width`) and merges across documents later.
    """
    if not state.merge_width:
        return END
    return _width_sends(state.tasks, state.documents, runtime.context)


def plan_given_merges(state: WidthInput, runtime: Runtime[Context]) -> list[Send] | str:
    """One width-merge branch per group of the given verified tasks, or the end.

    Tasks and documents given as JSON (the server, Studio) are read into records here.
    """
    tasks = [Task.model_validate(task) for task in state.verified]
    documents = [DocumentRecord.model_validate(document) for document in state.documents]
    return _width_sends(tasks, documents, runtime.context)
