"""`taskcraft generate` / `stats` on scripted models: outputs, per-file errors, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from langgraph_taskcraft.cli import app
from tests import scenario_atomic
from tests.scenario_atomic import FIXTURE_TEXT

MODELS = [
    "--generator-model",
    "tests.scenario_atomic:GENERATOR",
    "--agent-model",
    "tests.scenario_atomic:AGENT",
    "--judge-model",
    "tests.scenario_atomic:JUDGE",
]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def model_calls() -> int:
    return sum(
        len(m.calls)
        for m in (scenario_atomic.GENERATOR, scenario_atomic.AGENT, scenario_atomic.JUDGE)
    )


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "observatory.md").write_text(FIXTURE_TEXT)
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "garbage.pdf").write_bytes(b"\x00\x01 not a pdf at all" * 10)
    return folder


def test_generate_writes_tasks_rejections_and_per_file_errors(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "tasks.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "generate",
            str(inputs),
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path / "state"),
            "--no-cache",
            *MODELS,
        ],
    )
    assert result.exit_code == 0, result.output
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

    stats = CliRunner().invoke(app, ["stats", str(out)])
    assert stats.exit_code == 0, stats.output
    assert "answered_without_tools" in stats.output and "pdf_empty" in stats.output


def test_rerun_skips_finished_documents_with_no_llm_call(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "tasks.jsonl"
    args = [
        "generate",
        str(inputs),
        "--out",
        str(out),
        "--data-dir",
        str(tmp_path / "state"),
        "--no-cache",
        *MODELS,
    ]
    assert CliRunner().invoke(app, args).exit_code == 0
    first = out.read_text()
    calls = model_calls()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert model_calls() == calls
    assert out.read_text() == first
    assert "3 already done" in again.output


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["generate", str(tmp_path), "--set", "nope=1"])
    assert result.exit_code != 0
    assert "nope" in result.output
