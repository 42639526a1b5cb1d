"""The retrieve node: good inputs become documents, each broken one a DocumentError."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.loaders import load_document
from langgraph_taskcraft.nodes import retrieve as retrieve_module
from langgraph_taskcraft.nodes.retrieve import MAX_PARALLEL_LOADS, retrieve
from langgraph_taskcraft.records import DocumentRecord
from langgraph_taskcraft.state import TaskcraftState
from tests.loader_fixtures import encrypt_pdf, image_bytes, make_pdf

PARAGRAPH = (
    "The ferry between Oster and the island of Brae runs four times a day in summer. It was "
    "introduced in 1952, replacing a rowing boat service that had operated for a century."
)
HTML = (
    "<html><head><title>Brae Ferry Timetable</title></head><body><nav>Home | Contact</nav>"
    f"<article><h1>Brae Ferry Timetable</h1><p>{PARAGRAPH}</p><p>{PARAGRAPH[::-1]}</p>"
    "</article><footer>Copyright Oster Council</footer></body></html>"
)


def build_inputs(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Good and broken files in `folder`; returns the sources and the expected error classes."""
    folder.mkdir()
    (folder / "ferry.txt").write_text("Brae ferry\n\n" + PARAGRAPH)
    shutil.copy(folder / "ferry.txt", folder / "ferry_copy.txt")  # same content: kept once
    (folder / "notes.md").write_text("# Oster Harbour\n\nThe harbour master keeps a log book.")
    (folder / "timetable.html").write_text(HTML)
    (folder / "report.pdf").write_bytes(make_pdf([PARAGRAPH[:90]], title="Ferry Report"))
    (folder / "map.png").write_bytes(image_bytes((1600, 900)))
    plain = make_pdf(["Accounts of the ferry company."])
    (folder / "locked.pdf").write_bytes(encrypt_pdf(plain, "secret"))
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "broken.png").write_bytes(b"definitely not a png" * 10)
    (folder / "archive.xyz").write_bytes(b"\x00\x01")
    missing = folder / "missing.txt"
    sources = [str(folder), str(missing), str(folder / "archive.xyz")]
    expected_errors = {
        str(folder / "locked.pdf"): "pdf_encrypted",
        str(folder / "empty.pdf"): "pdf_empty",
        str(folder / "broken.png"): "image_unreadable",
        str(missing): "not_found",
        str(folder / "archive.xyz"): "unsupported_type",
        "text:1": "empty_document",
    }
    return sources, expected_errors


async def test_mix_of_good_and_broken_inputs(tmp_path: Path) -> None:
    sources, expected_errors = build_inputs(tmp_path / "inputs")
    state = TaskcraftState(sources=sources, texts=["Oster\n" + PARAGRAPH, "   \n"])
    runtime = Runtime(context=Context(chunk_chars=2000, image_max_side=400))

    with blockbuster_ctx():  # fails on blocking I/O in the event loop, as `langgraph dev` does
        update = await retrieve(state, runtime)

    documents: list[DocumentRecord] = update["documents"]
    by_source = {document.source: document for document in documents}
    folder = tmp_path / "inputs"
    assert sorted(by_source) == sorted(
        [
            str(folder / "ferry.txt"),
            str(folder / "map.png"),
            str(folder / "notes.md"),
            str(folder / "report.pdf"),
            str(folder / "timetable.html"),
            "text:0",
        ]
    )
    assert len({document.id for document in documents}) == len(documents)
    assert by_source[str(folder / "notes.md")].identifier == "Oster Harbour"
    assert by_source[str(folder / "report.pdf")].identifier == "Ferry Report"
    assert by_source[str(folder / "timetable.html")].identifier == "Brae Ferry Timetable"
    assert by_source["text:0"].identifier == "Oster"
    assert by_source[str(folder / "map.png")].images[0].width == 400  # from the Context

    errors = update["errors"]
    assert {error.source: error.error for error in errors} == expected_errors
    assert len(errors) == len(expected_errors)
    for error in errors:
        assert error.stage == "retrieve"
        assert error.source in error.message


async def test_unexpected_exceptions_become_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good.txt"
    good.write_text("Good\n\n" + PARAGRAPH)
    cursed = tmp_path / "cursed.txt"
    cursed.write_text("Cursed\n\n" + PARAGRAPH[::-1])

    def flaky_load(source: str, settings: object) -> DocumentRecord:
        if source.endswith("cursed.txt"):
            raise RuntimeError("parser exploded\nwith a second line")
        return load_document(source, settings)  # type: ignore[arg-type]

    monkeypatch.setattr(retrieve_module, "load_document", flaky_load)
    update = await retrieve(
        TaskcraftState(sources=[str(good), str(cursed)]), Runtime(context=Context())
    )
    assert [document.source for document in update["documents"]] == [str(good)]
    (error,) = update["errors"]
    assert (error.source, error.error, error.stage) == (str(cursed), "RuntimeError", "retrieve")
    assert "parser exploded with a second line" in error.message
    assert "\n" not in error.message


async def test_loads_run_in_parallel_but_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = []
    for number in range(MAX_PARALLEL_LOADS * 3):
        path = tmp_path / f"doc{number:02d}.txt"
        path.write_text(f"Document {number}\n\n{PARAGRAPH} Number {number}.")
        paths.append(str(path))
    running = 0
    most_running = 0
    lock = threading.Lock()

    def slow_load(source: str, settings: object) -> DocumentRecord:
        nonlocal running, most_running
        with lock:
            running += 1
            most_running = max(most_running, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return load_document(source, settings)  # type: ignore[arg-type]

    monkeypatch.setattr(retrieve_module, "load_document", slow_load)
    update = await retrieve(TaskcraftState(sources=paths), Runtime(context=Context()))
    assert [document.source for document in update["documents"]] == paths  # input order
    assert 1 < most_running <= MAX_PARALLEL_LOADS


async def test_retrieve_as_a_graph_node(tmp_path: Path) -> None:
    good = tmp_path / "good.md"
    good.write_text("# Brae Ferry\n\n" + PARAGRAPH)
    builder = StateGraph(TaskcraftState, context_schema=Context)
    builder.add_node("retrieve", retrieve)
    builder.add_edge(START, "retrieve")
    builder.add_edge("retrieve", END)
    graph = builder.compile()

    result = await graph.ainvoke(
        TaskcraftState(sources=[str(good), str(tmp_path / "absent.pdf")]),
        context=Context(chunk_chars=100),
    )
    (document,) = result["documents"]
    assert document.identifier == "Brae Ferry"
    assert len(document.chunks) > 1  # chunk size taken from the Context
    assert [error.error for error in result["errors"]] == ["not_found"]
