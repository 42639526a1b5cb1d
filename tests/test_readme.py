"""The README documents every configuration field and the test command CI runs."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from langgraph_taskcraft.context import Context

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_context_field_is_in_the_configuration_table() -> None:
    documented = set(re.findall(r"^\| `(\w+)` \|", README, flags=re.M))
    assert {f.name for f in fields(Context)} <= documented


def test_ci_runs_the_readme_test_command() -> None:
    command = next(line for line in README.splitlines() if "pytest" in line)
    assert command.strip() in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
