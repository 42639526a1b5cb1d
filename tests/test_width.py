"""Width merges: one question answered by all of its members' answers."""

from __future__ import annotations

import re
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.runtime import Runtime

from langgraph_taskcraft.graphs.taskcraft import graph
from langgraph_taskcraft.nodes.width import combined_answer, width_merge
from langgraph_taskcraft.records import ChainStep, Task, Verification, content_id
from langgraph_taskcraft.state import WidthBranch
from tests.fakes import Rule, structured
from tests.test_depth import (
    EXTRACT,
    FORM_QUESTION,
    GRADER,
    LLM_ONLY,
    World,
    first_human,
    installer,
    make_context,
    prompts,
    server_models,
)


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch):
    return installer(monkeypatch)


WIDTH_MERGE = r"Merge several questions into one"
DECOMPOSE = r"You are checking a merged \(width\) question"

# Four one-fact documents: (title, sentence, question, answer).
FACTS = [
    (
        "Zorblat Lighthouse",
        "The Zorblat Lighthouse was first lit in 1887.",
        "In what year was the Zorblat Lighthouse first lit?",
        "1887",
    ),
    (
        "Kelvar Island",
        "Kelvar Island has a population of 312 people.",
        "How many people live on Kelvar Island?",
        "312",
    ),
    (
        "Brask Archipelago",
        "The Brask Archipelago is made up of 17 islands.",
        "How many islands make up the Brask Archipelago?",
        "17",
    ),
    (
        "Sorrel Sea",
        "The Sorrel Sea reaches a greatest depth of 94 metres.",
        "What is the greatest depth of the Sorrel Sea?",
        "94 metres",
    ),
]


def member_questions(prompt: str) -> list[str]:
    return re.findall(r"^\d+\. (?:Question: )?(.*?)$", prompt, re.M)


def join_questions(questions: list[str]) -> str:
    """The scripted generator's merge: "Q1 without '?', and q2 ..."."""
    parts = [q.rstrip("?") for q in questions]
    parts[1:] = [p[0].lower() + p[1:] for p in parts[1:]]
    return ", and ".join(parts) + "?"


def write_merged(messages: list[BaseMessage]) -> AIMessage:
    return structured(
        "WidthQuestion", question=join_questions(member_questions(first_human(messages)))
    )


def decompose(messages: list[BaseMessage]) -> AIMessage:
    prompt = first_human(messages)
    merged = re.search(r"Merged question: (.*?)\n", prompt).group(1)  # type: ignore[union-attr]
    subs = [s.strip() for s in merged.rstrip("?").split(", and ")]
    return structured(
        "WidthDecomposition",
        sub_questions=subs,
        decomposes=True,
        nothing_else=True,
        reason="each part is one original question",
    )


def width_world() -> World:
    world = World(
        generator_rules=[Rule(WIDTH_MERGE, write_merged)],
        judge_rules=[Rule(DECOMPOSE, decompose)],
    )
    for fact in FACTS:
        add_fact(world, *fact)
    return world


width_generator, width_agent, width_judge = server_models(width_world)


def add_fact(world: World, title: str, sentence: str, question: str, answer: str) -> None:
    """A one-fact document the generator extracts and the agent answers from."""
    world.generator_rules += [
        Rule(
            EXTRACT + ".*" + re.escape(sentence),
            structured(
                "Conclusions",
                identifier=title,
                conclusions=[{"answer": answer, "relation": f"fact about {title}"}],
            ),
        ),
        Rule(
            FORM_QUESTION + r".*Relation: fact about " + re.escape(title),
            structured("FormedQuestion", question=question, answer=answer),
        ),
    ]
    world.found_with_tools[question] = answer


def task(index: int, **overrides: Any) -> Task:
    title, _, question, answer = FACTS[index]
    values: dict[str, Any] = {
        "id": content_id("task", title),
        "question": question,
        "answer": answer,
        "identifier": title,
        "source": f"text:{index}",
        "document_id": content_id("doc", title),
        "verification": Verification(accepted=True),
        "trajectory": [{"role": "user", "content": question}],
    }
    values.update(overrides)
    return Task(**values)


async def run_merge(members: list[Task], context) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    update = await width_merge(
        WidthBranch(members=members), Runtime(context=context, stream_writer=events.append)
    )
    return update, events


def width_context(tmp_path, **overrides: Any):
    values: dict[str, Any] = {
        "extension_strategy": "width",
        "target_width": 2,
        "max_width_attempts": 3,
    }
    values.update(overrides)
    return make_context(tmp_path, **values)


async def test_merged_task_combines_its_members(tmp_path, install) -> None:
    models = install(width_world())
    members = [task(0), task(1)]
    update, events = await run_merge(members, width_context(tmp_path))

    [merged] = update["tasks"]
    assert merged.kind == "width"
    assert merged.question == (
        "In what year was the Zorblat Lighthouse first lit, and how many people live on "
        "Kelvar Island?"
    )
    assert merged.answer == "1887; 312"
    assert merged.width == 2 and merged.hops == 1 and merged.difficulty == 2
    assert [m.id for m in merged.members] == [m.id for m in members]
    assert [(s.question, s.answer) for s in merged.chain] == [
        (FACTS[0][2], "1887"),
        (FACTS[1][2], "312"),
    ]
    assert merged.document_id == f"{members[0].document_id},{members[1].document_id}"
    # The LLM-only check ran (the model alone did not know) and is recorded.
    assert merged.verification.llm_only_answer == "I do not know."
    assert merged.verification.llm_only_score == 0.0
    assert merged.failed_attempts == []
    assert "rejected" not in update
    assert update["usage"]["generator:width_merge"].calls == 1
    assert update["usage"]["judge:width_decompose_check"].calls == 1
    assert update["usage"]["agent:width_llm_only_answer"].calls == 1
    assert len(prompts(models["agent"], LLM_ONLY)) == 1
    assert [e["status"] for e in events] == ["started", "accepted"]
    assert merged.trajectory[0] == {"role": "user", "content": merged.question}
    assert merged.trajectory[-1] == {"role": "assistant", "content": "1887; 312"}


async def test_deep_members_keep_their_chains_in_solving_order(tmp_path, install) -> None:
    install(width_world())
    hop = ChainStep(
        question="Which lighthouse stands on Kelvar Island?", answer="Zorblat Lighthouse"
    )
    atomic = ChainStep(question=FACTS[0][2], answer="1887")
    deep = task(
        0,
        question="In what year was the lighthouse of Kelvar Island first lit?",
        kind="depth",
        hops=2,
        difficulty=2,
        chain=[hop, atomic],
    )
    update, _ = await run_merge([deep, task(2)], width_context(tmp_path))
    [merged] = update["tasks"]
    assert merged.hops == 2 and merged.width == 2 and merged.difficulty == 3
    assert [s.question for s in merged.chain] == [hop.question, atomic.question, FACTS[2][2]]
    assert merged.answer == "1887; 17"


async def test_question_that_does_not_decompose_is_rejected(tmp_path, install) -> None:
    world = width_world()
    # First attempt: the judge finds only one sub-question (the second one was lost).
    world.judge_rules.insert(
        0,
        Rule(
            DECOMPOSE,
            structured(
                "WidthDecomposition",
                sub_questions=["In what year was the Zorblat Lighthouse first lit?"],
                decomposes=False,
                nothing_else=True,
                reason="the island question is missing",
            ),
            times=1,
        ),
    )
    models = install(world)
    update, events = await run_merge([task(0), task(1)], width_context(tmp_path))

    [merged] = update["tasks"]
    [rejection] = merged.failed_attempts
    assert (rejection.stage, rejection.reason) == ("width_decompose_check", "not_decomposable")
    assert "the island question is missing" in rejection.detail
    assert rejection.answer == "1887; 312"
    # The second attempt was told why the first one failed.
    assert "not_decomposable" in prompts(models["generator"], WIDTH_MERGE)[-1]
    assert [e["status"] for e in events] == ["started", "rejected", "started", "accepted"]


async def test_sub_question_count_must_match_the_members(tmp_path, install) -> None:
    world = width_world()
    world.judge_rules.insert(
        0,
        Rule(
            DECOMPOSE,
            structured(
                "WidthDecomposition",
                sub_questions=["a", "b", "c"],
                decomposes=True,  # the verdict says yes, the count says no
                nothing_else=True,
                reason="ok",
            ),
        ),
    )
    install(world)
    update, _ = await run_merge([task(0), task(1)], width_context(tmp_path, max_width_attempts=1))
    [rejection] = update["rejected"]
    assert (rejection.stage, rejection.reason) == ("width_decompose_check", "not_decomposable")


async def test_question_that_asks_more_is_rejected(tmp_path, install) -> None:
    world = width_world()

    def more(messages: list[BaseMessage]) -> AIMessage:
        reply = decompose(messages)
        reply.tool_calls[0]["args"]["nothing_else"] = False
        return reply

    world.judge_rules.insert(0, Rule(DECOMPOSE, more))
    install(world)
    update, _ = await run_merge([task(0), task(1)], width_context(tmp_path, max_width_attempts=1))
    [rejection] = update["rejected"]
    assert (rejection.stage, rejection.reason) == ("width_decompose_check", "asks_more")


async def test_question_the_llm_answers_alone_is_rejected(tmp_path, install) -> None:
    world = width_world()
    merged_question = join_questions([FACTS[0][2], FACTS[1][2]])
    world.known_without_tools[merged_question] = "1887 and 312"
    models = install(world)
    update, events = await run_merge([task(0), task(1)], width_context(tmp_path))

    assert "tasks" not in update
    assert [(r.stage, r.reason) for r in update["rejected"]] == [
        ("width_llm_only", "answered_without_tools")
    ] * 3
    rejection = update["rejected"][0]
    assert rejection.question == merged_question
    assert rejection.verification is not None
    assert rejection.verification.llm_only_answer == "1887 and 312"
    assert rejection.verification.llm_only_score == 1.0
    # Bounded: exactly `max_width_attempts` merges were written.
    assert len(prompts(models["generator"], WIDTH_MERGE)) == 3
    assert len(prompts(models["judge"], GRADER)) == 3
    assert events[-1] == {
        "stage": "width_merge",
        "status": "failed",
        "id": rejection.id,
        "attempts": 3,
    }


async def test_question_that_states_an_answer_is_rejected(tmp_path, install) -> None:
    world = width_world()
    world.generator_rules.insert(
        0,
        Rule(
            WIDTH_MERGE,
            structured("WidthQuestion", question="Was the lighthouse lit in 1887, and who lives?"),
            times=1,
        ),
    )
    models = install(world)
    update, _ = await run_merge([task(0), task(1)], width_context(tmp_path))
    [merged] = update["tasks"]
    assert [(r.stage, r.reason) for r in merged.failed_attempts] == [
        ("width_merge_check", "answer_in_question")
    ]
    assert len(prompts(models["judge"], DECOMPOSE)) == 1  # the leaky one never reached the judge


async def test_final_verification_of_a_width_task(tmp_path, install) -> None:
    world = width_world()
    merged_question = join_questions([FACTS[0][2], FACTS[1][2]])
    world.found_with_tools[merged_question] = "1887; 312"
    install(world)
    update, _ = await run_merge([task(0), task(1)], width_context(tmp_path, verify_final_task=True))
    [merged] = update["tasks"]
    assert merged.final_verification is not None and merged.final_verification.accepted
    assert merged.final_verification.agent_answer == "1887; 312"
    assert update["usage"]["agent:agent_run"].calls == 2


async def test_each_merged_task_carries_its_own_members_answers(tmp_path, install) -> None:
    """The official code attached the last group's answers to every merged task; not here."""
    install(width_world())
    texts = [f"{title}\n\n{sentence}" for title, sentence, _, _ in FACTS]
    events: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    async for mode, chunk in graph.astream(
        {"texts": texts}, context=width_context(tmp_path), stream_mode=["custom", "values"]
    ):
        if mode == "custom":
            events.append(chunk)
        else:
            final = chunk

    atomic = [t for t in final["tasks"] if t.kind == "atomic"]
    merged = [t for t in final["tasks"] if t.kind == "width"]
    assert len(atomic) == 4 and len(merged) == 2
    for width_task in merged:
        assert width_task.answer == combined_answer(width_task.members)
        assert width_task.answer == "; ".join(m.answer for m in width_task.members)
        for member in width_task.members:
            assert member.question.rstrip("?")[1:] in width_task.question
        # Members from different documents (round-robin grouping).
        assert len({m.document_id for m in width_task.members}) == 2
    first, second = ({m.id for m in t.members} for t in merged)
    assert not first & second and first | second == {t.id for t in atomic}
    assert merged[0].answer != merged[1].answer
    assert sorted(a for t in merged for a in t.answer.split("; ")) == sorted(
        answer for *_, answer in FACTS
    )
    width_events = [e for e in events if e["stage"] == "width_merge"]
    assert [e["status"] for e in width_events].count("accepted") == 2


async def test_no_width_merge_without_a_width_target(tmp_path, install) -> None:
    models = install(width_world())
    texts = [f"{title}\n\n{sentence}" for title, sentence, _, _ in FACTS[:2]]
    result = await graph.ainvoke({"texts": texts}, context=width_context(tmp_path, target_width=1))
    assert [t.kind for t in result["tasks"]] == ["atomic", "atomic"]
    assert prompts(models["generator"], WIDTH_MERGE) == []


@pytest.mark.parametrize("count", [3, 5])
async def test_a_short_remainder_is_left_unmerged(tmp_path, install, count: int) -> None:
    world = width_world()
    extra = [
        (
            f"Reef {n}",
            f"Reef {n} lies {n}0 km offshore.",
            f"How far offshore is Reef {n}?",
            f"{n}0 km",
        )
        for n in range(1, 3)
    ]
    for fact in extra:
        add_fact(world, *fact)
    install(world)
    facts = (FACTS + extra)[:count]
    texts = [f"{title}\n\n{sentence}" for title, sentence, _, _ in facts]
    result = await graph.ainvoke({"texts": texts}, context=width_context(tmp_path))
    merged = [t for t in result["tasks"] if t.kind == "width"]
    assert len(merged) == count // 2
    used = [m.id for t in merged for m in t.members]
    assert len(used) == len(set(used)) == 2 * (count // 2)
