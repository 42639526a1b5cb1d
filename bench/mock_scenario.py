"""A synthetic corpus and the mock OpenAI server's script that answers the whole atomic pipeline.

Document `i` describes an invented institution with three facts; every document is different
(so neither the LLM cache nor question dedup merges them) and every prompt the `taskcraft` graph
sends about it has a scripted reply, computed from the prompt itself, so any number of documents
run without a per-document table:

- the founder: the model alone does not know it, the tool-using agent searches, reads the search
  result and answers it, the judge agrees: **accepted** (7 calls on the critical path:
  extract, form_question, answer_without_tools, judge, agent search step, agent answer, judge);
- the completion year: the model alone knows it: rejected `answered_without_tools` (2 calls);
- the archive catalogue: nobody finds it: rejected `agent_failed` (5 calls).

That is 16 LLM calls and one accepted task per document, 7 of them on the longest dependency
chain. Server side (run it in its own process so that the benchmark's process holds only the
framework)::

    python bench/mock_scenario.py --latency-ms 200      # prints `base_url <url>` first

then one line on stdin: `stats` answers one JSON line of counters; end of input stops it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import mock_openai_server  # noqa: E402 - the repository root is put on the path first
from tests.mock_openai_server import (  # noqa: E402
    MockOpenAIServer,
    Reply,
    Rule,
    tool_call,
    transcript_of,
)

SYLLABLES: tuple[str, ...] = tuple(
    "ka ver lo mi den sa tor vel ri an bo zel ur qua fen dri mo sel ta rin go hal ne pe".split()  # noqa: SIM905
)
KINDS = ("Observatory", "Library", "Museum", "Conservatory", "Herbarium", "Academy")
FIRST_NAMES: tuple[str, ...] = tuple(
    "Tamsin Oren Ilse Bartholomew Noor Casimir Edda Joaquim Wren Leopold Sunniva".split()  # noqa: SIM905
)
SURNAMES: tuple[str, ...] = tuple(
    "Oduya Varga Lindqvist Achterberg Moreau Kovalenko Ferreira Halloran Szabo".split()  # noqa: SIM905
)

DOCUMENT_PATTERN = re.compile(
    r"The (?P<name>.+?) was founded by (?P<founder>.+?)\. Its main building was completed in "
    r"(?P<year>\d{4})\. Its archive catalogue is called (?P<catalogue>\S+?)\."
)


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def institution_name(index: int) -> str:
    """A unique invented name for document `index` (four syllables in base 24, plus a kind).

    The index is scrambled by a multiplication that is a bijection modulo 24**4 (7919 is prime
    and shares no factor with 24), so neighbouring documents differ in both words.
    """
    digits: list[str] = []
    value = index * 7919 % len(SYLLABLES) ** 4
    for _ in range(4):
        value, digit = divmod(value, len(SYLLABLES))
        digits.append(SYLLABLES[(digit * 7 + len(digits) * 5) % len(SYLLABLES)])
    first = (digits[0] + digits[1]).capitalize()
    second = (digits[2] + digits[3] + "e").capitalize()
    return f"{first} {second} {KINDS[index % len(KINDS)]}"


def founder_of(name: str) -> str:
    """The founder a document states (derived from the name, so the server can recompute it)."""
    value = _digest("founder:" + name)
    return f"{FIRST_NAMES[value % len(FIRST_NAMES)]} {SURNAMES[(value >> 8) % len(SURNAMES)]}"


def year_of(name: str) -> str:
    """The completion year a document states."""
    return str(1800 + _digest("year:" + name) % 200)


def catalogue_of(name: str) -> str:
    """The archive catalogue's name a document states."""
    value = _digest("catalogue:" + name)
    return f"{SYLLABLES[value % len(SYLLABLES)].capitalize()}vex-{value % 97 + 2}"


def document(index: int) -> dict[str, str]:
    """Corpus record `{id, title, text}` of document `index`."""
    name = institution_name(index)
    text = (
        f"The {name} was founded by {founder_of(name)}. Its main building was completed in "
        f"{year_of(name)}. Its archive catalogue is called {catalogue_of(name)}. Visitors reach "
        f"it by a footpath from the old market square, and its reading room is open on weekdays."
    )
    return {"id": f"doc-{index:06d}", "title": name, "text": text}


def write_corpus(path: Path, count: int, start: int = 0) -> Path:
    """Write `count` documents as a JSONL corpus of `{id, title, text}` lines."""
    with path.open("w", encoding="utf-8") as out:
        for index in range(start, start + count):
            out.write(json.dumps(document(index)) + "\n")
    return path


# Replies, computed from the request.

RELATIONS = {
    "founder": "founder of the {name}",
    "year": "year the main building of the {name} was completed",
    "catalogue": "name of the archive catalogue of the {name}",
}
QUESTIONS = {
    "founder": "Who founded the {name}?",
    "year": "In which year was the main building of the {name} completed?",
    "catalogue": "What is the archive catalogue of the {name} called?",
}


def extract_reply(body: dict[str, Any]) -> Reply:
    """`Conclusions` for the document in an extraction prompt."""
    match = DOCUMENT_PATTERN.search(transcript_of(body))
    if match is None:
        return tool_call("Conclusions", identifier="", conclusions=[])
    name = match["name"]
    values = {"founder": match["founder"], "year": match["year"], "catalogue": match["catalogue"]}
    conclusions = [
        {"answer": values[kind], "relation": RELATIONS[kind].format(name=name)}
        for kind in ("founder", "year", "catalogue")
    ]
    return tool_call("Conclusions", identifier=name, conclusions=conclusions)


def _relation_kind(relation: str) -> tuple[str, str] | None:
    for kind, template in RELATIONS.items():
        prefix = template.split("{name}")[0]
        suffix = template.split("{name}")[1]
        if relation.startswith(prefix) and relation.endswith(suffix):
            return kind, relation[len(prefix) : len(relation) - len(suffix) or None]
    return None


def question_reply(body: dict[str, Any]) -> Reply:
    """`FormedQuestion` for the (relation, answer) of a question-forming prompt."""
    text = transcript_of(body)
    relation = re.search(r"^Relation: (.*)$", text, flags=re.M)
    answer = re.search(r"^Answer: (.*)$", text, flags=re.M)
    found = _relation_kind(relation[1].strip()) if relation else None
    if found is None or answer is None:
        return tool_call("FormedQuestion", question="", answer="")
    kind, name = found
    return tool_call(
        "FormedQuestion", question=QUESTIONS[kind].format(name=name), answer=answer[1].strip()
    )


def answer_without_tools_reply(body: dict[str, Any]) -> str:
    """The model alone knows the completion year and nothing else."""
    question = re.search(r"^Question: (.*)$", transcript_of(body), flags=re.M)
    text = question[1] if question else ""
    year = re.match(r"In which year was the main building of the (.+) completed\?", text)
    if year:
        return year_of(year[1])
    return "I am not sure, perhaps Galileo Galilei"


def judge_reply(body: dict[str, Any]) -> Reply:
    """`AnswerJudgement`: correct when the candidate equals the golden answer (case aside)."""
    text = transcript_of(body)
    golden = re.search(r"Golden answer: (.*)", text)
    candidate = re.search(r"Candidate answer: (.*)", text)
    same = bool(golden and candidate) and (
        golden[1].strip().lower() == candidate[1].strip().lower()  # type: ignore[index]
    )
    reason = "Same fact." if same else "A different answer."
    return tool_call("AnswerJudgement", correct=same, reason=reason)


def agent_search_reply(body: dict[str, Any]) -> Reply:
    """The agent's first step: search for the institution the question names."""
    question = ""
    for message in body.get("messages") or []:
        if message.get("role") == "user":
            question = str(message.get("content") or "")
    return tool_call("search", query=question)


def agent_answer_reply(body: dict[str, Any]) -> str:
    """After the search: the founder is read from the result; the catalogue is not found."""
    text = transcript_of(body)
    if "Who founded the" in text:
        founder = re.search(r"\[tool\].*?was founded by (.+?)\.", text, flags=re.S)
        if founder:
            return founder[1]
    return "The documents do not say."


def rules() -> list[Rule]:
    """The scenario's rules, in the order the server tries them."""
    return [
        Rule(r"You collect short, checkable facts", extract_reply),
        Rule(r"Write one question whose answer", question_reply),
        Rule(r"\[tools\] AnswerJudgement", judge_reply),
        Rule(r"You have no tools", answer_without_tools_reply),
        Rule(r"research agent", agent_search_reply, after_tool=False),
        Rule(r"research agent", agent_answer_reply, after_tool=True),
    ]


def serve(latency_ms: float) -> None:
    """Serve the scenario until stdin closes; answer `stats` lines with JSON counters."""
    # The stdlib handler writes the headers and the body of a reply in two packets; with Nagle's
    # algorithm on, the second waits for the client's delayed ACK: 40 ms added to every reply
    # on a kept-alive connection, which would drown the overhead being measured.
    mock_openai_server._Handler.disable_nagle_algorithm = True
    server = MockOpenAIServer(rules(), default=None, latency_ms=latency_ms, keep_requests=1)
    server.start()
    print(f"base_url {server.base_url}", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(server.stats()), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve the benchmark scenario (mock OpenAI).")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    serve(parser.parse_args().latency_ms)
