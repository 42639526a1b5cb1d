"""`taskcraft generate` / `estimate` / `export` / `stats` end to end on scripted models."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from typer.testing import CliRunner

from langgraph_taskcraft.cli import app
from tests import scenario_atomic
from tests.fakes import Rule, ScriptedChatModel
from tests.scenario_atomic import FIXTURE_TEXT

MODELS = [
    "--generator-model",
    "tests.scenario_atomic:GENERATOR",
    "--agent-model",
    "tests.scenario_atomic:AGENT",
    "--judge-model",
    "tests.scenario_atomic:JUDGE",
]

FOUNDER_QUESTION = "Who founded the Zephyrine Observatory?"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def model_calls() -> int:
    return sum(
        len(m.calls)
        for m in (scenario_atomic.GENERATOR, scenario_atomic.AGENT, scenario_atomic.JUDGE)
    )


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def generate(inputs: Path, out: Path, state: Path, *options: str) -> Any:
    return invoke("generate", str(inputs), "--out", str(out), "--data-dir", str(state), *options)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "observatory.md").write_text(FIXTURE_TEXT)
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "garbage.pdf").write_bytes(b"\x00\x01 not a pdf at all" * 10)
    return folder


@pytest.fixture
def copies(tmp_path: Path) -> Path:
    """Two different documents stating the same facts (so the same questions)."""
    folder = tmp_path / "copies"
    folder.mkdir()
    (folder / "observatory.md").write_text(FIXTURE_TEXT)
    (folder / "observatory-mirror.md").write_text(FIXTURE_TEXT + "\n\nMirrored from the archive.")
    return folder


@pytest.fixture
def generated(copies: Path, tmp_path: Path) -> Path:
    """The output of a run over `copies`."""
    out = tmp_path / "run" / "tasks.jsonl"
    generate(copies, out, tmp_path / "state", "--no-cache", "--set", "seed=7", *MODELS)
    return out


def test_generate_writes_tasks_rejections_and_per_file_errors(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "tasks.jsonl"
    generate(inputs, out, tmp_path / "state", "--no-cache", *MODELS)
    tasks = lines(out)
    assert [t["answer"] for t in tasks] == ["Tamsin Oduya"]
    for field in (
        "id",
        "question",
        "answer",
        "kind",
        "hops",
        "identifier",
        "source",
        "verification",
        "trajectory",
    ):
        assert field in tasks[0]
    rejected = lines(out.with_name("tasks.rejected.jsonl"))
    assert sorted(r["reason"] for r in rejected) == [
        "agent_failed",
        "answer_in_question",
        "answered_without_tools",
    ]
    errors = {
        Path(e["source"]).name: e["error"] for e in lines(out.with_name("tasks.errors.jsonl"))
    }
    assert errors == {"empty.pdf": "pdf_empty", "garbage.pdf": "pdf_malformed"}
    run = json.loads(out.with_name("tasks.run.json").read_text())
    assert run["config"]["agent_model"] == "tests.scenario_atomic:AGENT"
    assert run["models"]["judge"] == "tests.scenario_atomic:JUDGE"
    documents = lines(out.with_name("tasks.documents.jsonl"))
    assert sorted(d["status"] for d in documents) == ["done"] * 3

    stats = invoke("stats", str(out))
    assert "answered_without_tools" in stats.output and "pdf_empty" in stats.output


def test_rerun_skips_finished_documents_with_no_llm_call(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "tasks.jsonl"
    generate(inputs, out, tmp_path / "state", "--no-cache", *MODELS)
    first = out.read_text()
    calls = model_calls()
    again = generate(inputs, out, tmp_path / "state", "--no-cache", *MODELS)
    assert model_calls() == calls
    assert out.read_text() == first
    assert "3 already done" in again.output


def without_usage(record: Any) -> Any:
    """The record without its usage tables (which say whether the cache answered)."""
    if isinstance(record, dict):
        return {k: without_usage(v) for k, v in record.items() if k != "usage"}
    if isinstance(record, list):
        return [without_usage(v) for v in record]
    return record


def test_the_llm_cache_makes_a_fresh_identical_run_free(inputs: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = tmp_path / "first" / "tasks.jsonl"
    generate(inputs, first, state, *MODELS)
    calls = model_calls()
    second = tmp_path / "second" / "tasks.jsonl"  # a new output: nothing to skip or resume
    result = generate(inputs, second, state, *MODELS)
    assert model_calls() == calls
    assert [without_usage(t) for t in lines(second)] == [without_usage(t) for t in lines(first)]
    # Served from the cache: every call is counted as cached and no token as spent again.
    for entry in lines(second)[0]["usage"].values():
        assert entry["cached_calls"] == entry["calls"] > 0
        assert entry["input_tokens"] == entry["output_tokens"] == 0
    assert "0 already done" in result.output
    # Without the cache the same run sends its requests again.
    generate(inputs, tmp_path / "third" / "tasks.jsonl", state, "--no-cache", *MODELS)
    assert model_calls() > calls


def test_duplicate_questions_are_rejected_at_dedup(
    generated: Path, copies: Path, tmp_path: Path
) -> None:
    tasks = lines(generated)
    assert [t["question"] for t in tasks] == [FOUNDER_QUESTION]
    duplicates = [
        r for r in lines(generated.with_name("tasks.rejected.jsonl")) if r["stage"] == "dedup"
    ]
    assert len(duplicates) == 1
    assert duplicates[0]["reason"] == "duplicate"
    assert duplicates[0]["question"] == FOUNDER_QUESTION
    assert duplicates[0]["detail"] == f"exact duplicate of {tasks[0]['id']}"
    assert {duplicates[0]["source"], tasks[0]["source"]} == {
        str(copies / "observatory.md"),
        str(copies / "observatory-mirror.md"),
    }

    undeduplicated = tmp_path / "all" / "tasks.jsonl"
    generate(copies, undeduplicated, tmp_path / "state", "--no-dedup", *MODELS)
    assert [t["question"] for t in lines(undeduplicated)] == [FOUNDER_QUESTION] * 2


def test_dedup_checks_tasks_already_in_the_output(generated: Path, tmp_path: Path) -> None:
    later = tmp_path / "later"
    later.mkdir()
    (later / "observatory-third.md").write_text(FIXTURE_TEXT + "\n\nA third copy.")
    generate(later, generated, tmp_path / "state", "--no-cache", *MODELS)
    assert len(lines(generated)) == 1
    dedup = [r for r in lines(generated.with_name("tasks.rejected.jsonl")) if r["stage"] == "dedup"]
    assert len(dedup) == 2


def test_stats_reports_acceptance_difficulty_reasons_and_cost(
    generated: Path, tmp_path: Path
) -> None:
    text = invoke("stats", str(generated)).output
    for expected in (
        "Acceptance per stage",
        "leak_check",
        "Difficulty (hops × width)",
        "rejected at dedup: duplicate",
        "rejected at agent: agent_failed",
        "generator:extract",
    ):
        assert expected in text, expected

    prices = tmp_path / "prices.toml"
    prices.write_text(
        "\n".join(
            f'[prices."tests.scenario_atomic:{role}"]\ninput = 1000.0\noutput = 2000.0'
            for role in ("GENERATOR", "AGENT", "JUDGE")
        )
    )
    data = json.loads(invoke("stats", str(generated), "--json", "--prices", str(prices)).output)
    funnel = {row["stage"]: row for row in data["acceptance"]["atomic"]}
    # Per document: 4 facts, one question leaks; of 3 verified one is known without tools and
    # one is not found by the agent; the founder question passes, once per document.
    assert funnel["leak_check"] == {
        "stage": "leak_check",
        "reached": 8,
        "rejected": 2,
        "passed": 6,
        "pass_rate": 0.75,
    }
    assert (funnel["llm_only"]["reached"], funnel["llm_only"]["rejected"]) == (6, 2)
    assert (funnel["agent"]["reached"], funnel["agent"]["rejected"]) == (4, 2)
    assert (funnel["dedup"]["reached"], funnel["dedup"]["passed"]) == (2, 1)
    assert data["difficulty"] == [{"hops": 1, "width": 1, "tasks": 1}]
    assert data["documents"] == {"done": 2}
    tokens = sum(row["input_tokens"] + row["output_tokens"] for row in data["usage"])
    usage = {row["key"]: row for row in data["usage"]}
    assert usage["generator:extract"]["calls"] == 2  # extraction is counted (not on any record)
    assert data["cost"] == pytest.approx(
        sum(row["input_tokens"] * 1000 + row["output_tokens"] * 2000 for row in data["usage"]) / 1e6
    )
    assert tokens > 0 and data["unpriced_models"] == []


def test_export_writes_every_format_with_its_manifest(generated: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    result = invoke("export", str(generated), "--format", "all", "--out", str(dataset))
    assert "manifest" in result.output
    names = sorted(path.name for path in dataset.iterdir())
    assert names == [
        "manifest.json",
        "openai_chat.jsonl",
        "qa.jsonl",
        "sharegpt.jsonl",
        "tasks.parquet",
    ]
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["config"]["generator_model"] == "tests.scenario_atomic:GENERATOR"
    assert manifest["models"]["agent"] == "tests.scenario_atomic:AGENT"
    assert manifest["counts"]["tasks"] == 1
    assert manifest["seed"] == manifest["config"]["seed"] == 7
    assert sorted(manifest["files"]) == [n for n in names if n != "manifest.json"]

    qa = lines(dataset / "qa.jsonl")
    assert [(r["question"], r["answer"], r["hops"]) for r in qa] == [
        (FOUNDER_QUESTION, "Tamsin Oduya", 1)
    ]
    chat = lines(dataset / "openai_chat.jsonl")[0]
    roles = [m["role"] for m in chat["messages"]]
    assert roles[0] == "system" and "tool" in roles and roles[-1] == "assistant"
    assert any(m.get("tool_calls") for m in chat["messages"])
    assert {tool["function"]["name"] for tool in chat["tools"]} >= {"search"}
    sharegpt = lines(dataset / "sharegpt.jsonl")[0]
    assert {turn["from"] for turn in sharegpt["conversations"]} >= {
        "human",
        "gpt",
        "function_call",
        "observation",
    }

    import datasets

    loaded = datasets.load_dataset(
        "parquet",
        data_files=str(dataset / "tasks.parquet"),
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert loaded.num_rows == 1
    assert loaded[0]["question"] == FOUNDER_QUESTION
    assert json.loads(loaded[0]["trajectory"])[0]["role"] == "system"

    only_hf = tmp_path / "hf"
    invoke("export", str(generated), "-f", "hf", "-o", str(only_hf))
    assert sorted(path.name for path in only_hf.iterdir()) == ["manifest.json", "tasks.parquet"]


def test_estimate_predicts_calls_tokens_and_cost_without_llm_calls(tmp_path: Path) -> None:
    from langgraph_taskcraft.accounting import estimate
    from langgraph_taskcraft.context import Context

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "observatory.md").write_text(FIXTURE_TEXT)  # one chunk
    (folder / "long.md").write_text("Long\n\n" + ("word " * 700 + "\n\n") * 9)  # several chunks
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "1", "title": "Short", "text": "A short text."}) + "\n")
    calls = model_calls()
    result = invoke(
        "estimate", str(folder), str(corpus), "--model", "openai:gpt-4.1-mini", "--json"
    )
    assert model_calls() == calls
    data = json.loads(result.output)
    context = Context()
    chunks_per_document = (1 + context.max_chunks_per_document + 1) / 3
    expected = estimate(3, chunks_per_document, context)
    assert data["documents"] == 3
    assert data["chunks_per_document"] == pytest.approx(chunks_per_document)
    assert data["calls"] == pytest.approx(expected.calls)
    assert data["cost"] == pytest.approx(expected.cost)
    assert data["by_key"]["generator:extract"]["calls"] == pytest.approx(3 * chunks_per_document)

    text = invoke("estimate", str(folder), "--model", "openai:gpt-4.1-mini").output
    assert "generator:extract" in text and "total" in text and "$" in text

    deeper = json.loads(
        invoke(
            "estimate",
            str(folder),
            "--model",
            "openai:gpt-4.1-mini",
            "--target-hops",
            "3",
            "--json",
        ).output
    )
    assert (
        deeper["cost"]
        > json.loads(
            invoke("estimate", str(folder), "--model", "openai:gpt-4.1-mini", "--json").output
        )["cost"]
    )


# Bounds on LLM calls.


class ConcurrencyProbe:
    """Counts model calls running at the same time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def slow(self, reply: Any) -> Callable[[list[BaseMessage]], Any]:
        def respond(messages: list[BaseMessage]) -> Any:
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                time.sleep(0.03)
                return reply(messages) if callable(reply) else reply
            finally:
                with self.lock:
                    self.running -= 1

        return respond


PROBE = ConcurrencyProbe()


def slow_copy(model: ScriptedChatModel) -> ScriptedChatModel:
    return ScriptedChatModel(
        rules=[
            Rule(rule.pattern, PROBE.slow(rule.reply), rule.after_tool, rule.times)
            for rule in model.rules
        ]
    )


SLOW_GENERATOR = slow_copy(scenario_atomic.GENERATOR)
SLOW_AGENT = slow_copy(scenario_atomic.AGENT)
SLOW_JUDGE = slow_copy(scenario_atomic.JUDGE)
SLOW_MODELS = [
    "--generator-model",
    "tests.test_cli:SLOW_GENERATOR",
    "--agent-model",
    "tests.test_cli:SLOW_AGENT",
    "--judge-model",
    "tests.test_cli:SLOW_JUDGE",
]


def test_max_llm_calls_bounds_calls_in_flight_over_all_documents(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for number in range(4):
        (folder / f"copy-{number}.md").write_text(f"{FIXTURE_TEXT}\n\nCopy {number}.")

    PROBE.peak = 0
    bounded = tmp_path / "bounded" / "tasks.jsonl"
    generate(
        folder,
        bounded,
        tmp_path / "s1",
        "--no-cache",
        "--concurrency",
        "4",
        "--max-llm-calls",
        "2",
        *SLOW_MODELS,
    )
    assert PROBE.peak == 2
    assert len(lines(bounded)) == 1  # the same founder question four times: deduplicated

    PROBE.peak = 0
    free = tmp_path / "free" / "tasks.jsonl"
    generate(folder, free, tmp_path / "s2", "--no-cache", "--concurrency", "4", *SLOW_MODELS)
    assert PROBE.peak > 2  # without the bound, the documents' calls overlap more


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["generate", str(tmp_path), "--set", "nope=1"])
    assert result.exit_code != 0
    assert "nope" in result.output


def test_a_run_through_an_openai_compatible_server_keeps_to_its_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import scenario_mock
    from tests.mock_openai_server import MockOpenAIServer

    probe = ConcurrencyProbe()
    rules = scenario_mock.server_rules()
    for rule in rules:
        rule.reply = probe.slow(rule.reply)  # type: ignore[assignment]
    documents = scenario_mock.DOCUMENTS[:3]
    scenario_mock.write_documents(tmp_path / "docs", documents)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    out = tmp_path / "out" / "tasks.jsonl"
    with MockOpenAIServer(rules=rules) as base_url:
        result = generate(
            tmp_path / "docs",
            out,
            tmp_path / "state",
            "--no-cache",
            "--json",
            "--model",
            "openai:mock-model",
            "--base-url",
            base_url,
            "--concurrency",
            "8",
            "--max-llm-calls",
            "3",
            "--tokens-per-minute",
            "1000000",
        )
    assert sorted(t["question"] for t in lines(out)) == scenario_mock.expected_questions(documents)
    assert probe.peak == 3
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["done"] == len(documents) and summary["failed"] == 0
    assert sum(u["input_tokens"] for u in summary["usage"].values()) > 0


def test_generate_exits_3_while_items_failed_and_0_once_retried(
    inputs: Path, tmp_path: Path
) -> None:
    from tests import test_runner

    out = tmp_path / "out" / "tasks.jsonl"
    options = [
        "--out",
        str(out),
        "--data-dir",
        str(tmp_path / "state"),
        "--no-cache",
        *MODELS,
        "--agent-model",
        "tests.test_runner:FLAKY_AGENT",
    ]
    test_runner.CRASHES["provider"] = 1  # a rate limit that outlived the client's retries
    failed = CliRunner().invoke(app, ["generate", str(inputs), *options])
    assert failed.exit_code == 3, failed.output
    assert "1 work items failed" in failed.output
    assert [row["key"] for row in lines(out.with_name("tasks.failed.jsonl"))] == [
        str(inputs / "observatory.md")
    ]

    retried = CliRunner().invoke(app, ["generate", str(inputs), *options])
    assert retried.exit_code == 0, retried.output
    assert not out.with_name("tasks.failed.jsonl").exists()
