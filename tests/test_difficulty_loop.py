"""Difficulty control: routing, grouping, strategy `both`, and a loop no model can keep going."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.runtime import Runtime

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.graphs.taskcraft import graph
from langgraph_taskcraft.nodes.difficulty import next_extension, plan_width_merges, width_groups
from langgraph_taskcraft.records import Task, Verification
from langgraph_taskcraft.state import TaskcraftState, WidthBranch
from tests.fakes import Rule, structured, tool_call
from tests.test_depth import (
    EXTRACT,
    FORM_QUESTION,
    INTERMEDIATE,
    MERGE,
    MERGE_CHECK,
    SUPERSET_SEARCH,
    World,
    first_human,
    installer,
    make_context,
    merge_verdict,
    prompts,
    superset,
)
from tests.test_server import server_url  # noqa: F401 - the `langgraph dev` fixture
from tests.test_width import DECOMPOSE, WIDTH_MERGE, decompose, write_merged


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch):
    return installer(monkeypatch)


def task(name: str, document: str, **overrides: Any) -> Task:
    values: dict[str, Any] = {
        "id": name,
        "question": f"What about {name}?",
        "answer": name,
        "identifier": name,
        "source": document,
        "document_id": document,
        "verification": Verification(accepted=True),
    }
    values.update(overrides)
    return Task(**values)


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("strategy", "target_hops", "hops", "expected"),
    [
        ("depth", 3, 1, "depth_hop"),
        ("depth", 3, 2, "depth_hop"),
        ("depth", 3, 3, "collect"),
        ("depth", 1, 1, "collect"),
        ("both", 2, 1, "depth_hop"),
        ("width", 5, 1, "collect"),
    ],
)
def test_next_extension(strategy: str, target_hops: int, hops: int, expected: str) -> None:
    context = Context(extension_strategy=strategy, target_hops=target_hops)  # type: ignore[arg-type]
    assert next_extension(task("a", "d1", hops=hops), context) == expected


def test_width_groups_mix_documents_and_do_not_depend_on_arrival_order() -> None:
    tasks = [task(f"{doc}{n}", doc) for doc in ("d1", "d2", "d3") for n in range(2)]
    context = Context(target_width=2)
    groups = width_groups(tasks, context)
    assert [[t.answer for t in group] for group in groups] == [
        ["d10", "d20"],
        ["d30", "d11"],
        ["d21", "d31"],
    ]
    for shuffled in itertools.islice(itertools.permutations(tasks), 0, 720, 97):
        assert width_groups(list(shuffled), context) == groups


def test_width_groups_leave_remainders_and_width_tasks_out() -> None:
    tasks = [task("a", "d1"), task("b", "d1"), task("c", "d2"), task("w", "d3", kind="width")]
    groups = width_groups(tasks, Context(target_width=2))
    assert [[t.answer for t in group] for group in groups] == [["a", "c"]]
    assert width_groups(tasks, Context(target_width=3)) == [[tasks[0], tasks[2], tasks[1]]]
    assert width_groups(tasks[:1], Context(target_width=2)) == []


def test_plan_width_merges_only_with_a_width_strategy_and_target() -> None:
    state = TaskcraftState(tasks=[task("a", "d1"), task("b", "d2")])

    def plan(**fields: Any) -> Any:
        return plan_width_merges(state, Runtime(context=Context(**fields)))

    assert plan(extension_strategy="depth", target_width=2) == "__end__"
    assert plan(extension_strategy="width", target_width=1) == "__end__"
    [send] = plan(extension_strategy="both", target_width=2)
    assert send.node == "width_merge" and isinstance(send.arg, WidthBranch)
    assert [t.answer for t in send.arg.members] == ["a", "b"]


# ----------------------------------------------------------------------------- registry world
# Each lighthouse sits at the end of an endless chain of registries: "<Base> Registry k" lists
# "<Base> Registry k-1" first, and "<Base> Registry 1" lists the lighthouse. The search can
# always find one more superset, so only the targets and attempt limits end the loop.

LIGHTHOUSES = {
    "Zorblat": ("Zorblat Lighthouse", "It was first lit in 1887.", "1887"),
    "Harrow": ("Harrow Point Light", "It was first lit in 1902.", "1902"),
}


def _level(identifier: str) -> tuple[str, int]:
    match = re.fullmatch(r"(\w+) Registry (\d+)", identifier)
    if match:
        return match[1], int(match[2])
    base = next(b for b, (title, _, _) in LIGHTHOUSES.items() if title == identifier)
    return base, 0


def next_registry(messages: list[BaseMessage]) -> AIMessage:
    identifier = re.search(r"Identifier: (.*?)\n", first_human(messages))[1]  # type: ignore[index]
    base, level = _level(identifier)
    name = f"{base} Registry {level + 1}"
    return superset(name, f"the entry listed first in {name}", name.lower().replace(" ", "-"))


def intermediate(messages: list[BaseMessage]) -> AIMessage:
    name = re.search(r"Superset: (.*?)\n", first_human(messages))[1]  # type: ignore[index]
    return structured("IntermediateQuestion", question=f"Which entry is listed first in {name}?")


def merged(messages: list[BaseMessage]) -> AIMessage:
    name = re.search(r"Superset: (.*?)\n", first_human(messages))[1]  # type: ignore[index]
    question = f"In what year was the lighthouse at the end of {name} first lit?"
    return structured("MergedQuestion", question=question)


def solve(question: str) -> str | None:
    match = re.fullmatch(r"Which entry is listed first in (\w+) Registry (\d+)\?", question)
    if match:
        base, level = match[1], int(match[2])
        return LIGHTHOUSES[base][0] if level == 1 else f"{base} Registry {level - 1}"
    match = re.match(r"In what year was the lighthouse at the end of (\w+) Registry", question)
    return LIGHTHOUSES[match[1]][2] if match else None


def registry_world(*bases: str) -> World:
    world = World(
        generator_rules=[Rule(INTERMEDIATE, intermediate), Rule(MERGE, merged)],
        agent_rules=[Rule(SUPERSET_SEARCH, next_registry)],
        solve=solve,
    )
    for base in bases:
        title, sentence, year = LIGHTHOUSES[base]
        question = f"In what year was the {title} first lit?"
        world.generator_rules += [
            Rule(
                EXTRACT + ".*" + re.escape(sentence),
                structured(
                    "Conclusions",
                    identifier=title,
                    conclusions=[{"answer": year, "relation": f"year the {title} was first lit"}],
                ),
            ),
            Rule(
                FORM_QUESTION + ".*" + re.escape(f"Relation: year the {title}"),
                structured("FormedQuestion", question=question, answer=year),
            ),
        ]
        world.found_with_tools[question] = year
    return world


def registry_context(tmp_path, **overrides: Any) -> Context:
    """A context whose local search reads the lighthouses and 60 registries of each."""
    corpus = tmp_path / "registries.jsonl"
    lines = []
    for base, (title, sentence, _) in LIGHTHOUSES.items():
        lines.append({"id": title.lower().replace(" ", "-"), "title": title, "text": sentence})
        for level in range(1, 61):
            name = f"{base} Registry {level}"
            listed = title if level == 1 else f"{base} Registry {level - 1}"
            text = f"{name} is a register of coastal works. It lists {listed} first."
            lines.append({"id": name.lower().replace(" ", "-"), "title": name, "text": text})
    corpus.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    return make_context(tmp_path, corpus_path=str(corpus), **overrides)


def texts(*bases: str) -> list[str]:
    return [f"{LIGHTHOUSES[b][0]}\n\n{LIGHTHOUSES[b][1]}" for b in bases]


async def run_bounded(inputs: dict[str, Any], context: Context) -> dict[str, Any]:
    # A runaway loop would hit LangGraph's recursion limit only after 10,000 steps: fail fast.
    async with asyncio.timeout(60):
        return await graph.ainvoke(inputs, context=context)


async def test_hops_stop_at_the_target_even_when_supersets_never_run_out(tmp_path, install) -> None:
    models = install(registry_world("Zorblat"))
    result = await run_bounded(
        {"texts": texts("Zorblat")}, registry_context(tmp_path, target_hops=5)
    )
    [task_] = result["tasks"]
    assert task_.hops == 5 and task_.difficulty == 5 and task_.kind == "depth"
    assert task_.identifier == "Zorblat Registry 4"
    assert task_.question == (
        "In what year was the lighthouse at the end of Zorblat Registry 4 first lit?"
    )
    assert [step.answer for step in task_.chain] == [
        "Zorblat Registry 3",
        "Zorblat Registry 2",
        "Zorblat Registry 1",
        "Zorblat Lighthouse",
        "1887",
    ]
    assert len(prompts(models["agent"], SUPERSET_SEARCH)) == 4  # exactly target_hops - 1 hops


@pytest.mark.parametrize(
    "adversary",
    ["merge_always_leaks", "merge_always_drifts", "search_never_finishes", "same_superset"],
)
async def test_no_model_reply_keeps_the_loop_going(tmp_path, install, adversary: str) -> None:
    world = registry_world("Zorblat")
    if adversary == "merge_always_leaks":
        # The judge accepts every superset, but every merge still names the identifier.
        world.generator_rules.insert(
            0,
            Rule(
                MERGE,
                structured("MergedQuestion", question="When was the Zorblat Lighthouse lit?"),
            ),
        )
    elif adversary == "merge_always_drifts":
        world.judge_rules.insert(0, Rule(MERGE_CHECK, merge_verdict(same_answer=False)))
    elif adversary == "search_never_finishes":
        world.agent_rules = [Rule(SUPERSET_SEARCH, tool_call("search", query="registry"))]
    else:
        world.agent_rules = [Rule(SUPERSET_SEARCH, superset("Zorblat Lighthouse", "itself"))]
    models = install(world)
    context = registry_context(tmp_path, target_hops=50, max_hop_attempts=3, agent_max_steps=4)

    result = await run_bounded({"texts": texts("Zorblat")}, context)

    [task_] = result["tasks"]
    assert task_.hops == 1 and task_.kind == "atomic"
    assert len(task_.failed_attempts) == 3
    searches = prompts(models["agent"], SUPERSET_SEARCH)
    if adversary == "search_never_finishes":
        # Each attempt's agent is cut at its step limit.
        assert len(searches) == 3 * 4
        assert {r.detail for r in task_.failed_attempts} == {"step limit reached"}
    else:
        assert len(searches) == 3
    assert len(prompts(models["generator"], MERGE)) <= 3


async def test_strategy_both_deepens_then_merges(tmp_path, install) -> None:
    world = registry_world("Zorblat", "Harrow")
    world.generator_rules.insert(0, Rule(WIDTH_MERGE, write_merged))
    world.judge_rules.insert(0, Rule(DECOMPOSE, decompose))
    install(world)
    context = registry_context(tmp_path, extension_strategy="both", target_hops=2, target_width=2)
    events: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    async with asyncio.timeout(60):
        async for mode, chunk in graph.astream(
            {"texts": texts("Zorblat", "Harrow")},
            context=context,
            stream_mode=["custom", "values"],
        ):
            if mode == "custom":
                events.append(chunk)
            else:
                final = chunk

    deep = [t for t in final["tasks"] if t.kind == "depth"]
    [wide] = [t for t in final["tasks"] if t.kind == "width"]
    assert len(deep) == 2 and all(t.hops == 2 for t in deep)
    assert {m.id for m in wide.members} == {t.id for t in deep}
    assert wide.hops == 2 and wide.width == 2 and wide.difficulty == 4
    assert wide.answer == "; ".join(m.answer for m in wide.members)
    assert sorted(wide.answer.split("; ")) == ["1887", "1902"]
    # The chain lists each member's sub-tasks in solving order, member after member.
    assert [step.answer for step in wide.chain] == [
        answer for member in wide.members for answer in (member.chain[0].answer, member.answer)
    ]
    # Depth hops all finish before the width merge starts.
    stages = [e["stage"] for e in events]
    last_hop = max(i for i, s in enumerate(stages) if s == "depth_hop")
    assert last_hop < stages.index("collect") < stages.index("width_merge")


@pytest.mark.server
async def test_langgraph_dev_runs_the_depth_loop(server_url: str, tmp_path) -> None:  # noqa: F811
    from langgraph_sdk import get_client

    from tests.test_depth import HOP3_MERGED, LIGHTHOUSE_TEXT, write_corpus

    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus)
    context: dict[str, Any] = {
        "generator_model": "tests.test_depth:lighthouse_generator",
        "agent_model": "tests.test_depth:lighthouse_agent",
        "judge_model": "tests.test_depth:lighthouse_judge",
        "corpus_path": str(corpus),
        "data_dir": str(tmp_path / "data"),
        "target_hops": 3,
        "structured_output_retries": 0,
    }
    client = get_client(url=server_url)
    assistant = next(
        a for a in await client.assistants.search(limit=20) if a["graph_id"] == "taskcraft"
    )
    drawing = await client.assistants.get_graph(assistant["assistant_id"])
    edges = {(edge["source"], edge["target"]) for edge in drawing["edges"]}
    assert {("depth_hop", "depth_hop"), ("depth_hop", "collect")} <= edges

    thread = await client.threads.create()
    inputs: dict[str, Any] = {"texts": [LIGHTHOUSE_TEXT]}
    events = [
        part.data
        async for part in client.runs.stream(
            thread["thread_id"],
            "taskcraft",
            input=inputs,
            context=context,
            stream_mode="custom",
        )
        if part.event == "custom"
    ]
    hops = [e["hops"] for e in events if e["stage"] == "depth_hop" and e["status"] == "accepted"]
    assert hops == [2, 3]
    state = await client.threads.get_state(thread["thread_id"])
    values: Any = state["values"]
    [task] = values["tasks"]
    assert task["question"] == HOP3_MERGED and task["hops"] == 3
    assert [step["answer"] for step in task["chain"]] == [
        "Kelvar Island",
        "Zorblat Lighthouse",
        "1887",
    ]
