"""The `taskcraft` graph: documents in, verified (and extended) tasks out.

retrieve → form_candidates → verify_candidate (one branch per candidate)
  → depth_hop ⟲ (until the target hops or the attempts run out) → collect
  → width_merge (one branch per group of tasks, when a width target is set) → END
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.nodes.atomic import form_candidates
from langgraph_taskcraft.nodes.collect import collect
from langgraph_taskcraft.nodes.depth import depth_hop
from langgraph_taskcraft.nodes.difficulty import plan_width_merges
from langgraph_taskcraft.nodes.retrieve import retrieve
from langgraph_taskcraft.nodes.verify import verify_candidate
from langgraph_taskcraft.nodes.width import width_merge
from langgraph_taskcraft.state import CandidateBranch, InputState, OutputState, TaskcraftState


def fan_out_candidates(state: TaskcraftState) -> list[Send] | str:
    """One verification branch per candidate (LangGraph bounds them by `max_concurrency`)."""
    if not state.candidates:
        return "collect"
    return [
        Send("verify_candidate", CandidateBranch(candidate=c, documents=state.documents))
        for c in state.candidates
    ]


builder = StateGraph(
    TaskcraftState, input_schema=InputState, output_schema=OutputState, context_schema=Context
)
builder.add_node(retrieve)
builder.add_node(form_candidates)
builder.add_node(verify_candidate)
builder.add_node(depth_hop)
builder.add_node(collect, defer=True)  # waits for every verification and extension branch
builder.add_node(width_merge)

builder.add_edge(START, "retrieve")
builder.add_edge("retrieve", "form_candidates")
builder.add_conditional_edges(
    "form_candidates", fan_out_candidates, ["verify_candidate", "collect"]
)
builder.add_conditional_edges("collect", plan_width_merges, ["width_merge", END])
builder.add_edge("width_merge", END)

graph = builder.compile(name="taskcraft")
