"""Dry-run `taskcraft generate` over real documents through the real OpenAI client, at no cost.

A heuristic stand-in for the LLM answers on the mock OpenAI-compatible server: the "generator"
takes years it finds in each chunk as facts, the "agent" searches with the question and answers
with the first year in what it read, the "judge" compares strings. Task quality means nothing
here; what it shows is that every document goes through loading, extraction, verification with
tool calls and the output files, with the real HTTP client, retries and usage accounting, and
that broken inputs give per-file errors while the rest is processed::

    python bench/dry_run_corpus.py ../shared/corpus/pdf/ --out /tmp/dry/tasks.jsonl
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mock_openai_server import MockOpenAIServer, Reply, Rule, tool_call  # noqa: E402
from tests.mock_openai_server import transcript_of as request_transcript  # noqa: E402

YEAR = re.compile(r"\b(1[6-9]\d\d|20\d\d)\b")


def _field(pattern: str, text: str, default: str = "") -> str:
    match = re.search(pattern, text)
    return match.group(1).strip() if match else default


def extract_years(body: dict[str, Any]) -> Reply:
    text = request_transcript(body)
    identifier = _field(r"Document identifier[^:]*: (.*)", text, "the document")
    years = list(dict.fromkeys(YEAR.findall(text.split("<document>", 1)[-1])))[:2]
    conclusions = [
        {"answer": year, "relation": f"year number {i} mentioned in {identifier}"}
        for i, year in enumerate(years, 1)
    ]
    return tool_call("Conclusions", identifier=identifier, conclusions=conclusions)


def form_question(body: dict[str, Any]) -> Reply:
    text = request_transcript(body)
    identifier = _field(r"Identifier \(names the source document\): (.*)", text)
    relation = _field(r"Relation: (.*)", text)
    answer = _field(r"Answer: (.*)", text)
    question = f"According to {identifier}, what is the {relation}?"
    return tool_call("FormedQuestion", question=question, answer=answer)


def judge(body: dict[str, Any]) -> Reply:
    text = request_transcript(body)
    same = (
        _field(r"Golden answer: (.*)", text).lower()
        == _field(r"Candidate answer: (.*)", text).lower()
    )
    return tool_call("AnswerJudgement", correct=same, reason="same" if same else "different")


def search_with_question(body: dict[str, Any]) -> Reply:
    question = re.findall(r"\[user\] (.*)", request_transcript(body))[-1]
    return tool_call("search", query=question[:200])


def answer_from_tool_result(body: dict[str, Any]) -> str:
    match = YEAR.search(request_transcript(body).split("[tool]")[-1])
    return match.group(1) if match else "unknown"


RULES = [
    Rule(r"\[tools\] Conclusions", extract_years),
    Rule(r"\[tools\] FormedQuestion", form_question),
    Rule(r"\[tools\] AnswerJudgement", judge),
    Rule(r"You have no tools", "unknown"),
    Rule(r"\[tools\].*search", search_with_question, after_tool=False),
    Rule(r"\[tools\].*search", answer_from_tool_result, after_tool=True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--out", default="dry-run/tasks.jsonl")
    parser.add_argument("--data-dir", default="dry-run/state")
    args, extra = parser.parse_known_args()
    server = MockOpenAIServer(rules=RULES, default="unknown")
    with server as base_url:
        command = [
            sys.executable, "-m", "langgraph_taskcraft", "generate", *args.inputs,
            "--model", "openai:mock-model", "--base-url", base_url, "--no-cache",
            "--data-dir", args.data_dir, "--out", args.out, *extra,
        ]  # fmt: skip
        started = time.perf_counter()
        code = subprocess.call(command, env={**os.environ, "OPENAI_API_KEY": "dry-run"})
        elapsed = time.perf_counter() - started
    print(f"exit code {code} in {elapsed:.1f} s; mock server: {server.stats()}")


if __name__ == "__main__":
    main()
