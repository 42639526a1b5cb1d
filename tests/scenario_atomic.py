"""A scripted whole-graph scenario: one candidate passes, three are rejected for different reasons.

The document names four facts. The generator turns each into a question; the scripted agent model
knows one of them without tools (rejected: answered without tools), cannot find another even with
tools (rejected: agent failed), and one question gives its answer away (rejected: leak). Only the
founder question is accepted. The models are selected with `module:attribute` specs, in process
and on the `langgraph dev` server alike.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

from tests.fakes import Rule, ScriptedChatModel, structured, tool_call, transcript_of

FIXTURE_TEXT = """Zephyrine Observatory

The Zephyrine Observatory was founded by the astronomer Tamsin Oduya. Its copper dome was
completed in 1911. The observatory's archive catalogue is called Corvex-9. The observatory
stands on the shore of Lake Vell."""

FACTS = {
    "Tamsin Oduya": (
        "founder of the Zephyrine Observatory",
        "Who founded the Zephyrine Observatory?",
    ),
    "1911": (
        "year the copper dome of the Zephyrine Observatory was completed",
        "In which year was the copper dome of the Zephyrine Observatory completed?",
    ),
    "Corvex-9": (
        "name of the archive catalogue of the Zephyrine Observatory",
        "What is the archive catalogue of the Zephyrine Observatory called?",
    ),
    "Lake Vell": (
        "lake on whose shore the Zephyrine Observatory stands",
        "Does the Zephyrine Observatory stand on the shore of Lake Vell or of another lake?",
    ),
}

GENERATOR = ScriptedChatModel(
    rules=[
        Rule(
            r"You collect short, checkable facts.*Zephyrine",
            structured(
                "Conclusions",
                identifier="Zephyrine Observatory",
                conclusions=[{"answer": a, "relation": r} for a, (r, _) in FACTS.items()],
            ),
        ),
        *[
            Rule(
                rf"Write one question whose answer.*Answer: {re.escape(answer)}\n",
                structured("FormedQuestion", question=question, answer=answer),
            )
            for answer, (_, question) in FACTS.items()
        ],
    ]
)

AGENT = ScriptedChatModel(
    rules=[
        # Alone, the model knows the dome's year, and guesses wrong on the rest.
        Rule(r"You have no tools.*copper dome", "1911"),
        Rule(r"You have no tools", "I am not sure, perhaps Galileo"),
        # With tools, it searches first, then answers from what it read.
        Rule(
            r"research agent", tool_call("search", query="Zephyrine Observatory"), after_tool=False
        ),
        Rule(r"research agent.*Who founded the Zephyrine", "Tamsin Oduya", after_tool=True),
        Rule(r"research agent", "The documents do not say.", after_tool=True),
    ]
)


def _grade(messages: list[BaseMessage]) -> AIMessage:
    text = transcript_of(messages)
    golden = re.search(r"Golden answer: (.*)", text)
    candidate = re.search(r"Candidate answer: (.*)", text)
    same = (
        bool(golden and candidate)
        and golden.group(1).strip().lower() == candidate.group(1).strip().lower()
    )
    return structured(
        "AnswerJudgement", correct=same, reason="same fact" if same else "different answer"
    )


JUDGE = ScriptedChatModel(rules=[Rule(r"grading an answer", _grade)])

SCENARIO_CONTEXT: dict[str, Any] = {
    "generator_model": "tests.scenario_atomic:GENERATOR",
    "agent_model": "tests.scenario_atomic:AGENT",
    "judge_model": "tests.scenario_atomic:JUDGE",
    "search_backend": "local",
}
