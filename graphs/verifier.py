"""The `verifier` graph: tool-less answer, its judgement, then (if needed) the agent and its."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.nodes.verifier import (
    VerifierInput,
    VerifierOutput,
    VerifierState,
    answer_without_tools,
    judge_agent,
    judge_llm_only,
    route_after_llm_only,
    run_agent,
)

builder = StateGraph(
    VerifierState,
    input_schema=VerifierInput,
    output_schema=VerifierOutput,
    context_schema=Context,
)
builder.add_node("answer_without_tools", answer_without_tools)
builder.add_node("judge_llm_only", judge_llm_only)
builder.add_node("run_agent", run_agent)
builder.add_node("judge_agent", judge_agent)
builder.add_edge(START, "answer_without_tools")
builder.add_edge("answer_without_tools", "judge_llm_only")
builder.add_conditional_edges("judge_llm_only", route_after_llm_only, ["run_agent", END])
builder.add_edge("run_agent", "judge_agent")
builder.add_edge("judge_agent", END)

graph = builder.compile(name="verifier")
