"""The `taskcraft_width` graph: verified tasks in, width-merged tasks out.

START → width_merge (one branch per group of `target_width` tasks) → END

Batch runs use it to merge tasks across documents once every document is done; in Studio it
merges tasks pasted from a `tasks.jsonl`.
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.nodes.difficulty import plan_given_merges
from langgraph_taskcraft.nodes.width import width_merge
from langgraph_taskcraft.state import OutputState, WidthInput, WidthState

builder = StateGraph(
    WidthState, input_schema=WidthInput, output_schema=OutputState, context_schema=Context
)
builder.add_node(width_merge)
builder.add_conditional_edges(START, plan_given_merges, ["width_merge", END])
builder.add_edge("width_merge", END)

graph = builder.compile(name="taskcraft_width")
