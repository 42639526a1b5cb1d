"""Statistics of a run's output files (`taskcraft stats`): acceptance, difficulty, cost."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langgraph_taskcraft.accounting import ModelPrice
    from langgraph_taskcraft.records import Usage

ATOMIC_STAGES = ("extract", "form_question", "leak_check", "verify", "llm_only", "agent", "dedup")
"""Stages an atomic candidate passes, in order (rejections name the stage that stopped it)."""

DEPTH_STAGES = (
    "depth_superset_search",
    "depth_superset_check",
    "depth_intermediate_question",
    "depth_intermediate_verify",
    "depth_merge",
    "depth_merge_check",
)
"""Stages of one attempt at a depth hop, in order."""

WIDTH_STAGES = ("width_merge", "width_merge_check", "width_decompose_check", "width_llm_only")
"""Stages of one attempt at a width merge, in order."""


def _funnel(
    stages: Sequence[str], rejected: Mapping[str, int], passed_all: int
) -> list[dict[str, Any]]:
    """Rows of reached / rejected / passed per stage, given how many passed every stage."""
    rows = []
    reached = passed_all + sum(rejected.get(stage, 0) for stage in stages)
    for stage in stages:
        stopped = rejected.get(stage, 0)
        rows.append(
            {
                "stage": stage,
                "reached": reached,
                "rejected": stopped,
                "passed": reached - stopped,
                "pass_rate": (reached - stopped) / reached if reached else None,
            }
        )
        reached -= stopped
    return [row for row in rows if row["reached"]]


def collect_stats(
    tasks_path: Path, prices: Mapping[str, ModelPrice] | None = None
) -> dict[str, Any]:
    """Statistics of a run's output files (see `taskcraft stats`), JSON-ready.

    Streams the files (a large output is never held in memory at once).
    """
    from langgraph_taskcraft.accounting import summarize
    from langgraph_taskcraft.outputs import OutputFiles, read_jsonl, read_run_info
    from langgraph_taskcraft.records import TokenUsage, merge_usage

    files = OutputFiles(tasks_path, prepare=False)
    info = read_run_info(tasks_path)

    def add_usage(total: Usage, record: Mapping[str, Any]) -> Usage:
        usage = record.get("usage") or {}
        return merge_usage(total, {k: TokenUsage.model_validate(v) for k, v in usage.items()})

    record_usage: Usage = {}  # usage on the records (extraction calls are on none of them)
    kinds: Counter[str] = Counter()
    histogram: Counter[tuple[int, int]] = Counter()
    depth_failed: Counter[str] = Counter()
    width_failed_in_tasks: Counter[str] = Counter()
    hops_made = 0
    for task in read_jsonl(files.tasks):
        kind = str(task.get("kind"))
        kinds[kind] += 1
        histogram[(int(task.get("hops", 1)), int(task.get("width", 1)))] += 1
        failed_attempts = width_failed_in_tasks if kind == "width" else depth_failed
        for attempt in task.get("failed_attempts") or []:
            failed_attempts[str(attempt.get("stage"))] += 1
        if kind != "width":
            hops_made += max(0, int(task.get("hops", 1)) - 1)
        record_usage = add_usage(record_usage, task)
    verified = sum(n for kind, n in kinds.items() if kind != "width")

    atomic_rejected: Counter[str] = Counter()
    width_rejected: Counter[str] = Counter()
    other_rejected: Counter[str] = Counter()
    reasons: Counter[tuple[str, str]] = Counter()
    for record in read_jsonl(files.rejected):
        stage = str(record.get("stage", "?"))
        reasons[(stage, str(record.get("reason")))] += 1
        if stage in ATOMIC_STAGES:
            atomic_rejected[stage] += 1
        elif stage in WIDTH_STAGES:
            width_rejected[stage] += 1
        else:
            other_rejected[stage] += 1
        record_usage = add_usage(record_usage, record)
    error_kinds = Counter(str(e.get("error")) for e in read_jsonl(files.errors))

    # The documents log has every attempt at every document: what was really spent.
    spent: Usage = {}
    latest: dict[str, str] = {}
    for record in read_jsonl(files.documents):
        spent = add_usage(spent, record)
        latest[str(record.get("key"))] = str(record.get("status"))
    usage, usage_source = (spent, "documents") if latest else (record_usage, "records")
    failed = list(read_jsonl(files.failed))
    models = info.get("models") or {}
    summary = summarize(usage, models, prices)
    width_made = kinds.get("width", 0)
    accepted_count = sum(kinds.values())
    rejected_count = sum(reasons.values())
    statuses = Counter(latest.values())
    return {
        "tasks": accepted_count,
        "tasks_by_kind": dict(kinds),
        "rejected": rejected_count,
        "document_errors": sum(error_kinds.values()),
        "documents": dict(statuses),
        "failed": [
            {"key": row.get("key"), "status": row.get("status"), "error": row.get("error")}
            for row in failed
        ],
        "acceptance": {
            "atomic": _funnel(ATOMIC_STAGES, atomic_rejected, verified),
            "depth_attempts": _funnel(DEPTH_STAGES, depth_failed, hops_made),
            "width_attempts": _funnel(
                WIDTH_STAGES, width_rejected + width_failed_in_tasks, width_made
            ),
            "other_rejections": dict(other_rejected),
        },
        "difficulty": [
            {"hops": hops, "width": width, "tasks": count}
            for (hops, width), count in sorted(histogram.items())
        ],
        "rejection_reasons": [
            {"stage": stage, "reason": reason, "count": count}
            for (stage, reason), count in reasons.most_common()
        ],
        "error_kinds": dict(error_kinds.most_common()),
        "usage_source": usage_source,
        "usage": [
            {
                "key": f"{row.role}:{row.stage}",
                "model": row.model,
                "calls": row.calls,
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
                "cost": row.cost,
            }
            for row in summary.rows
        ],
        "cost": summary.total,
        "unpriced_models": summary.unpriced_models,
        "cost_table": summary.format_table(),
        "models": models,
    }
