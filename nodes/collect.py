"""Collect: the point where every verification and extension branch has finished."""

from __future__ import annotations

from langgraph.runtime import Runtime

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.events import emit
from langgraph_taskcraft.state import TaskcraftState


async def collect(state: TaskcraftState, runtime: Runtime[Context]) -> dict[str, object]:
    """Report the tally of the verification phase; tasks are already in the state."""
    emit(runtime, "collect", "accepted", tasks=len(state.tasks), rejected=len(state.rejected))
    return {}
