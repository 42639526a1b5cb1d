"""Depth hops: superset search and check, intermediate question, merge and semantic check.

The scripted world: a lighthouse on an island of an archipelago (all names invented).
Atomic task: "In what year was the Zorblat Lighthouse first lit?" → 1887. Hop 2 describes the
lighthouse through Kelvar Island, hop 3 describes the island through the Brask Archipelago.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.runtime import Runtime
from langgraph.types import Send

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.graphs.taskcraft import graph
from langgraph_taskcraft.nodes.depth import (
    compose_trajectory,
    depth_hop,
    identifier_names,
    names_identifier,
)
from langgraph_taskcraft.records import ChainStep, Task, Verification, content_id
from langgraph_taskcraft.state import TaskBranch
from tests.fakes import Rule, ScriptedChatModel, structured, tool_call, transcript_of

# ----------------------------------------------------------------------------- scripted world

LIGHTHOUSE_TEXT = (
    "Zorblat Lighthouse\n\nThe Zorblat Lighthouse (locally called Zorblat Light) stands on the "
    "northern cape of Kelvar Island. It was first lit in 1887 and is built of grey granite."
)
ISLAND_TEXT = (
    "Kelvar Island\n\nKelvar Island is the largest island of the Brask Archipelago. Its only "
    "lighthouse is the Zorblat Lighthouse on the northern cape."
)
ARCHIPELAGO_TEXT = (
    "Brask Archipelago\n\nThe Brask Archipelago is a chain of islands in the Sorrel Sea. Its "
    "largest island is Kelvar Island."
)

ATOMIC_Q = "In what year was the Zorblat Lighthouse first lit?"
HOP2_INTERMEDIATE = "What is the only lighthouse on Kelvar Island?"
HOP2_MERGED = "In what year was the only lighthouse on Kelvar Island first lit?"
HOP3_INTERMEDIATE = "What is the largest island of the Brask Archipelago?"
HOP3_MERGED = (
    "In what year was the only lighthouse on the largest island of the Brask Archipelago first lit?"
)

EXTRACT = r"You collect short, checkable facts"
FORM_QUESTION = r"Write one question whose answer is the given answer"
SUPERSET_SEARCH = r"Backward search: find a superset"
SUPERSET_CHECK = r"checking a proposed superset"
INTERMEDIATE = r"intermediate question of a depth hop"
MERGE = r"Merge a depth hop into a question"
MERGE_CHECK = r"checking a merged multi-hop question"
LLM_ONLY = r"Answer the question below from your own knowledge"
VERIFIER_AGENT = r"research agent answering a question"
GRADER = r"You are grading an answer"

# Models the Context names as `tests.test_depth:<role>`; each test installs fresh ones.
MODELS: dict[str, ScriptedChatModel] = {}


def generator() -> ScriptedChatModel:
    """The generator of the running test."""
    return MODELS["generator"]


def agent() -> ScriptedChatModel:
    """The agent model of the running test."""
    return MODELS["agent"]


def judge() -> ScriptedChatModel:
    """The judge of the running test."""
    return MODELS["judge"]


def superset(identifier: str, relation: str, evidence: str = "", quote: str = "") -> AIMessage:
    return structured(
        "Superset", identifier=identifier, relation=relation, evidence=evidence, quote=quote
    )


def superset_verdict(
    is_superset: bool = True, unique: bool = True, is_synonym: bool = False
) -> AIMessage:
    return structured(
        "SupersetJudgement",
        is_superset=is_superset,
        unique=unique,
        is_synonym=is_synonym,
        reason="scripted verdict",
    )


def merge_verdict(
    same_answer: bool = True, one_more_hop: bool = True, natural: bool = True
) -> AIMessage:
    return structured(
        "MergeJudgement",
        same_answer=same_answer,
        one_more_hop=one_more_hop,
        natural=natural,
        reason="scripted verdict",
    )


def first_human(messages: list[BaseMessage]) -> str:
    return next(m.text for m in messages if isinstance(m, HumanMessage))


def _field(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.S)
    assert match, f"{pattern!r} not in prompt"
    return match.group(1).strip()


@dataclass
class World:
    """What the scripted models know and say.

    `found_with_tools` maps a question to the answer the verifier agent finds (when
    `answer_needs_evidence`, only if a tool result contains it); `known_without_tools` maps a
    question to what the model says from memory (anything else: "I do not know.").
    """

    generator_rules: list[Rule] = field(default_factory=list)
    agent_rules: list[Rule] = field(default_factory=list)
    judge_rules: list[Rule] = field(default_factory=list)
    found_with_tools: dict[str, str] = field(default_factory=dict)
    known_without_tools: dict[str, str] = field(default_factory=dict)
    answer_needs_evidence: bool = False
    solve: Callable[[str], str | None] | None = None
    """Answers questions missing from `found_with_tools` (None: not found)."""

    def llm_only(self, messages: list[BaseMessage]) -> str:
        question = _field(r"Question: (.*)$", first_human(messages))
        return self.known_without_tools.get(question, "I do not know.")

    def verifier_agent(self, messages: list[BaseMessage]) -> AIMessage | str:
        question = first_human(messages)
        results = [m.text for m in messages if isinstance(m, ToolMessage)]
        if not results:
            return tool_call("search", query=question)
        answer = self.found_with_tools.get(question)
        if answer is None and self.solve is not None:
            answer = self.solve(question)
        if answer is None or (self.answer_needs_evidence and answer not in "\n".join(results)):
            return "I could not find the answer."
        return answer

    @staticmethod
    def grade(messages: list[BaseMessage]) -> AIMessage:
        prompt = first_human(messages)
        golden = _field(r"Golden answer: (.*?)\n", prompt).casefold()
        candidate = _field(r"Candidate answer: (.*?)\n", prompt).casefold()
        # Correct when every part of the golden answer (width answers join parts with "; ")
        # is stated.
        correct = all(part.strip() in candidate for part in golden.split(";"))
        return structured("AnswerJudgement", correct=correct, reason="compared")

    def models(self) -> dict[str, ScriptedChatModel]:
        return {
            "generator": ScriptedChatModel(
                rules=[
                    *self.generator_rules,
                    Rule(EXTRACT, structured("Conclusions", identifier="", conclusions=[])),
                ]
            ),
            "agent": ScriptedChatModel(
                rules=[
                    *self.agent_rules,
                    Rule(SUPERSET_SEARCH, structured("Superset", found=False)),
                    Rule(LLM_ONLY, self.llm_only),
                    Rule(VERIFIER_AGENT, self.verifier_agent),
                ]
            ),
            "judge": ScriptedChatModel(
                rules=[
                    *self.judge_rules,
                    Rule(SUPERSET_CHECK, superset_verdict()),
                    Rule(MERGE_CHECK, merge_verdict()),
                    Rule(GRADER, self.grade),
                ]
            ),
        }


def lighthouse_world() -> World:
    """Atomic lighthouse task plus the two hops (island, archipelago), all valid."""
    return World(
        generator_rules=[
            Rule(
                EXTRACT + r".*first lit in 1887",
                structured(
                    "Conclusions",
                    identifier="Zorblat Lighthouse",
                    conclusions=[
                        {"answer": "1887", "relation": "year the Zorblat Lighthouse was first lit"}
                    ],
                ),
            ),
            Rule(
                FORM_QUESTION + r".*Answer: 1887",
                structured("FormedQuestion", question=ATOMIC_Q, answer="1887"),
            ),
            Rule(
                INTERMEDIATE + r".*Answer: Zorblat Lighthouse",
                structured("IntermediateQuestion", question=HOP2_INTERMEDIATE),
            ),
            Rule(
                INTERMEDIATE + r".*Answer: Kelvar Island",
                structured("IntermediateQuestion", question=HOP3_INTERMEDIATE),
            ),
            Rule(
                MERGE + r".*Identifier to replace: Zorblat Lighthouse",
                structured("MergedQuestion", question=HOP2_MERGED),
            ),
            Rule(
                MERGE + r".*Identifier to replace: Kelvar Island",
                structured("MergedQuestion", question=HOP3_MERGED),
            ),
        ],
        agent_rules=[
            Rule(
                SUPERSET_SEARCH + r".*Identifier: Zorblat Lighthouse",
                superset(
                    "Kelvar Island",
                    "the only lighthouse on Kelvar Island",
                    "kelvar-island",
                    "Its only lighthouse is the Zorblat Lighthouse.",
                ),
            ),
            Rule(
                SUPERSET_SEARCH + r".*Identifier: Kelvar Island",
                superset(
                    "Brask Archipelago",
                    "the largest island of the Brask Archipelago",
                    "brask-archipelago",
                    "Its largest island is Kelvar Island.",
                ),
            ),
        ],
        found_with_tools={
            ATOMIC_Q: "1887",
            HOP2_INTERMEDIATE: "Zorblat Lighthouse",
            HOP3_INTERMEDIATE: "Kelvar Island",
            HOP2_MERGED: "1887",
            HOP3_MERGED: "1887",
        },
    )


def server_models(
    world: Callable[[], World],
) -> tuple[Callable[[], ScriptedChatModel], ...]:
    """Generator, agent and judge factories of one world, for processes that cannot install
    models (a `langgraph dev` server): the Context names them as `module:attribute`."""
    models = functools.cache(lambda: world().models())
    return tuple(functools.partial(lambda role: models()[role], role) for role in ROLES)


ROLES = ("generator", "agent", "judge")
lighthouse_generator, lighthouse_agent, lighthouse_judge = server_models(lighthouse_world)


def installer(monkeypatch: pytest.MonkeyPatch) -> Callable[[World], dict[str, ScriptedChatModel]]:
    """A function that installs a world's models as this module's generator, agent and judge."""

    def install_world(world: World) -> dict[str, ScriptedChatModel]:
        models = world.models()
        for role, model in models.items():
            monkeypatch.setitem(MODELS, role, model)
        return models

    return install_world


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Callable[[World], dict[str, ScriptedChatModel]]:
    """Install a world's models for the running test."""
    return installer(monkeypatch)


def make_context(tmp_path: Path, **overrides: Any) -> Context:
    """A context naming this module's models; the local search reads the lighthouse corpus
    (written to `tmp_path`) unless `corpus_path` is given."""
    if "corpus_path" not in overrides:
        corpus = tmp_path / "corpus.jsonl"
        write_corpus(corpus)
        overrides["corpus_path"] = str(corpus)
    values: dict[str, Any] = {
        "generator_model": "tests.test_depth:generator",
        "agent_model": "tests.test_depth:agent",
        "judge_model": "tests.test_depth:judge",
        "search_backend": "local",
        "data_dir": str(tmp_path / "data"),
        "target_hops": 2,
        "extension_strategy": "depth",
        "max_hop_attempts": 3,
        "structured_output_retries": 0,
        "max_concurrency": 4,
    }
    values.update(overrides)
    return Context(**values)


def atomic_task() -> Task:
    """The verified atomic lighthouse task, as the verify node hands it over."""
    trajectory: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a research agent answering a question."},
        {"role": "user", "content": ATOMIC_Q},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "type": "function",
                    "id": "call_atomic",
                    "function": {"name": "search", "arguments": '{"query": "Zorblat"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_atomic", "content": "first lit in 1887"},
        {"role": "assistant", "content": "1887"},
    ]
    verification = Verification(accepted=True, trajectory=trajectory)
    return Task(
        id=content_id("atomic-lighthouse"),
        question=ATOMIC_Q,
        answer="1887",
        identifier="Zorblat Lighthouse",
        relation="year the Zorblat Lighthouse was first lit",
        source="text:0",
        document_id=content_id("lighthouse-doc"),
        verification=verification,
        trajectory=trajectory,
    )


async def run_hop(task: Task, context: Context) -> tuple[Any, list[dict[str, Any]]]:
    """Run the depth_hop node once, outside a graph; returns its Command and its events."""
    events: list[dict[str, Any]] = []
    command = await depth_hop(
        TaskBranch(task=task), Runtime(context=context, stream_writer=events.append)
    )
    return command, events


def left_task(command: Any) -> Task:
    """The task a Command sends out of the loop."""
    assert command.goto == "collect"
    [task] = command.update["tasks"]
    return task


def sent_task(command: Any) -> Task:
    """The task a Command sends to another hop."""
    assert isinstance(command.goto, Send) and command.goto.node == "depth_hop"
    return command.goto.arg.task


def prompts(model: ScriptedChatModel, pattern: str) -> list[str]:
    return [
        transcript_of(call)
        for call in model.calls
        if re.search(pattern, transcript_of(call), re.S | re.I)
    ]


# ----------------------------------------------------------------------------- pure helpers


def test_identifier_names_cover_disambiguation_and_file_names() -> None:
    assert identifier_names("Blue (album)") == ["Blue (album)", "Blue"]
    assert identifier_names("annual-report.pdf") == ["annual-report.pdf", "annual-report"]
    assert identifier_names("Kelvar Island") == ["Kelvar Island"]


def test_names_identifier_is_case_insensitive_and_whole_word() -> None:
    assert names_identifier("When was the ZORBLAT lighthouse lit?", "Zorblat Lighthouse")
    assert names_identifier("Who sang on Blue?", "Blue (album)")
    assert not names_identifier("Who sang on Bluebird?", "Blue (album)")
    assert not names_identifier(HOP2_MERGED, "Zorblat Lighthouse")


def test_compose_trajectory_replays_steps_in_solving_order() -> None:
    def step(question: str, answer: str, call_id: str, result: str) -> ChainStep:
        return ChainStep(
            question=question,
            answer=answer,
            trajectory=[
                {"role": "system", "content": "SYSTEM"},
                {"role": "user", "content": question},
                {"role": "assistant", "content": "", "tool_calls": [{"id": call_id}]},
                {"role": "tool", "tool_call_id": call_id, "content": result},
                {"role": "assistant", "content": answer},
            ],
        )

    chain = [
        step(HOP2_INTERMEDIATE, "Zorblat Lighthouse", "c1", "island page"),
        step(ATOMIC_Q, "1887", "c2", "lighthouse page"),
    ]
    composed = compose_trajectory(HOP2_MERGED, "1887", chain)
    assert [m["role"] for m in composed] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert composed[1]["content"] == HOP2_MERGED
    assert [m["tool_call_id"] for m in composed if m["role"] == "tool"] == ["c1", "c2"]
    assert composed[-1] == {"role": "assistant", "content": "1887"}
    assert compose_trajectory("q", "a", [ChainStep(question="q", answer="a")]) == []


# ----------------------------------------------------------------------------- one hop, node level


async def test_successful_hop_builds_the_chain_in_solving_order(tmp_path, install) -> None:
    models = install(lighthouse_world())
    command, events = await run_hop(atomic_task(), make_context(tmp_path))

    task = left_task(command)
    assert task.kind == "depth"
    assert task.hops == 2 and task.difficulty == 2
    assert task.question == HOP2_MERGED and task.answer == "1887"
    assert task.identifier == "Kelvar Island"
    assert task.relation == "the only lighthouse on Kelvar Island"
    assert task.failed_attempts == []
    # Solving order: find the lighthouse from the island, then the year from the lighthouse.
    assert [(s.question, s.answer) for s in task.chain] == [
        (HOP2_INTERMEDIATE, "Zorblat Lighthouse"),
        (ATOMIC_Q, "1887"),
    ]
    assert task.chain[0].identifier == "Kelvar Island"
    assert task.chain[0].evidence == "kelvar-island"
    assert task.chain[1].identifier == "Zorblat Lighthouse"
    # The intermediate step carries the verifier agent's trajectory for its own question.
    intermediate_trajectory = task.chain[0].trajectory
    assert intermediate_trajectory[1] == {"role": "user", "content": HOP2_INTERMEDIATE}
    assert intermediate_trajectory[-1]["content"] == "Zorblat Lighthouse"
    assert task.trajectory[1]["content"] == HOP2_MERGED
    assert task.trajectory[-1] == {"role": "assistant", "content": "1887"}
    # Every stage ran exactly once, and the usage is counted per stage.
    assert len(prompts(models["agent"], SUPERSET_SEARCH)) == 1
    assert len(prompts(models["judge"], SUPERSET_CHECK)) == 1
    assert len(prompts(models["judge"], MERGE_CHECK)) == 1
    for key in (
        "agent:depth_superset_search",
        "judge:depth_superset_check",
        "generator:depth_intermediate_question",
        "generator:depth_merge",
        "judge:depth_merge_check",
        "agent:agent_run",
    ):
        assert command.update["usage"][key].calls >= 1, key
    assert [(e["status"]) for e in events] == ["started", "accepted"]
    assert events[-1]["hops"] == 2


async def test_hop_below_target_is_sent_to_another_hop(tmp_path, install) -> None:
    install(lighthouse_world())
    command, _ = await run_hop(atomic_task(), make_context(tmp_path, target_hops=3))
    task = sent_task(command)
    assert task.hops == 2
    assert "tasks" not in command.update
    assert command.update["usage"]


async def test_invalid_superset_is_rejected_by_the_judge(tmp_path, install) -> None:
    world = lighthouse_world()
    # First attempt: the sea around the archipelago (many lighthouses: not unique); second: a
    # synonym; third: the island, valid.
    world.agent_rules[:0] = [
        Rule(
            SUPERSET_SEARCH,
            superset("Sorrel Sea", "a lighthouse in the Sorrel Sea", "sorrel-sea"),
            times=1,
        ),
        Rule(
            SUPERSET_SEARCH,
            superset("Zorblat Light", "also called", "zorblat-lighthouse"),
            times=1,
        ),
    ]
    world.judge_rules = [
        Rule(SUPERSET_CHECK + r".*Proposed superset: Sorrel Sea", superset_verdict(unique=False)),
        Rule(
            SUPERSET_CHECK + r".*Proposed superset: Zorblat Light\n",
            superset_verdict(is_synonym=True),
        ),
    ]
    models = install(world)
    command, events = await run_hop(atomic_task(), make_context(tmp_path))

    task = left_task(command)
    assert task.hops == 2 and task.identifier == "Kelvar Island"
    assert [(r.stage, r.reason) for r in task.failed_attempts] == [
        ("depth_superset_check", "not_unique"),
        ("depth_superset_check", "synonym"),
    ]
    assert task.failed_attempts[0].detail == "scripted verdict"
    # A rejected superset never reaches the intermediate question.
    intermediate_prompts = prompts(models["generator"], INTERMEDIATE)
    assert len(intermediate_prompts) == 1 and "Superset: Kelvar Island" in intermediate_prompts[0]
    # The next search is told which supersets were already tried.
    last_search = prompts(models["agent"], SUPERSET_SEARCH)[-1]
    assert "- Sorrel Sea" in last_search and "- Zorblat Light" in last_search
    assert [e["status"] for e in events] == [
        "started",
        "rejected",
        "started",
        "rejected",
        "started",
        "accepted",
    ]
    assert (events[1]["rejected_by"], events[1]["reason"]) == ("depth_superset_check", "not_unique")


async def test_superset_equal_to_identifier_or_answer_is_rejected_without_the_judge(
    tmp_path, install
) -> None:
    world = lighthouse_world()
    world.agent_rules[:0] = [
        Rule(SUPERSET_SEARCH, superset("zorblat  LIGHTHOUSE", "itself"), times=1),
        Rule(SUPERSET_SEARCH, superset("1887", "the year"), times=1),
    ]
    models = install(world)
    command, _ = await run_hop(atomic_task(), make_context(tmp_path))
    task = left_task(command)
    assert [(r.stage, r.reason) for r in task.failed_attempts] == [
        ("depth_superset_check", "same_as_identifier"),
        ("depth_superset_check", "cycle"),
    ]
    assert len(prompts(models["judge"], SUPERSET_CHECK)) == 1  # only the valid one was judged


@pytest.mark.parametrize(
    ("proposal", "reason"),
    [
        (superset("Foggy Bank", "the bank beside it", "foggy-bank"), "evidence_not_found"),
        (
            # A real page, but it names neither the lighthouse nor anything that contains it.
            superset("Harrow Point Light", "the light across the bay", "harrow-point-light"),
            "evidence_unrelated",
        ),
    ],
)
async def test_superset_not_backed_by_the_corpus_is_rejected_without_the_judge(
    tmp_path, install, proposal: AIMessage, reason: str
) -> None:
    world = lighthouse_world()
    world.agent_rules.insert(0, Rule(SUPERSET_SEARCH, proposal, times=1))
    models = install(world)
    command, _ = await run_hop(atomic_task(), make_context(tmp_path))
    task = left_task(command)
    assert task.identifier == "Kelvar Island"
    assert [(r.stage, r.reason) for r in task.failed_attempts] == [("depth_superset_check", reason)]
    assert len(prompts(models["judge"], SUPERSET_CHECK)) == 1  # only Kelvar Island was judged


async def test_judge_sees_the_corpus_sentences_not_the_agents_quote(tmp_path, install) -> None:
    world = lighthouse_world()
    # No evidence id (found by title instead) and an invented quote.
    world.agent_rules.insert(
        0,
        Rule(
            SUPERSET_SEARCH,
            superset("Kelvar Island", "the only lighthouse on Kelvar Island", "", "INVENTED"),
        ),
    )
    models = install(world)
    command, _ = await run_hop(atomic_task(), make_context(tmp_path))
    task = left_task(command)
    assert task.chain[0].evidence == "kelvar-island"
    [check] = prompts(models["judge"], SUPERSET_CHECK)
    assert "Its only lighthouse is the Zorblat Lighthouse on the northern cape." in check
    assert "INVENTED" not in check


async def test_search_that_finds_nothing_is_a_failed_attempt(tmp_path, install) -> None:
    world = lighthouse_world()
    world.agent_rules = []  # the default: `Superset(found=False)`
    install(world)
    command, events = await run_hop(atomic_task(), make_context(tmp_path, max_hop_attempts=2))
    task = left_task(command)
    assert task.hops == 1 and task.kind == "atomic" and task.question == ATOMIC_Q
    assert [(r.stage, r.reason) for r in task.failed_attempts] == [
        ("depth_superset_search", "superset_not_found"),
    ] * 2
    assert events[-1]["status"] == "failed" and events[-1]["attempts"] == 2


async def test_search_agent_that_never_stops_is_cut_at_the_step_limit(tmp_path, install) -> None:
    world = lighthouse_world()
    world.agent_rules = [Rule(SUPERSET_SEARCH, tool_call("search", query="Zorblat Lighthouse"))]
    models = install(world)
    context = make_context(tmp_path, max_hop_attempts=1, agent_max_steps=3)
    command, _ = await run_hop(atomic_task(), context)
    task = left_task(command)
    [rejection] = task.failed_attempts
    assert (rejection.stage, rejection.reason) == ("depth_superset_search", "superset_not_found")
    assert rejection.detail == "step limit reached"
    assert len(prompts(models["agent"], SUPERSET_SEARCH)) == 3
    assert command.update["usage"]["agent:depth_superset_search"].calls == 3


async def test_intermediate_question_the_llm_answers_alone_is_rejected(tmp_path, install) -> None:
    world = lighthouse_world()
    world.known_without_tools[HOP2_INTERMEDIATE] = "The Zorblat Lighthouse"
    models = install(world)
    command, events = await run_hop(atomic_task(), make_context(tmp_path, max_hop_attempts=2))

    task = left_task(command)
    assert task.hops == 1 and task.question == ATOMIC_Q  # left the loop at the depth it reached
    assert [(r.stage, r.reason) for r in task.failed_attempts] == [
        ("depth_intermediate_verify", "answered_without_tools"),
    ] * 2
    rejection = task.failed_attempts[0]
    assert rejection.question == HOP2_INTERMEDIATE
    assert rejection.verification is not None
    assert rejection.verification.llm_only_answer == "The Zorblat Lighthouse"
    assert prompts(models["generator"], MERGE) == []  # never merged
    assert [e["status"] for e in events][-1] == "failed"


async def test_intermediate_question_the_agent_cannot_answer_is_rejected(tmp_path, install) -> None:
    world = lighthouse_world()
    del world.found_with_tools[HOP2_INTERMEDIATE]
    install(world)
    command, _ = await run_hop(atomic_task(), make_context(tmp_path, max_hop_attempts=1))
    [rejection] = left_task(command).failed_attempts
    assert (rejection.stage, rejection.reason) == ("depth_intermediate_verify", "agent_failed")


async def test_intermediate_question_naming_its_answer_is_rejected(tmp_path, install) -> None:
    world = lighthouse_world()
    world.generator_rules.insert(
        0,
        Rule(
            INTERMEDIATE,
            structured("IntermediateQuestion", question="Is the Zorblat Lighthouse on Kelvar?"),
            times=1,
        ),
    )
    install(world)
    command, _ = await run_hop(atomic_task(), make_context(tmp_path))
    task = left_task(command)
    assert task.hops == 2
    assert [(r.stage, r.reason) for r in task.failed_attempts] == [
        ("depth_intermediate_question", "answer_in_question")
    ]


@pytest.mark.parametrize(
    "leaky",
    [
        "In what year was the Zorblat Lighthouse on Kelvar Island first lit?",
        "In what year was the zorblat lighthouse, the only one on Kelvar Island, first lit?",
    ],
)
async def test_merged_question_that_still_names_the_identifier_is_rejected(
    tmp_path, install, leaky: str
) -> None:
    world = lighthouse_world()
    world.generator_rules.insert(
        0, Rule(MERGE, structured("MergedQuestion", question=leaky), times=1)
    )
    models = install(world)
    command, _ = await run_hop(atomic_task(), make_context(tmp_path))

    task = left_task(command)
    assert task.question == HOP2_MERGED
    [rejection] = task.failed_attempts
    assert (rejection.stage, rejection.reason) == ("depth_merge_check", "identifier_leaked")
    assert rejection.question == leaky
    # Rejected by the programmatic check before the judge saw it.
    assert len(prompts(models["judge"], MERGE_CHECK)) == 1
    # The next merge is told why the previous one was rejected.
    assert "identifier_leaked" in prompts(models["generator"], MERGE)[-1]


async def test_merged_question_whose_answer_drifts_is_rejected(tmp_path, install) -> None:
    drifted = "In what year was the only lighthouse on Kelvar Island demolished?"
    world = lighthouse_world()
    world.generator_rules.insert(
        0, Rule(MERGE, structured("MergedQuestion", question=drifted), times=1)
    )
    world.judge_rules = [
        Rule(MERGE_CHECK + r".*Merged question: .*demolished", merge_verdict(same_answer=False))
    ]
    install(world)
    command, _ = await run_hop(atomic_task(), make_context(tmp_path))
    task = left_task(command)
    assert task.question == HOP2_MERGED
    assert [(r.stage, r.reason, r.question) for r in task.failed_attempts] == [
        ("depth_merge_check", "answer_drift", drifted)
    ]


@pytest.mark.parametrize(
    ("verdict", "reason"),
    [
        (merge_verdict(one_more_hop=False), "not_one_more_hop"),
        (merge_verdict(natural=False), "unnatural"),
    ],
)
async def test_merge_judge_rejects_wrong_hop_count_or_unnatural_question(
    tmp_path, install, verdict: AIMessage, reason: str
) -> None:
    world = lighthouse_world()
    world.judge_rules = [Rule(MERGE_CHECK, verdict)]
    install(world)
    command, _ = await run_hop(atomic_task(), make_context(tmp_path, max_hop_attempts=2))
    task = left_task(command)
    assert task.hops == 1
    assert [(r.stage, r.reason) for r in task.failed_attempts] == [
        ("depth_merge_check", reason)
    ] * 2


async def test_merged_question_that_gives_the_answer_away_is_rejected(tmp_path, install) -> None:
    world = lighthouse_world()
    world.generator_rules.insert(
        0,
        Rule(
            MERGE,
            structured("MergedQuestion", question="Was the lighthouse on Kelvar lit in 1887?"),
            times=1,
        ),
    )
    install(world)
    command, _ = await run_hop(atomic_task(), make_context(tmp_path))
    assert [(r.stage, r.reason) for r in left_task(command).failed_attempts] == [
        ("depth_merge_check", "answer_in_question")
    ]


async def test_unparsable_judge_reply_is_a_failed_attempt_not_a_crash(tmp_path, install) -> None:
    world = lighthouse_world()
    world.judge_rules = [Rule(SUPERSET_CHECK, "I think it is fine.")]
    install(world)
    command, _ = await run_hop(atomic_task(), make_context(tmp_path, max_hop_attempts=1))
    [rejection] = left_task(command).failed_attempts
    assert (rejection.stage, rejection.reason) == ("depth_superset_check", "llm_output_invalid")


async def test_provider_error_is_a_failed_attempt(tmp_path, install) -> None:
    def broken(messages: list[BaseMessage]) -> AIMessage:
        raise ConnectionError("connection reset")

    world = lighthouse_world()
    world.generator_rules.insert(0, Rule(INTERMEDIATE, broken, times=1))
    install(world)
    command, _ = await run_hop(atomic_task(), make_context(tmp_path))
    task = left_task(command)
    assert task.hops == 2
    [rejection] = task.failed_attempts
    assert (rejection.stage, rejection.reason) == ("depth_intermediate_question", "llm_error")
    assert "connection reset" in rejection.detail


# ----------------------------------------------------------------------------- whole graph


async def test_three_hop_task_through_the_graph(tmp_path, install) -> None:
    install(lighthouse_world())
    context = make_context(tmp_path, target_hops=3, verify_final_task=True)
    events: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    async for mode, chunk in graph.astream(
        {"texts": [LIGHTHOUSE_TEXT]}, context=context, stream_mode=["custom", "values"]
    ):
        if mode == "custom":
            events.append(chunk)
        else:
            final = chunk
    [task] = final["tasks"]
    assert task.kind == "depth" and task.hops == 3 and task.difficulty == 3
    assert task.question == HOP3_MERGED and task.answer == "1887"
    assert task.identifier == "Brask Archipelago"
    assert [(s.question, s.answer, s.identifier) for s in task.chain] == [
        (HOP3_INTERMEDIATE, "Kelvar Island", "Brask Archipelago"),
        (HOP2_INTERMEDIATE, "Zorblat Lighthouse", "Kelvar Island"),
        (ATOMIC_Q, "1887", "Zorblat Lighthouse"),
    ]
    # Every step keeps the trajectory of the verifier run that solved it.
    for step in task.chain:
        assert step.trajectory[1] == {"role": "user", "content": step.question}
        assert step.trajectory[-1]["content"] == step.answer
    # The composed trajectory asks the final question and replays the three searches in order.
    searches = [
        json.loads(call["function"]["arguments"])["query"]
        for message in task.trajectory
        for call in message.get("tool_calls") or []
    ]
    assert searches == [HOP3_INTERMEDIATE, HOP2_INTERMEDIATE, ATOMIC_Q]
    # verify_final_task: the final question itself was run through the verifier.
    assert task.final_verification is not None and task.final_verification.accepted
    assert task.final_verification.trajectory[1] == {"role": "user", "content": HOP3_MERGED}
    assert final["usage"]["agent:depth_superset_search"].calls == 2

    hop_events = [(e["status"], e.get("hops")) for e in events if e["stage"] == "depth_hop"]
    assert hop_events == [("started", None), ("accepted", 2), ("started", None), ("accepted", 3)]
    stages = [e["stage"] for e in events]
    assert stages.index("verify") < stages.index("depth_hop") < stages.index("collect")


async def test_loop_ends_when_attempts_run_out(tmp_path, install) -> None:
    world = lighthouse_world()
    world.judge_rules = [Rule(SUPERSET_CHECK, superset_verdict(is_superset=False))]
    models = install(world)
    context = make_context(tmp_path, target_hops=4, max_hop_attempts=2)
    events: list[dict[str, Any]] = []
    async for chunk in graph.astream(
        {"texts": [LIGHTHOUSE_TEXT]}, context=context, stream_mode="custom"
    ):
        events.append(chunk)
    result = await graph.ainvoke({"texts": [LIGHTHOUSE_TEXT]}, context=context)

    [task] = result["tasks"]
    assert task.kind == "atomic" and task.hops == 1 and task.question == ATOMIC_Q
    # The second search returned the same superset: rejected again, without asking the judge.
    assert [(r.stage, r.reason) for r in task.failed_attempts] == [
        ("depth_superset_check", "not_superset"),
        ("depth_superset_check", "already_rejected"),
    ]
    assert "- Kelvar Island" in prompts(models["agent"], SUPERSET_SEARCH)[-1]
    assert len(prompts(models["judge"], SUPERSET_CHECK)) == 2  # once in each of the 2 runs
    depth_events = [e for e in events if e["stage"] == "depth_hop"]
    assert [e["status"] for e in depth_events] == [
        "started",
        "rejected",
        "started",
        "rejected",
        "failed",
    ]
    assert depth_events[1]["reason"] == "not_superset"


# ----------------------------------------------------------------------------- interlinked corpus


def write_corpus(path: Path) -> dict[str, str]:
    """An interlinked JSONL corpus: the lighthouse, the island that names it, the archipelago
    that names the island, and unrelated pages. Returns title → id."""
    pages = [
        ("zorblat-lighthouse", LIGHTHOUSE_TEXT),
        ("kelvar-island", ISLAND_TEXT),
        ("brask-archipelago", ARCHIPELAGO_TEXT),
        (
            "harrow-point-light",
            "Harrow Point Light\n\nHarrow Point Light is a lighthouse on the mainland coast. "
            "It was first lit in 1902.",
        ),
        (
            "sorrel-sea",
            "Sorrel Sea\n\nThe Sorrel Sea is a shallow sea known for its fisheries. Lighthouses "
            "on its coasts include the Zorblat Lighthouse and Harrow Point Light.",
        ),
    ]
    ids: dict[str, str] = {}
    with path.open("w", encoding="utf-8") as out:
        for doc_id, text in pages:
            title, _, body = text.partition("\n\n")
            ids[title] = doc_id
            out.write(json.dumps({"id": doc_id, "title": title, "text": body}) + "\n")
    return ids


def search_superset(messages: list[BaseMessage]) -> AIMessage:
    """A backward-search agent that really reads its search results: first it searches for the
    identifier, then it returns the first other page (not excluded by the prompt) whose snippet
    mentions it."""
    identifier = _field(r"Identifier: (.*?)\n", first_human(messages))
    results = [m.text for m in messages if isinstance(m, ToolMessage)]
    if not results:
        return tool_call("search", query=identifier)
    excluded = re.findall(r"^- (.*)$", first_human(messages), re.M)
    for line in results[-1].splitlines():
        match = re.match(r"\[(?P<id>[^\]]+)\] (?P<title>.*?) — (?P<snippet>.*)", line)
        if not match or match["title"] == identifier or match["title"] in excluded:
            continue
        if identifier in match["snippet"]:
            sentence = next(s for s in match["snippet"].split(". ") if identifier in s)
            return superset(
                match["title"],
                f"the place named in the {match['title']} page",
                match["id"],
                sentence,
            )
    return structured("Superset", found=False)


async def test_two_hop_task_on_an_interlinked_corpus_with_local_search(tmp_path, install) -> None:
    corpus = tmp_path / "corpus.jsonl"
    ids = write_corpus(corpus)
    world = lighthouse_world()
    world.agent_rules = [Rule(SUPERSET_SEARCH, search_superset)]
    world.answer_needs_evidence = True  # the agent answers only what its search results show
    models = install(world)
    context = make_context(tmp_path, target_hops=2, corpus_path=str(corpus))

    result = await graph.ainvoke({"texts": [LIGHTHOUSE_TEXT]}, context=context)

    [task] = result["tasks"]
    assert task.kind == "depth" and task.hops == 2
    assert task.question == HOP2_MERGED and task.answer == "1887"
    assert task.identifier == "Kelvar Island"
    first, second = task.chain
    # Step 1 (solved first): from the island page to the lighthouse it names.
    assert (first.question, first.answer) == (HOP2_INTERMEDIATE, "Zorblat Lighthouse")
    assert first.identifier == "Kelvar Island" and first.evidence == ids["Kelvar Island"]
    # Step 2: the original atomic lookup, from the lighthouse to the year.
    assert (second.question, second.answer) == (ATOMIC_Q, "1887")
    assert second.identifier == "Zorblat Lighthouse"
    # Both steps were solved from real search results over the corpus.
    first_results = [m["content"] for m in first.trajectory if m["role"] == "tool"]
    assert any("[kelvar-island] Kelvar Island" in r for r in first_results)
    second_results = [m["content"] for m in second.trajectory if m["role"] == "tool"]
    assert any("1887" in r for r in second_results)
    # The backward search itself ran a real search, and its result led to the island.
    [search_run] = prompts(models["agent"], SUPERSET_SEARCH + r".*\[tool\]")
    assert "[kelvar-island] Kelvar Island" in search_run
