"""Progress events on LangGraph's `custom` stream mode (Studio and SDK clients watch these)."""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime

Status = Literal["started", "accepted", "rejected", "failed"]


def emit(runtime: Runtime[Any], stage: str, status: Status, **data: Any) -> None:
    """Write `{"stage", "status", ...}` to the custom stream (a no-op when nobody listens)."""
    runtime.stream_writer({"stage": stage, "status": status, **data})
