"""The distribution installs everything under one import package and loads without keys."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
    )
    return next(out.glob("langgraph_taskcraft-*.whl"))


def test_wheel_holds_one_package_with_stage_folders_and_prompts(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.endswith(".dist-info/RECORD")}
    assert {n for n in top_level if not n.endswith(".dist-info")} == {"langgraph_taskcraft"}
    for expected in (
        "langgraph_taskcraft/graphs/taskcraft.py",
        "langgraph_taskcraft/graphs/verifier.py",
        "langgraph_taskcraft/nodes/atomic.py",
        "langgraph_taskcraft/tools/search.py",
        "langgraph_taskcraft/py.typed",
    ):
        assert expected in names
    assert any(n.startswith("langgraph_taskcraft/prompts/") and n.endswith(".md") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "taskcraft = langgraph_taskcraft.cli:app"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def test_installed_wheel_imports_every_graph_without_api_keys(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    # Only the installed copy is importable: run outside the source tree, wheel first on the path.
    env["PYTHONPATH"] = str(target)
    code = (
        "import langgraph_taskcraft, langgraph_taskcraft.graphs.taskcraft as t, "
        "langgraph_taskcraft.graphs.verifier as v; "
        f"assert langgraph_taskcraft.__file__.startswith({str(target)!r}); "
        "print(sorted(t.graph.get_graph().nodes)); print(v.graph.name)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "verify_candidate" in result.stdout and "verifier" in result.stdout
