"""Manual benchmark of the local BM25 search (not a test).

Indexes the HotpotQA paragraphs of HippoRAG (`{title: [sentences]}`) and reports index build
time (cold, from disk, from memory), query latency over the HotpotQA questions, and how often
the supporting paragraphs are among the top results.

    python bench/bench_search.py [--corpus PATH] [--questions PATH] [--k 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from langgraph_taskcraft.records import content_id
from langgraph_taskcraft.tools import Corpus, CorpusDocument, LocalSearchTool
from langgraph_taskcraft.tools import corpus as corpus_module

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "encyclopedic"


def load_paragraphs(path: Path) -> list[CorpusDocument]:
    raw: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    return [
        CorpusDocument(id=content_id(title, length=12), title=title, text="".join(sentences))
        for title, sentences in raw.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", type=Path, default=SHARED / "hipporag_hotpotqa_train_corpus.json"
    )
    parser.add_argument("--questions", type=Path, default=SHARED / "hipporag_hotpotqa_train.json")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument(
        "--repeat", type=int, default=1, help="Index N copies of the corpus (scale test)."
    )
    args = parser.parse_args()

    paragraphs = load_paragraphs(args.corpus)
    documents = [
        CorpusDocument(id=f"{d.id}-{copy}" if copy else d.id, title=d.title, text=d.text)
        for copy in range(args.repeat)
        for d in paragraphs
    ]
    chars = sum(len(d.text) for d in documents)
    print(f"corpus: {len(documents)} documents, {chars:,} characters")
    stemmer = corpus_module.available_stemmer()[0]
    print(f"stemmer: {stemmer}")

    with tempfile.TemporaryDirectory() as data_dir:
        corpus_module.clear_memory_cache()
        started = time.perf_counter()
        corpus = Corpus(documents, data_dir=data_dir)
        origin = corpus.build_index()
        cold = time.perf_counter() - started
        assert corpus._index is not None
        print(f"index ({origin}): {cold * 1000:.0f} ms, {corpus._index.size} passages")

        corpus_module.clear_memory_cache()
        started = time.perf_counter()
        origin = Corpus(documents, data_dir=data_dir).build_index()
        print(f"index ({origin}): {(time.perf_counter() - started) * 1000:.0f} ms (hash + load)")

        started = time.perf_counter()
        origin = Corpus(documents, data_dir=data_dir).build_index()
        print(f"index ({origin}): {(time.perf_counter() - started) * 1000:.0f} ms (hash only)")

        questions = json.loads(args.questions.read_text(encoding="utf-8"))
        tool = LocalSearchTool(corpus=corpus, max_results=args.k)
        latencies: list[float] = []
        found_any = found_all = supporting_total = supporting_found = 0
        for item in questions:
            supporting = {title for title, _ in _parse(item["supporting_facts"])}
            started = time.perf_counter()
            hits = corpus.search(item["question"], k=args.k)
            latencies.append(time.perf_counter() - started)
            titles = {hit.title for hit in hits}
            supporting_total += len(supporting)
            supporting_found += len(supporting & titles)
            found_any += bool(supporting & titles)
            found_all += supporting <= titles
        started = time.perf_counter()
        tool.invoke({"query": questions[0]["question"]})
        tool_ms = (time.perf_counter() - started) * 1000

    latencies_ms = sorted(latency * 1000 for latency in latencies)
    n = len(questions)
    print(
        f"query latency over {n} questions: mean {statistics.mean(latencies_ms):.2f} ms, "
        f"p50 {latencies_ms[n // 2]:.2f} ms, p95 {latencies_ms[int(n * 0.95) - 1]:.2f} ms; "
        f"one tool call {tool_ms:.2f} ms"
    )
    print(
        f"supporting paragraphs in top {args.k}: {supporting_found}/{supporting_total} "
        f"({supporting_found / supporting_total:.0%}); questions with at least one: "
        f"{found_any}/{n}; with all: {found_all}/{n}"
    )


def _parse(value: object) -> list[list]:
    """HippoRAG stores nested lists as Python-literal strings."""
    if isinstance(value, str):
        import ast

        return ast.literal_eval(value)
    return list(value)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
