from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import langgraph_taskcraft
from langgraph_taskcraft.context import Context
from langgraph_taskcraft.exports import (
    AGENT_TOOLS,
    DEFAULT_SYSTEM_PROMPT,
    NotExportable,
    RunInfo,
    chat_messages,
    export_all,
    export_openai_chat,
    export_parquet,
    export_qa,
    export_sharegpt,
    iter_tasks,
    json_columns,
    load_tasks,
    prompt_hashes,
    to_sharegpt,
)
from langgraph_taskcraft.nodes.depth import compose_trajectory
from langgraph_taskcraft.records import ChainStep, Task, TokenUsage, Verification

SYSTEM = "You are the verifier agent."


def call(call_id: str, name: str, **args: Any) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args)},
    }


def trajectory(question: str, answer: str, *steps: tuple[str, dict[str, Any], str]) -> list[dict]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question},
    ]
    for number, (name, args, result) in enumerate(steps, 1):
        messages.append(
            {"role": "assistant", "content": "", "tool_calls": [call(f"c{number}", name, **args)]}
        )
        messages.append({"role": "tool", "tool_call_id": f"c{number}", "content": result})
    messages.append({"role": "assistant", "content": answer})
    return messages


def verification(traj: list[dict], answer: str) -> Verification:
    return Verification(
        accepted=True,
        agent_answer=answer,
        agent_score=1.0,
        llm_only_score=0.0,
        agent_steps=len([m for m in traj if m["role"] == "assistant"]),
        trajectory=traj,
        usage={"agent:agent_run": TokenUsage(calls=2, input_tokens=50, output_tokens=9)},
    )


def atomic(task_id: str, question: str, answer: str, *steps: Any) -> Task:
    traj = trajectory(question, answer, *steps)
    return Task(
        id=task_id,
        question=question,
        answer=answer,
        identifier="Eiffel Tower",
        relation="completed in",
        source="docs/eiffel.md",
        document_id="d1",
        verification=verification(traj, answer),
        trajectory=traj,
        usage={"generator:extract": TokenUsage(calls=1, input_tokens=100, output_tokens=20)},
    )


ATOMIC = atomic(
    "a1",
    "In what year was the Eiffel Tower completed?",
    "1889",
    ("search", {"query": "Eiffel Tower completed"}, "[d1] Eiffel Tower — completed 1889"),
    ("open_page", {"target": "d1"}, "[Eiffel Tower] page 1 of 1\nCompleted in 1889."),
)


def depth_task(*, with_trajectory: bool) -> Task:
    """A two-hop task whose sub-tasks reuse the same tool call ids (c1)."""
    intermediate = trajectory(
        "Which tower did Gustave Eiffel's company build for the 1889 World's Fair?",
        "The Eiffel Tower",
        ("search", {"query": "Eiffel company 1889 fair tower"}, "[d2] Exposition — the tower"),
    )
    chain = [
        ChainStep(
            question="Which tower did Gustave Eiffel's company build for the 1889 fair?",
            answer="Eiffel Tower",
            identifier="Exposition Universelle (1889)",
            relation="landmark built for",
            trajectory=intermediate,
        ),
        ChainStep(
            question=ATOMIC.question,
            answer="1889",
            identifier="Eiffel Tower",
            relation="completed in",
            trajectory=ATOMIC.trajectory,
        ),
    ]
    question = "In what year was the tower built by Eiffel's company for the 1889 fair completed?"
    return ATOMIC.model_copy(
        update={
            "id": "d1",
            "question": question,
            "kind": "depth",
            "hops": 2,
            "difficulty": 2,
            "chain": chain,
            "verification": verification(intermediate, "The Eiffel Tower"),
            "trajectory": compose_trajectory(question, "1889", chain) if with_trajectory else [],
        }
    )


def width_task() -> Task:
    other = atomic(
        "a2",
        "Who designed the Louvre Pyramid?",
        "I. M. Pei",
        ("search", {"query": "Louvre Pyramid architect"}, "[d3] Louvre Pyramid — by I. M. Pei"),
    )
    return Task(
        id="w1",
        question="In what year was the Eiffel Tower completed, and who designed the Louvre "
        "Pyramid?",
        answer="1889; I. M. Pei",
        kind="width",
        hops=1,
        width=2,
        difficulty=2,
        identifier="Eiffel Tower; Louvre Pyramid",
        source="docs/eiffel.md; docs/louvre.md",
        document_id="d1,d3",
        verification=Verification(accepted=True),
        members=[ATOMIC, other],
    )


def no_trajectory_task() -> Task:
    return ATOMIC.model_copy(
        update={
            "id": "bare",
            "trajectory": [],
            "verification": Verification(accepted=True),
        }
    )


def dangling_task() -> Task:
    traj = ATOMIC.trajectory[:3]  # ends on a tool call that was never answered
    return ATOMIC.model_copy(update={"id": "dangling", "trajectory": traj})


def test_chat_messages_of_an_atomic_task() -> None:
    messages = chat_messages(ATOMIC)
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert messages[0] == {"role": "system", "content": SYSTEM}
    assert messages[1]["content"] == ATOMIC.question
    first_call = messages[2]["tool_calls"][0]
    assert first_call["id"] == "call_1" and messages[3]["tool_call_id"] == "call_1"
    assert json.loads(first_call["function"]["arguments"]) == {"query": "Eiffel Tower completed"}
    assert "content" not in messages[2]  # an empty text beside tool calls is left out
    assert messages[-1] == {"role": "assistant", "content": "1889"}
    replaced = chat_messages(ATOMIC, system_prompt="Be brief.", final_answer="golden")
    assert replaced[0]["content"] == "Be brief."


def test_extended_tasks_compose_the_chain_in_solving_order() -> None:
    composed_here = chat_messages(depth_task(with_trajectory=False))
    from_pipeline = chat_messages(depth_task(with_trajectory=True))
    assert composed_here == from_pipeline
    assert composed_here[1] == {
        "role": "user",
        "content": depth_task(with_trajectory=True).question,
    }
    calls = [m["tool_calls"][0] for m in composed_here if m.get("tool_calls")]
    assert [c["function"]["name"] for c in calls] == ["search", "search", "open_page"]
    # Both sub-tasks used the id `c1`; the export renumbers them so every id is unique.
    assert [c["id"] for c in calls] == ["call_1", "call_2", "call_3"]
    tool_ids = [m["tool_call_id"] for m in composed_here if m["role"] == "tool"]
    assert tool_ids == ["call_1", "call_2", "call_3"]
    assert composed_here[-1] == {"role": "assistant", "content": "1889"}

    width = chat_messages(width_task())
    assert width[1]["content"] == width_task().question
    searched = [
        json.loads(m["tool_calls"][0]["function"]["arguments"])["query"]
        for m in width
        if m.get("tool_calls") and m["tool_calls"][0]["function"]["name"] == "search"
    ]
    assert searched == ["Eiffel Tower completed", "Louvre Pyramid architect"]
    assert width[-1]["content"] == "1889; I. M. Pei"


def test_final_verification_trajectory_can_be_preferred() -> None:
    final_run = trajectory(
        depth_task(with_trajectory=True).question,
        "It was completed in 1889.",
        ("search", {"query": "tower 1889 fair completed"}, "[d1] Eiffel Tower — 1889"),
    )
    task = depth_task(with_trajectory=True).model_copy(
        update={"final_verification": verification(final_run, "It was completed in 1889.")}
    )
    messages = chat_messages(task, use_final_verification=True)
    assert len([m for m in messages if m["role"] == "tool"]) == 1
    assert messages[-1]["content"] == "It was completed in 1889."
    assert chat_messages(task) == chat_messages(depth_task(with_trajectory=True))


def test_unusable_trajectories_are_refused_with_a_reason() -> None:
    with pytest.raises(NotExportable) as missing:
        chat_messages(no_trajectory_task())
    assert missing.value.reason == "no_trajectory"
    with pytest.raises(NotExportable) as dangling:
        chat_messages(dangling_task())
    assert dangling.value.reason == "no_final_answer"
    orphan = ATOMIC.trajectory[:2] + [ATOMIC.trajectory[3], ATOMIC.trajectory[-1]]
    with pytest.raises(NotExportable) as orphaned:
        chat_messages(ATOMIC.model_copy(update={"trajectory": orphan}))
    assert orphaned.value.reason == "orphan_tool_result"


def test_trajectory_without_system_or_user_gets_defaults() -> None:
    bare = [m for m in ATOMIC.trajectory if m["role"] not in ("system", "user")]
    messages = chat_messages(ATOMIC.model_copy(update={"trajectory": bare}))
    assert messages[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert messages[1] == {"role": "user", "content": ATOMIC.question}


def test_sharegpt_turns() -> None:
    parallel = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "thinking",
            "tool_calls": [call("x", "search", query="a"), call("y", "search", query="b")],
        },
        {"role": "tool", "tool_call_id": "x", "content": "ra"},
        {"role": "tool", "tool_call_id": "y", "content": "rb"},
        {"role": "assistant", "content": "done"},
    ]
    turns = to_sharegpt(chat_messages(ATOMIC.model_copy(update={"trajectory": parallel})))
    assert [t["from"] for t in turns] == ["system", "human", "function_call", "observation", "gpt"]
    assert json.loads(turns[2]["value"]) == [
        {"name": "search", "arguments": {"query": "a"}},
        {"name": "search", "arguments": {"query": "b"}},
    ]
    assert json.loads(turns[3]["value"]) == ["ra", "rb"]
    single = to_sharegpt(chat_messages(ATOMIC))
    assert [t["from"] for t in single] == [
        "system",
        "human",
        "function_call",
        "observation",
        "function_call",
        "observation",
        "gpt",
    ]
    assert json.loads(single[2]["value"]) == {
        "name": "search",
        "arguments": {"query": "Eiffel Tower completed"},
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


TASKS = [ATOMIC, depth_task(with_trajectory=True), width_task(), no_trajectory_task()]


def test_openai_chat_export(tmp_path: Path) -> None:
    calculator = ATOMIC.model_copy(
        update={
            "id": "calc",
            "trajectory": trajectory("2+2?", "4", ("calculator", {"expression": "2+2"}, "4")),
        }
    )
    result = export_openai_chat([*TASKS, calculator, dangling_task()], tmp_path / "chat.jsonl")
    lines = read_jsonl(result.path)
    assert result.records == len(lines) == 4
    assert [(s.task_id, s.reason) for s in result.skipped] == [
        ("bare", "no_trajectory"),
        ("dangling", "no_final_answer"),
    ]
    assert set(lines[0]) == {"messages", "tools"}
    assert lines[0]["messages"] == chat_messages(ATOMIC)
    names = [tool["function"]["name"] for tool in lines[0]["tools"]]
    assert names == ["search", "open_page", "read_pdf", "inspect_image"]
    assert lines[0]["tools"] == AGENT_TOOLS
    # A tool that is not described gets a schema inferred from its calls.
    inferred = lines[3]["tools"][-1]["function"]
    assert inferred["name"] == "calculator"
    assert inferred["parameters"]["properties"] == {"expression": {"type": "string"}}
    assert inferred["parameters"]["required"] == ["expression"]
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["files"]["chat.jsonl"]["records"] == 4
    assert manifest["files"]["chat.jsonl"]["skipped"] == {"no_final_answer": 1, "no_trajectory": 1}


def test_openai_chat_export_with_langchain_tools(tmp_path: Path) -> None:
    from langchain_core.tools import tool

    @tool
    def search(query: str) -> str:
        """Search the corpus."""
        return query

    result = export_openai_chat([ATOMIC], tmp_path / "chat.jsonl", tools=[search])
    tools = read_jsonl(result.path)[0]["tools"]
    assert tools[0]["function"]["name"] == "search"
    assert tools[0]["function"]["description"] == "Search the corpus."
    # open_page is used but was not given: inferred.
    assert tools[1]["function"]["name"] == "open_page"


def test_sharegpt_export(tmp_path: Path) -> None:
    result = export_sharegpt(TASKS, tmp_path / "sharegpt.jsonl")
    lines = read_jsonl(result.path)
    assert result.records == 3 and [s.task_id for s in result.skipped] == ["bare"]
    assert lines[0]["id"] == "a1"
    assert lines[0]["conversations"] == to_sharegpt(chat_messages(ATOMIC))
    assert [t["function"]["name"] for t in json.loads(lines[0]["tools"])][0] == "search"


def test_qa_export(tmp_path: Path) -> None:
    result = export_qa(TASKS, tmp_path / "qa.jsonl")
    lines = read_jsonl(result.path)
    assert lines[1] == {
        "id": "d1",
        "question": depth_task(with_trajectory=True).question,
        "answer": "1889",
        "kind": "depth",
        "hops": 2,
        "width": 1,
        "source": "docs/eiffel.md",
    }
    assert [line["width"] for line in lines] == [1, 1, 2, 1]
    assert not result.skipped


def test_parquet_loads_with_datasets_and_round_trips(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="the Parquet export needs pyarrow")
    datasets = pytest.importorskip("datasets", reason="loading the export needs `datasets`")
    result = export_parquet(TASKS, tmp_path / "out" / "tasks.parquet", row_group_size=2)
    assert result.records == 4
    dataset = datasets.load_dataset(
        "parquet",
        data_files=str(result.path),
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert dataset.num_rows == 4
    assert dataset.features["hops"].dtype == "int64"
    assert dataset.features["question"].dtype == "string"
    assert dataset.features["agent_score"].dtype == "float64"
    row = dataset[1]
    assert row["id"] == "d1" and row["kind"] == "depth" and row["hops"] == 2
    assert row["agent_answer"] == "The Eiffel Tower" and row["agent_steps"] == 2
    assert row["final_verification"] is None
    restored = [
        Task.model_validate(
            {
                name: (json.loads(value) if name in json_columns() and value else value)
                for name, value in record.items()
                if name in Task.model_fields
            }
        )
        for record in dataset
    ]
    assert restored == TASKS


def test_empty_parquet_export_has_the_schema(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    result = export_parquet([], tmp_path / "empty.parquet")
    table = pq.read_table(result.path)
    assert table.num_rows == 0 and "trajectory" in table.column_names
    assert json.loads(table.schema.metadata[b"langgraph_taskcraft"])["json_columns"] == (
        json_columns()
    )


def test_manifest_records_provenance_and_is_shared(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    context = Context(generator_model="openai:gpt-4.1", agent_model="openai:gpt-4.1-mini")
    run = RunInfo(config=context, seed=7)
    results = export_all(TASKS, tmp_path / "export", run=run, system_prompt="Be brief.")
    manifests = {result.manifest_path for result in results.values()}
    assert manifests == {tmp_path / "export" / "manifest.json"}
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["version"] == langgraph_taskcraft.__version__
    assert manifest["seed"] == 7
    assert manifest["config"]["generator_model"] == "openai:gpt-4.1"
    assert manifest["config"]["target_hops"] == context.target_hops
    assert manifest["models"] == {
        "generator": "openai:gpt-4.1",
        "agent": "openai:gpt-4.1-mini",
        "judge": context.judge_model,
    }
    prompts_folder = Path(langgraph_taskcraft.__file__).parent.parent / "prompts"
    expected_hashes = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(prompts_folder.glob("*.md"))
    }
    assert manifest["prompts"] == expected_hashes == prompt_hashes()
    assert manifest["counts"] == {
        "tasks": 4,
        "by_kind": {"atomic": 2, "depth": 1, "width": 1},
        "by_hops": {"1": 3, "2": 1},
    }
    files = manifest["files"]
    assert set(files) == {"tasks.parquet", "openai_chat.jsonl", "sharegpt.jsonl", "qa.jsonl"}
    qa_path = tmp_path / "export" / "qa.jsonl"
    assert files["qa.jsonl"]["sha256"] == hashlib.sha256(qa_path.read_bytes()).hexdigest()
    assert files["openai_chat.jsonl"]["format"] == "openai"
    assert read_jsonl(tmp_path / "export" / "openai_chat.jsonl")[0]["messages"][0] == {
        "role": "system",
        "content": "Be brief.",
    }
    # Another run exported into the same folder replaces the manifest rather than mixing in.
    export_qa(TASKS[:1], tmp_path / "export" / "qa.jsonl", run=RunInfo(config={}, seed=8))
    replaced = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert set(replaced["files"]) == {"qa.jsonl"} and replaced["seed"] == 8
    assert replaced["models"] == {} and replaced["counts"]["tasks"] == 1
    with pytest.raises(ValueError, match="unknown export formats"):
        export_all(TASKS, tmp_path / "x", formats=["csv"])


def test_iter_tasks_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        ATOMIC.model_dump_json()
        + "\n\nnot json\n"
        + json.dumps({"id": "x", "question": "q"})
        + "\n"
        + width_task().model_dump_json()
        + "\n",
        encoding="utf-8",
    )
    tasks, errors = load_tasks(path)
    assert [task.id for task in tasks] == ["a1", "w1"]
    assert [error.line for error in errors] == [3, 4]
    assert "Invalid JSON" in errors[0].message
    assert "answer" in errors[1].message or "Field required" in errors[1].message
    assert list(iter_tasks([path])) == tasks
