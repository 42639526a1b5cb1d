"""A deterministic multi-document scenario, scripted for the mock OpenAI server and for fakes.

Eight small invented documents, each with two facts. For every fact the generator returns the
same conclusion and question; the model alone knows some facts (rejected: answered without
tools) and not the others, which the tool-using agent finds after one search (accepted). Every
rule is keyed on a marker of its document (title, answer or question), so replies do not depend
on the order in which concurrent documents reach the model, and the accepted tasks of a run are
known in advance (`expected_questions`).

The same script drives two backends:
- `server_rules()`: rules for `tests.mock_openai_server.MockOpenAIServer`, for runs with the real
  OpenAI client (`openai:mock-model` with `base_url`);
- `GENERATOR`, `AGENT`, `JUDGE`: in-process `ScriptedChatModel`s, selected with model specs such
  as `tests.scenario_mock:GENERATOR` (also importable in Ray workers).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage

from tests import fakes
from tests import mock_openai_server as mock


@dataclass(frozen=True)
class Fact:
    """One fact of a document and the question the generator forms from it."""

    answer: str
    relation: str
    question: str
    known_without_tools: bool = False


@dataclass(frozen=True)
class Document:
    """A small invented document (title first, as the text loader expects)."""

    title: str
    body: str
    facts: tuple[Fact, ...]

    @property
    def text(self) -> str:
        """The document as written to disk."""
        return f"{self.title}\n\n{self.body}\n"

    @property
    def file_name(self) -> str:
        """A file name derived from the title."""
        return re.sub(r"\W+", "-", self.title.lower()).strip("-") + ".txt"


DOCUMENTS: tuple[Document, ...] = (
    Document(
        "Quillmoor Lending Library",
        "The Quillmoor Lending Library was established by the printer Edda Vaskon. Its reading "
        "room holds 412 chairs. Entry has always been free of charge.",
        (
            Fact(
                "Edda Vaskon",
                "founder of the Quillmoor Lending Library",
                "Which printer established the Quillmoor Lending Library?",
            ),
            Fact(
                "free of charge",
                "cost of entry to the Quillmoor Lending Library",
                "How much does entry to the Quillmoor Lending Library cost?",
                True,
            ),
        ),
    ),
    Document(
        "Brannock Tidal Mill",
        "The Brannock Tidal Mill grinds oats with a wheel of oak. Its millpond is fed by the "
        "Sallow Creek. The mill ground its last commercial sack in 1987.",
        (
            Fact(
                "Sallow Creek",
                "stream feeding the millpond of the Brannock Tidal Mill",
                "Which stream feeds the millpond at Brannock's tidal grain works?",
            ),
            Fact(
                "oak",
                "wood of the wheel of the Brannock Tidal Mill",
                "From what timber is the Brannock Tidal Mill wheel made?",
                True,
            ),
        ),
    ),
    Document(
        "Orsolt Glass Cooperative",
        "The Orsolt Glass Cooperative blows cobalt vessels. The cooperative counted 57 member "
        "families in its charter year. Its kiln is named Hestle.",
        (
            Fact(
                "57",
                "number of member families of the Orsolt Glass Cooperative in its charter year",
                "How many member households signed the Orsolt glassmakers' charter?",
            ),
            Fact(
                "Hestle",
                "name of the kiln of the Orsolt Glass Cooperative",
                "What do the Orsolt cobalt glass blowers call their furnace?",
            ),
        ),
    ),
    Document(
        "Tervani Night Market",
        "The Tervani Night Market opens at dusk on the Plaza Ruell. Lanterns there are lit with "
        "rapeseed oil. The market's oldest stall sells pickled quince.",
        (
            Fact(
                "Plaza Ruell",
                "square where the Tervani Night Market is held",
                "On which square do Tervani's evening traders set up?",
            ),
            Fact(
                "dusk",
                "time of day the Tervani Night Market opens",
                "At what time of day does trading begin at the Tervani bazaar?",
                True,
            ),
        ),
    ),
    Document(
        "Mirelund Ferry Line",
        "The Mirelund Ferry Line crosses the Gannet Sound in 40 minutes. Its flagship is the "
        "MV Lorna Pike. Tickets are sold on board only.",
        (
            Fact(
                "MV Lorna Pike",
                "flagship of the Mirelund Ferry Line",
                "Which vessel leads the fleet that sails between Mirelund's piers?",
            ),
            Fact(
                "40 minutes",
                "duration of the crossing of the Gannet Sound by the Mirelund Ferry Line",
                "How long does the Mirelund boat take to traverse Gannet Sound?",
            ),
        ),
    ),
    Document(
        "Velloran Apiary Society",
        "The Velloran Apiary Society keeps 230 hives on the slopes of Mount Dranner. Its honey "
        "is sold under the label Amberfold.",
        (
            Fact(
                "Mount Dranner",
                "mountain where the Velloran Apiary Society keeps its hives",
                "On the flanks of which peak are Velloran's beekeepers' colonies kept?",
            ),
            Fact(
                "Amberfold",
                "label of the honey of the Velloran Apiary Society",
                "Under what brand is Velloran beekeeping produce marketed?",
            ),
        ),
    ),
    Document(
        "Kestwick Clock Tower",
        "The Kestwick Clock Tower was designed by the engineer Ilse Marrow. Its bell weighs "
        "two tonnes and strikes every hour.",
        (
            Fact(
                "Ilse Marrow",
                "designer of the Kestwick Clock Tower",
                "Which engineer drew the plans for Kestwick's belfry and timepiece?",
            ),
            Fact(
                "every hour",
                "how often the bell of the Kestwick Clock Tower strikes",
                "How frequently does the Kestwick chime ring out?",
                True,
            ),
        ),
    ),
    Document(
        "Dunhallow Rope Works",
        "The Dunhallow Rope Works twists hemp in a ropewalk 300 metres long. The works supplied "
        "the rigging of the schooner Petrel Dawn.",
        (
            Fact(
                "300 metres",
                "length of the ropewalk of the Dunhallow Rope Works",
                "How long is the hemp-twisting hall at Dunhallow's cordage factory?",
            ),
            Fact(
                "Petrel Dawn",
                "schooner rigged with ropes of the Dunhallow Rope Works",
                "Which sailing ship received its rigging from the Dunhallow cordage makers?",
            ),
        ),
    ),
)


def write_documents(folder: Path, documents: tuple[Document, ...] = DOCUMENTS) -> list[Path]:
    """Write the documents as text files into `folder`; return their paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for document in documents:
        path = folder / document.file_name
        path.write_text(document.text, encoding="utf-8")
        paths.append(path)
    return paths


def expected_questions(documents: tuple[Document, ...] = DOCUMENTS) -> list[str]:
    """The questions a run over `documents` accepts (those the model alone does not know)."""
    return sorted(
        fact.question for d in documents for fact in d.facts if not fact.known_without_tools
    )


def generate_arguments(
    inputs: Path, base_url: str, out: Path, data_dir: Path, *options: str
) -> list[str]:
    """`taskcraft generate` arguments with every role on the mock server at `base_url`."""
    return [
        "generate",
        str(inputs),
        "--model",
        "openai:mock-model",
        "--base-url",
        base_url,
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        *options,
    ]


def _judgement(transcript: str) -> dict[str, Any]:
    """The judge's verdict: correct when the candidate answer equals the golden one."""
    golden = re.search(r"Golden answer: (.*)", transcript)
    candidate = re.search(r"Candidate answer: (.*)", transcript)
    same = (
        golden is not None
        and candidate is not None
        and golden.group(1).strip().lower() == candidate.group(1).strip().lower()
    )
    return {"correct": same, "reason": "same fact" if same else "different answer"}


def _rules(
    rule: Callable[..., Any],
    call: Callable[..., Any],
    judge: Callable[[Callable[[str], Any]], Any],
) -> dict[str, list[Any]]:
    """Rules per role, built with a backend's rule and tool-call constructors."""
    generator, agent = [], []
    for document in DOCUMENTS:
        conclusions = [{"answer": f.answer, "relation": f.relation} for f in document.facts]
        generator.append(
            rule(
                rf"You collect short, checkable facts.*{re.escape(document.title)}",
                call("Conclusions", identifier=document.title, conclusions=conclusions),
            )
        )
        for fact in document.facts:
            generator.append(
                rule(
                    rf"Write one question whose answer.*Answer: {re.escape(fact.answer)}\n",
                    call("FormedQuestion", question=fact.question, answer=fact.answer),
                )
            )
            alone = fact.answer if fact.known_without_tools else "I do not know."
            question = re.escape(fact.question)
            agent += [
                rule(rf"You have no tools.*Question: {question}", alone),
                rule(
                    rf"research agent.*{question}",
                    call("search", query=document.title),
                    after_tool=False,
                ),
                rule(rf"research agent.*{question}", fact.answer, after_tool=True),
            ]
    return {
        "generator": generator,
        "agent": agent,
        "judge": [rule(r"grading an answer", judge(_judge_reply(call)))],
    }


def _judge_reply(call: Callable[..., Any]) -> Callable[[str], Any]:
    return lambda transcript: call("AnswerJudgement", **_judgement(transcript))


def server_rules() -> list[mock.Rule]:
    """The scenario as mock-server rules (every role on one server)."""
    by_role = _rules(
        mock.Rule,
        mock.tool_call,
        lambda reply: lambda body: reply(mock.transcript_of(body)),
    )
    return [*by_role["generator"], *by_role["agent"], *by_role["judge"]]


def _scripted(role: str) -> fakes.ScriptedChatModel:
    by_role = _rules(
        fakes.Rule,
        fakes.structured,
        lambda reply: lambda messages: reply(fakes.transcript_of(messages)),
    )
    return fakes.ScriptedChatModel(rules=by_role[role])


GENERATOR = _scripted("generator")
AGENT = _scripted("agent")
JUDGE = _scripted("judge")


def crash_once(model: fakes.ScriptedChatModel, pattern: str, flag_variable: str) -> Any:
    """`model`, except that the first prompt matching `pattern` kills the process (`os._exit`).

    "First" across processes: the file named by the environment variable `flag_variable` is
    written before dying, and later matching prompts are answered as `model` answers them.
    """

    def crash_or_answer(messages: list[Any]) -> Any:
        flag = Path(os.environ[flag_variable])
        if not flag.exists():
            flag.write_text(str(os.getpid()))
            os._exit(1)
        transcript = fakes.transcript_of(messages)
        has_tool_result = any(m.type == "tool" for m in messages)
        for rule in model.rules:
            if rule.matches(transcript, has_tool_result):
                reply = rule.reply
                return (
                    reply
                    if isinstance(reply, AIMessage) or not callable(reply)
                    else reply(messages)
                )
        raise AssertionError(f"no scripted reply for prompt:\n{transcript[-1500:]}")

    return fakes.ScriptedChatModel(rules=[fakes.Rule(pattern, crash_or_answer), *model.rules])


SCRIPTED_MODELS: dict[str, Any] = {
    "generator_model": "tests.scenario_mock:GENERATOR",
    "agent_model": "tests.scenario_mock:AGENT",
    "judge_model": "tests.scenario_mock:JUDGE",
}
"""Context fields selecting the scripted models."""


_GENERATED_ID = re.compile(r"^(?:call|run|chatcmpl)[-_][0-9a-f]{8,}$")


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        # Usage counts only the tokens of real requests: calls the LLM cache answered count
        # none, and which ones it answered depends on where a run was interrupted.
        return {k: _comparable(v) for k, v in value.items() if k != "usage"}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, str) and _GENERATED_ID.match(value):
        return "<generated id>"
    return value


def comparable_records(path: Path) -> list[str]:
    """A JSONL file's records, sorted, without what legitimately differs between two runs.

    Clients and fakes mint tool-call and message ids per reply (masked), and the usage of a
    record (dropped) depends on which calls the LLM cache answered; everything else (ids,
    questions, answers, verifications, trajectories) must be equal.
    """
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = (_comparable(json.loads(line)) for line in lines if line.strip())
    return sorted(json.dumps(record, sort_keys=True) for record in records)
