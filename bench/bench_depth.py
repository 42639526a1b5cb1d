"""Manual benchmark of depth extension on the HotpotQA paragraphs (not a test; calls an LLM).

Turns HippoRAG's HotpotQA paragraphs (`{title: [sentences]}`) into a JSONL corpus for the local
BM25 search, picks seed paragraphs whose title another paragraph mentions (so a superset can be
found), runs the `taskcraft` graph on each seed with `extension_strategy=depth`, and prints, per
accepted task, the hops reached, the hop attempts, and the LLM calls and tokens it cost.

    python bench/bench_depth.py --base-url http://localhost:8000/v1 --model qwen3-8b \
        [--seeds 10] [--target-hops 3] [--max-hop-attempts 3] [--out bench/results/depth.jsonl]

`--model` without a provider prefix is served by `--base-url` as `openai:<model>`; the key is
`--api-key`, else OPENAI_API_KEY, else "EMPTY" (what local servers accept).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.records import Rejection, Task, content_id

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "encyclopedic"


def load_paragraphs(path: Path) -> dict[str, str]:
    raw: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    return {title: "".join(sentences) for title, sentences in raw.items()}


def write_corpus(paragraphs: dict[str, str], path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        for title, text in paragraphs.items():
            record = {"id": content_id(title, length=12), "title": title, "text": text}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def linked_titles(paragraphs: dict[str, str]) -> list[str]:
    """Titles that some other paragraph mentions: a superset of them exists in the corpus."""
    found = []
    for title in paragraphs:
        name = re.sub(r"\s*\([^)]*\)$", "", title)  # "Blue (album)" is mentioned as "Blue"
        if len(name) < 4:
            continue
        pattern = re.compile(rf"\b{re.escape(name)}\b")
        if any(pattern.search(text) for other, text in paragraphs.items() if other != title):
            found.append(title)
    return found


def model_spec(name: str) -> str:
    provider = name.partition(":")[0]
    known = {"openai", "anthropic", "ollama", "google_genai", "mistralai", "groq", "together"}
    return name if provider in known else f"openai:{name}"


def usage_totals(task: Task) -> tuple[int, int, int]:
    calls = sum(entry.calls for entry in task.usage.values())
    tokens_in = sum(entry.input_tokens for entry in task.usage.values())
    tokens_out = sum(entry.output_tokens for entry in task.usage.values())
    return calls, tokens_in, tokens_out


def hop_attempts(task: Task) -> int:
    failed = sum(1 for r in task.failed_attempts if r.stage.startswith("depth_"))
    return (task.hops - 1) + failed


async def run_seed(
    graph: Any, title: str, text: str, context: Context, concurrency: int
) -> dict[str, Any]:
    started = time.perf_counter()
    final: dict[str, Any] = {}
    try:
        async for mode, chunk in graph.astream(
            {"texts": [f"{title}\n\n{text}"]},
            context=context,
            config={"max_concurrency": concurrency, "recursion_limit": 50 + 10 * 8},
            stream_mode=["custom", "values"],
        ):
            if mode == "custom":
                if chunk.get("stage") == "depth_hop" and chunk.get("status") != "started":
                    detail = chunk.get("reason") or chunk.get("question") or ""
                    print(f"  [{title}] depth_hop {chunk['status']}: {detail}", file=sys.stderr)
            else:
                final = chunk
    except Exception as exc:  # one seed failing must not end the benchmark
        return {
            "title": title,
            "error": f"{type(exc).__name__}: {exc}",
            "tasks": [],
            "rejected": [],
        }
    return {
        "title": title,
        "seconds": time.perf_counter() - started,
        "tasks": final.get("tasks", []),
        "rejected": final.get("rejected", []),
        "usage": final.get("usage", {}),
    }


async def main_async(args: argparse.Namespace) -> None:
    from langgraph_taskcraft.graphs.taskcraft import graph

    paragraphs = load_paragraphs(args.corpus)
    candidates = linked_titles(paragraphs)
    seeds = random.Random(args.random_seed).sample(candidates, min(args.seeds, len(candidates)))
    print(f"corpus: {len(paragraphs)} paragraphs, {len(candidates)} mentioned by another one")
    print(f"seeds: {len(seeds)}; target hops {args.target_hops}; model {args.model}")

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="bench-depth-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    corpus_path = data_dir / "hotpotqa_corpus.jsonl"
    write_corpus(paragraphs, corpus_path)

    context = Context(
        generator_model=model_spec(args.generator_model or args.model),
        agent_model=model_spec(args.agent_model or args.model),
        judge_model=model_spec(args.judge_model or args.model),
        base_url=args.base_url,
        search_backend="local",
        corpus_path=str(corpus_path),
        data_dir=str(data_dir),
        extension_strategy="depth",
        target_hops=args.target_hops,
        max_hop_attempts=args.max_hop_attempts,
        max_candidates_per_document=args.candidates_per_seed,
        max_chunks_per_document=1,
        verify_final_task=args.verify_final_task,
        requests_per_minute=args.requests_per_minute,
    )
    slots = asyncio.Semaphore(max(1, args.parallel_seeds))

    async def bounded(title: str) -> dict[str, Any]:
        async with slots:
            return await run_seed(graph, title, paragraphs[title], context, args.concurrency)

    started = time.perf_counter()
    results = await asyncio.gather(*(bounded(title) for title in seeds))
    elapsed = time.perf_counter() - started

    tasks: list[Task] = [task for result in results for task in result["tasks"]]
    rejected: list[Rejection] = [r for result in results for r in result["rejected"]]
    print()
    print(f"{'hops':>4} {'tries':>5} {'calls':>5} {'tok in':>8} {'tok out':>7}  question")
    for task in sorted(tasks, key=lambda t: -t.hops):
        calls, tokens_in, tokens_out = usage_totals(task)
        print(
            f"{task.hops:>4} {hop_attempts(task):>5} {calls:>5} {tokens_in:>8} {tokens_out:>7}  "
            f"{task.question[:90]}"
        )
    print()
    errors = [result for result in results if "error" in result]
    for result in errors:
        print(f"error on {result['title']}: {result['error']}")
    print(f"accepted tasks: {len(tasks)} from {len(seeds)} seeds in {elapsed:.0f} s")
    if tasks:
        hops = Counter(task.hops for task in tasks)
        reached = sum(1 for task in tasks if task.hops >= args.target_hops)
        print("hops reached: " + ", ".join(f"{h}: {n}" for h, n in sorted(hops.items())))
        print(f"reached the target ({args.target_hops}): {reached}/{len(tasks)}")
        totals = [usage_totals(task) for task in tasks]
        print(
            "per accepted task: "
            f"{statistics.mean(t[0] for t in totals):.1f} LLM calls, "
            f"{statistics.mean(t[1] for t in totals):.0f} input + "
            f"{statistics.mean(t[2] for t in totals):.0f} output tokens (mean)"
        )
    failed = Counter((r.stage, r.reason) for task in tasks for r in task.failed_attempts) + Counter(
        (r.stage, r.reason) for r in rejected
    )
    if failed:
        print("rejections by stage and reason:")
        for (stage, reason), count in failed.most_common():
            print(f"  {count:>4}  {stage}: {reason}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", encoding="utf-8") as out:
            for task in tasks:
                out.write(task.model_dump_json() + "\n")
        print(f"tasks written to {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint (…/v1).")
    parser.add_argument("--model", required=True, help="Model for every role.")
    parser.add_argument("--generator-model", default="")
    parser.add_argument("--agent-model", default="")
    parser.add_argument("--judge-model", default="")
    parser.add_argument("--api-key", default="", help="Default: OPENAI_API_KEY, else EMPTY.")
    parser.add_argument(
        "--corpus", type=Path, default=SHARED / "hipporag_hotpotqa_train_corpus.json"
    )
    parser.add_argument("--seeds", type=int, default=10, help="Seed paragraphs to extend.")
    parser.add_argument("--random-seed", type=int, default=0)
    parser.add_argument("--candidates-per-seed", type=int, default=1)
    parser.add_argument("--target-hops", type=int, default=3)
    parser.add_argument("--max-hop-attempts", type=int, default=3)
    parser.add_argument("--verify-final-task", action="store_true")
    parser.add_argument("--parallel-seeds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="Branches per seed run.")
    parser.add_argument("--requests-per-minute", type=float, default=0.0)
    parser.add_argument("--data-dir", default="", help="Default: a temporary folder.")
    parser.add_argument("--out", type=Path, default=None, help="JSONL of accepted tasks.")
    args = parser.parse_args()
    if args.api_key:
        os.environ["OPENAI_API_KEY"] = args.api_key
    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
