"""Scale benchmarks of batch generation against a local mock OpenAI server (not tests).

Every benchmark runs the real pipeline: `run_batch` → the `taskcraft` graph → `langchain_openai`
(`openai:mock-model` with `base_url`) → HTTP → the mock server of `tests/mock_openai_server.py`,
started by this script in its own process with the scripted scenario of `bench/mock_scenario.py`
(16 LLM calls and 1 accepted task per document; 7 calls on the longest dependency chain).

    python bench/bench_scale.py                      # all but memory (a few minutes)
    python bench/bench_scale.py --only memory        # 10,000 documents (about 20 minutes)
    python bench/bench_scale.py --only overhead,rerun --py-spy bench/results/profile

Benchmarks (`--only`, comma-separated; default: overhead,throughput,tokens,rerun):

- overhead: wall time per LLM call of a run with a zero-latency server, next to the cost of the
  same client calling the same server directly, so the framework's own share is visible.
- throughput: with 200 ms per call, (b1) documents in flight 1, 8 and 64 against the ideal
  (critical-path calls per document x latency x waves of documents), and (b2) LLM calls in
  flight (`max_llm_calls`) 1, 8 and 64 with enough documents in flight to keep them busy,
  against the ideal of calls in flight / latency calls per second (`--ray`: also with the Ray
  executor).
- tokens: LLM calls and tokens per accepted task, by `role:stage`, from the run's usage table.
- memory: peak RSS for 10,000 small documents (run in a fresh process).
- rerun: LLM calls and wall time of rerunning a finished run.

Prints Markdown tables (paste them into the README).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

import mock_scenario  # noqa: E402 - the bench folder is put on the path first

MODEL = "openai:mock-model"
CRITICAL_PATH_CALLS = 7
"""Sequential LLM calls of one scenario document: extract, form_question, answer without tools,
judge, agent search step, agent answer step, judge (the other 9 calls run beside them)."""
DEFAULT_BENCHMARKS = ("overhead", "throughput", "tokens", "rerun")
ALL_BENCHMARKS = ("overhead", "throughput", "tokens", "memory", "rerun")
TARGETS = {
    "overhead": "< 20 ms wall per LLM call (zero latency)",
    "throughput": ">= 90 % of ideal at 64 documents in flight",
    "memory": "< 500 MB peak RSS for 10,000 documents",
    "rerun": "0 LLM calls on rerun",
}


# Output.


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with a bold title line."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    lines = [f"**{title}**", ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def say(text: str = "") -> None:
    """Print at once (progress lines interleave with long runs)."""
    print(text, flush=True)


def machine_header() -> str:
    """CPU, memory, Python, platform and the versions of the libraries on the measured path."""
    packages = ["langgraph", "langchain-core", "langchain-openai", "openai", "langgraph-taskcraft"]
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        total_kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f", {total_kb / 1024**2:.1f} GiB RAM"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        models = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        if models:
            cpu = models[0].strip()
    return (
        f"Machine: {os.cpu_count()} CPUs ({cpu}){memory}; Python {platform.python_version()}; "
        f"{platform.platform()}\nLibraries: {', '.join(versions)}"
    )


# The mock server, in its own process.


class ScenarioServer:
    """`bench/mock_scenario.py` served in a child process; `chat_requests()` reads its counter."""

    def __init__(self, latency_ms: float) -> None:
        self.latency_ms = latency_ms
        self._process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "mock_scenario.py"), "--latency-ms", str(latency_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        first = self._process.stdout.readline().split()
        if len(first) != 2 or first[0] != "base_url":
            raise RuntimeError(f"the mock server did not start: {first}")
        self.base_url = first[1]
        self._lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        """The server's counters (blocking: a line written and read over a pipe)."""
        assert self._process.stdin is not None and self._process.stdout is not None
        with self._lock:
            self._process.stdin.write("stats\n")
            self._process.stdin.flush()
            return dict(json.loads(self._process.stdout.readline()))

    async def chat_requests(self) -> int:
        """Chat completions requested so far."""
        return (await self.counters())[0]

    async def counters(self) -> tuple[int, int]:
        """(chat completions requested, requests no scenario rule answered) so far."""
        stats = await asyncio.to_thread(self.stats)
        return int(stats["chat_requests"]), int(stats["unmatched"])

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        # utime and stime are fields 14 and 15 of the stat line (11 and 12 after the name).
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        """Stop the server process."""
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class Servers:
    """Mock servers by latency, started when first needed."""

    def __init__(self) -> None:
        self._servers: dict[float, ScenarioServer] = {}

    def get(self, latency_ms: float) -> ScenarioServer:
        """The server answering after `latency_ms`."""
        if latency_ms not in self._servers:
            self._servers[latency_ms] = ScenarioServer(latency_ms)
        return self._servers[latency_ms]

    def close(self) -> None:
        """Stop every server."""
        for server in self._servers.values():
            server.close()


# Runs.


def context_for(base_url: str, data_dir: Path, **overrides: Any) -> Any:
    """A run configuration with every role on the mock server (unknown fields are skipped)."""
    from langgraph_taskcraft.context import Context

    names = {f.name for f in dataclasses.fields(Context)}
    values = {
        "generator_model": MODEL,
        "agent_model": MODEL,
        "judge_model": MODEL,
        "base_url": base_url,
        "search_backend": "local",
        "data_dir": str(data_dir),
        # Per-document branches (3 candidates) never wait for each other.
        "max_concurrency": 16,
        # No run-wide bound on LLM calls in flight: the document concurrency is the variable.
        "max_llm_calls": 0,
        **overrides,
    }
    return Context(**{k: v for k, v in values.items() if k in names})


@contextlib.contextmanager
def llm_cache(data_dir: Path | None) -> Iterator[None]:
    """The runner's SQLite LLM cache in `data_dir` (None: off), as `taskcraft generate` sets it."""
    from langgraph_taskcraft.cache import use_llm_cache

    with use_llm_cache(data_dir):
        yield


@dataclass
class Measured:
    """One measured batch run."""

    label: str
    docs: int
    concurrency: int
    wall: float
    cpu: float
    calls: int
    summary: Any
    server_cpu: float = 0.0
    steady_rate: float | None = None
    """LLM calls per second between 10 % and 90 % of the run's calls (when sampled)."""

    @property
    def wall_ms_per_call(self) -> float:
        """Wall time of the run divided by the LLM calls the server answered."""
        return 1000 * self.wall / max(1, self.calls)

    @property
    def cpu_ms_per_call(self) -> float:
        """CPU time of this process (all threads) per LLM call."""
        return 1000 * self.cpu / max(1, self.calls)


class Profiler:
    """Records this process with py-spy while a block runs (when `--py-spy` is given)."""

    def __init__(self, prefix: Path | None) -> None:
        self.prefix = prefix

    @contextlib.asynccontextmanager
    async def record(self, label: str) -> AsyncIterator[None]:
        """Attach py-spy to this process for the block; print where the time went."""
        executable = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if self.prefix is None or not Path(executable).exists():
            if self.prefix is not None:
                say("  (py-spy not found: pip install py-spy)")
            yield
            return
        path = Path(f"{self.prefix}-{re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-')}.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        command = [executable, "record", "--pid", str(os.getpid()), "--rate", "200"]
        command += ["--full-filenames", "--nonblocking"]
        spy = subprocess.Popen(
            [*command, "--format", "raw", "--output", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.5)  # py-spy attaches
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            await asyncio.to_thread(spy.wait)
            if path.exists():
                say(profile_summary(path, label))


def _frame_package(frame: str) -> str:
    """The package a py-spy frame (`function (/full/path.py:line)`) belongs to."""
    match = re.search(r"\((.*?):\d+\)$", frame)
    where = match[1] if match else frame
    site = re.search(r"(?:site|dist)-packages/([^/]+)", where)
    if site:
        return site[1].removesuffix(".py")
    if where.startswith(str(BENCH_DIR)):
        return "bench"
    if where.startswith(str(BENCH_DIR.parent)):
        return "langgraph_taskcraft"
    return "stdlib:" + Path(where).name


def profile_summary(path: Path, label: str, top: int = 25) -> str:
    """Where the event loop's samples went, by package and by function, from py-spy stacks.

    Inclusive: a sample counts for every package (function) on its stack. Self: only for the
    package of the innermost frame, with the standard library lumped together. Functions above
    90 % (the event loop and the run's outermost coroutines) are left out.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or not any("_run_once" in f for f in frames):
            continue  # not the event loop's thread
        samples = int(count)
        total += samples
        packages = [_frame_package(f) for f in frames]
        for package in set(packages):
            inclusive[package] += samples
        innermost = packages[-1]
        own["Python stdlib" if innermost.startswith("stdlib:") else innermost] += samples
        named = {
            f"{package}: {frame.split(' (')[0]}"
            for frame, package in zip(frames, packages, strict=True)
            if package != "bench" and not package.startswith("stdlib:")
        }
        for function in named:
            functions[function] += samples
    if not total:
        return f"  profile {path}: no samples"

    def share(count: int) -> str:
        return f"{100 * count / total:.1f} %"

    rows = [
        [name, share(count), share(own.get(name, 0))]
        for name, count in inclusive.most_common()
        if not name.startswith("stdlib:") and name != "bench"
    ]
    rows.append(["Python stdlib (innermost frame)", "", share(own.get("Python stdlib", 0))])
    busiest = [
        [name, share(count)] for name, count in functions.most_common() if count < 0.9 * total
    ][:top]
    return (
        table(
            f"py-spy, {label}: event-loop samples by package ({total} samples)",
            ["package", "inclusive", "self"],
            rows[:top],
        )
        + "\n"
        + table(f"py-spy, {label}: functions (inclusive)", ["function", "share"], busiest)
        + f"\n(raw stacks: {path})\n"
    )


class Bench:
    """Shared state of one invocation: servers, the scratch folder, options."""

    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        self.args = args
        self.scratch = scratch
        self.servers = Servers()
        self.profiler = Profiler(args.py_spy)
        self.warmed: set[float] = set()
        self.results: dict[str, Any] = {}

    def corpus(self, count: int, start: int = 0) -> Path:
        """A JSONL corpus of scenario documents `start` … `start + count - 1`."""
        path = self.scratch / f"corpus-{start}-{count}.jsonl"
        if not path.exists():
            mock_scenario.write_corpus(path, count, start)
        return path

    async def warm_up(self, server: ScenarioServer) -> None:
        """One small unmeasured run: imports, first connections, the search index code."""
        if server.latency_ms in self.warmed:
            return
        self.warmed.add(server.latency_ms)
        folder = self.scratch / f"warmup-{server.latency_ms:g}"
        corpus = self.corpus(2, start=900_000)
        await self.run(server, corpus, folder, concurrency=2, label="warm-up", profile=False)

    async def run(
        self,
        server: ScenarioServer,
        corpus: Path,
        folder: Path,
        *,
        concurrency: int,
        label: str,
        cache: bool = False,
        profile: bool = True,
        on_result: Callable[[Any], None] | None = None,
        out: Path | None = None,
        executor_factory: Callable[[Any], Any] | None = None,
        sample_calls: bool = False,
        **context_overrides: Any,
    ) -> Measured:
        """Run `run_batch` over `corpus` and measure wall time, CPU time and server calls.

        `executor_factory(context)` makes the run's executor (default: in this process);
        `sample_calls` samples the server's call counter during the run (`Measured.steady_rate`).
        """
        from langgraph_taskcraft.runner import run_batch

        context = context_for(server.base_url, folder / "state", **context_overrides)
        executor = executor_factory(context) if executor_factory else None
        out = out or folder / "tasks.jsonl"
        docs = sum(1 for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip())
        before, unmatched_before = await server.counters()
        server_cpu = server.cpu_seconds()
        samples: list[tuple[float, int]] = []
        recorder = self.profiler.record(label) if profile else contextlib.nullcontext()
        async with recorder:
            with llm_cache(folder / "state" if cache else None):
                cpu_start, started = time.process_time(), time.perf_counter()
                sampler = (
                    asyncio.ensure_future(sample_server_calls(server, samples))
                    if sample_calls
                    else None
                )
                try:
                    summary = await run_batch(
                        [str(corpus)],
                        context,
                        out,
                        concurrency=concurrency,
                        on_result=on_result,
                        executor=executor,
                    )
                finally:
                    if sampler is not None:
                        sampler.cancel()
                        await asyncio.gather(sampler, return_exceptions=True)
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu_start
        after, unmatched_after = await server.counters()
        calls = after - before
        server_cpu = server.cpu_seconds() - server_cpu
        if unmatched_after > unmatched_before:
            say(f"  warning: {unmatched_after - unmatched_before} prompts had no scripted reply")
        if summary.failed:
            say(f"  warning: {summary.failed} documents failed in {label!r}")
            for key, reason in list(getattr(summary, "failures", {}).items())[:3]:
                say(f"    {key}: {reason}")
        rate = steady_rate([(t, n - before) for t, n in samples], calls)
        return Measured(label, docs, concurrency, wall, cpu, calls, summary, server_cpu, rate)


async def sample_server_calls(server: ScenarioServer, samples: list[tuple[float, int]]) -> None:
    """Append (time, chat requests so far) every 0.2 s until cancelled."""
    while True:
        samples.append((time.perf_counter(), await server.chat_requests()))
        await asyncio.sleep(0.2)


def steady_rate(samples: Sequence[tuple[float, int]], calls: int) -> float | None:
    """LLM calls per second between 10 % and 90 % of a run's calls (no start-up, no tail)."""
    low = [(t, n) for t, n in samples if n >= 0.1 * calls]
    high = [(t, n) for t, n in samples if n >= 0.9 * calls]
    if not low or not high or high[0][0] <= low[0][0]:
        return None
    return (high[0][1] - low[0][1]) / (high[0][0] - low[0][0])


# (a) Framework overhead per LLM call.


async def time_direct_calls(
    label: str, call: Callable[[], Any], count: int, server: ScenarioServer
) -> tuple[str, int, float, float, float]:
    """(label, calls, wall s, CPU s, server CPU s) of `count` sequential calls after 10 others."""
    for _ in range(10):
        await call()
    server_cpu = server.cpu_seconds()
    cpu_start, started = time.process_time(), time.perf_counter()
    for _ in range(count):
        await call()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_start
    return label, count, wall, cpu, server.cpu_seconds() - server_cpu


async def direct_baselines(bench: Bench, server: ScenarioServer) -> dict[str, tuple]:
    """The same client calling the same server with no framework around it."""
    from langchain_core.messages import HumanMessage
    from openai import AsyncOpenAI

    from langgraph_taskcraft.llm import ainvoke_structured, chat_model
    from langgraph_taskcraft.nodes.verifier import AnswerJudgement
    from langgraph_taskcraft.prompts import render

    context = context_for(server.base_url, bench.scratch / "direct")
    name = mock_scenario.institution_name(0)
    founder = mock_scenario.founder_of(name)
    question = f"Who founded the {name}?"
    text_messages = [HumanMessage(render("verifier_answer_without_tools", question=question))]
    judge_messages = [
        HumanMessage(
            render(
                "verifier_judge_answer",
                question=question,
                golden_answer=founder,
                candidate_answer=founder,
            )
        )
    ]
    raw_client = AsyncOpenAI(base_url=server.base_url, api_key="dummy")
    model = chat_model(context, "judge")  # the very client object the runs use
    structured = model.with_structured_output(
        AnswerJudgement, method=context.structured_output_method, include_raw=True
    )
    count = bench.args.direct_calls
    results = {}
    with llm_cache(None):
        for key, label, call in (
            (
                "raw",
                "openai SDK `chat.completions.create` (text)",
                lambda: raw_client.chat.completions.create(
                    model="mock-model",
                    messages=[{"role": "user", "content": text_messages[0].text}],
                ),
            ),
            ("text", "`ChatOpenAI.ainvoke` (text)", lambda: model.ainvoke(text_messages)),
            (
                "structured",
                "`ChatOpenAI.with_structured_output(..., include_raw=True)`, built once",
                lambda: structured.ainvoke(judge_messages),
            ),
            (
                "helper",
                "taskcraft `llm.ainvoke_structured` (split once, parsed in place)",
                lambda: ainvoke_structured(
                    model, AnswerJudgement, judge_messages, context=context, usage={}, key="x"
                ),
            ),
        ):
            results[key] = await time_direct_calls(label, call, count, server)
    await raw_client.close()
    return results


async def bench_overhead(bench: Bench) -> None:
    """(a) wall time per LLM call of whole runs with a zero-latency server vs direct calls."""
    args = bench.args
    server = bench.servers.get(0.0)
    await bench.warm_up(server)
    say(f"(a) overhead: {args.overhead_docs} documents, zero latency ...")
    direct = await direct_baselines(bench, server)
    corpus = bench.corpus(args.overhead_docs)
    runs = []
    for concurrency, cache in ((1, False), (1, True), (8, False)):
        label = f"taskcraft run, {concurrency} doc at a time, LLM cache {'on' if cache else 'off'}"
        folder = bench.scratch / f"overhead-c{concurrency}-{'cache' if cache else 'nocache'}"
        runs.append(
            await bench.run(
                server, corpus, folder, concurrency=concurrency, label=label, cache=cache
            )
        )
    rows: list[list[Any]] = []
    for label, calls, wall, cpu, server_cpu in direct.values():
        rows.append(
            [label, calls, wall, 1000 * wall / calls, 1000 * cpu / calls, 1000 * server_cpu / calls]
        )
    for run in runs:
        server_ms = 1000 * run.server_cpu / max(1, run.calls)
        rows.append(
            [run.label, run.calls, run.wall, run.wall_ms_per_call, run.cpu_ms_per_call, server_ms]
        )
    say(
        table(
            "(a) Framework overhead per LLM call (zero-latency mock server)",
            [
                "measurement",
                "LLM calls",
                "wall s",
                "wall ms/call",
                "client CPU ms/call",
                "server CPU ms/call",
            ],
            rows,
        )
    )
    base = runs[0]
    usage = base.summary.usage
    total = sum(entry.calls for entry in usage.values()) or 1
    text_share = (
        usage["agent:llm_only_answer"].calls / total if "agent:llm_only_answer" in usage else 0
    )
    per_call = {key: 1000 * wall / calls for key, (_, calls, wall, _, _) in direct.items()}
    # The run's structured calls go through `ainvoke_structured`: weigh that, not the
    # `with_structured_output` runnable it no longer uses per call.
    client_mix = text_share * per_call["text"] + (1 - text_share) * per_call["helper"]
    own = base.wall_ms_per_call - client_mix
    say(
        f"Client + server alone, weighted by this run's mix ({text_share:.0%} plain text calls, "
        f"the rest through `ainvoke_structured` or with tools): {client_mix:.1f} ms per call. "
        "Framework's own share at "
        f"1 document at a time: {own:.1f} ms per call ({own / base.wall_ms_per_call:.0%}); "
        f"with the LLM cache on: {runs[1].wall_ms_per_call - client_mix:.1f} ms per call.\n"
    )
    bench.results["overhead"] = {
        "ms_per_call": base.wall_ms_per_call,
        "ms_per_call_cache": runs[1].wall_ms_per_call,
        "cpu_ms_per_call": runs[2].cpu_ms_per_call,
        "client_ms_per_call": client_mix,
    }


# (b) Throughput with 200 ms per call.


async def bench_throughput(bench: Bench) -> None:
    """(b) throughput with a fixed latency per call: documents in flight, then calls in flight."""
    await bench_documents_in_flight(bench)
    if bench.args.calls_in_flight:
        await bench_calls_in_flight(bench)


async def bench_documents_in_flight(bench: Bench) -> None:
    """(b1) documents at several concurrencies (documents in flight), against the ideal."""
    args = bench.args
    latency = args.latency_ms / 1000
    server = bench.servers.get(args.latency_ms)
    await bench.warm_up(server)
    rows = []
    for concurrency, docs in zip(args.concurrency, args.throughput_docs, strict=True):
        say(
            f"(b1) throughput: {docs} documents, {concurrency} documents in flight, "
            f"{args.latency_ms:g} ms per call ..."
        )
        corpus = bench.corpus(docs)
        folder = bench.scratch / f"throughput-c{concurrency}"
        run = await bench.run(
            server,
            corpus,
            folder,
            concurrency=concurrency,
            label=f"throughput c={concurrency}",
            cache=args.llm_cache,
        )
        ideal = math.ceil(docs / concurrency) * CRITICAL_PATH_CALLS * latency
        efficiency = ideal / run.wall
        rows.append(
            [
                concurrency,
                docs,
                run.calls,
                run.wall,
                ideal,
                f"{efficiency:.0%}",
                docs / run.wall,
                run.calls / run.wall,
                run.cpu,
                f"{run.cpu / run.wall:.0%}",
                run.server_cpu,
            ]
        )
        bench.results.setdefault("throughput", {})[concurrency] = efficiency
    say(
        table(
            f"(b1) Throughput by documents in flight, {args.latency_ms:g} ms per LLM call, "
            f"LLM cache {'on' if args.llm_cache else 'off'}, no bound on LLM calls",
            [
                "documents in flight",
                "docs",
                "LLM calls",
                "wall s",
                "ideal s",
                "% of ideal",
                "docs/s",
                "calls/s",
                "CPU s",
                "CPU busy",
                "server CPU s",
            ],
            rows,
        )
    )
    say(
        f"ideal = ceil(docs / documents in flight) x {CRITICAL_PATH_CALLS} calls on a document's "
        f"critical path x {args.latency_ms:g} ms: documents in waves, each wave as long as one "
        "document's longest chain of dependent calls, and no time at all on the client. CPU s is "
        "the benchmark process's CPU time (all threads), CPU busy its share of the wall time: "
        "near 100 % the pipeline is CPU-bound (one event loop, one core). Server CPU s: the mock "
        "server's process, on the other core(s).\n"
    )


async def bench_calls_in_flight(bench: Bench) -> None:
    """(b2) concurrency as the bound on LLM calls in flight (`max_llm_calls`), against the ideal.

    Ideal = `max_llm_calls` / latency calls per second: every slot always busy. Enough documents
    run at once (`--docs-per-slot` per slot) to keep the slots busy; the steady rate is measured
    between 10 % and 90 % of the run's calls, so start-up and the tail do not count.
    """
    args = bench.args
    latency = args.latency_ms / 1000
    server = bench.servers.get(args.latency_ms)
    await bench.warm_up(server)
    plans: list[tuple[str, int, int, Callable[[Any], Any] | None]] = [
        ("this process", calls, docs, None)
        for calls, docs in zip(args.calls_in_flight, args.calls_docs, strict=True)
    ]
    if args.ray:
        calls, docs = args.calls_in_flight[-1], args.calls_docs[-1]
        plans.append((f"Ray, {args.ray_workers} worker processes", calls, docs, ray_executor(args)))
    rows = []
    for where, calls_in_flight, docs, executor_factory in plans:
        documents_in_flight = max(2, int(args.docs_per_slot * calls_in_flight))
        say(
            f"(b2) throughput: {docs} documents, at most {calls_in_flight} LLM calls in flight "
            f"({documents_in_flight} documents in flight), {where} ..."
        )
        folder = bench.scratch / f"calls-{calls_in_flight}-{re.sub(r'[^a-z]+', '-', where)}"
        run = await bench.run(
            server,
            bench.corpus(docs),
            folder,
            concurrency=documents_in_flight,
            label=f"calls in flight {calls_in_flight}, {where}",
            cache=args.llm_cache,
            executor_factory=executor_factory,
            sample_calls=True,
            max_llm_calls=calls_in_flight,
        )
        ideal_rate = calls_in_flight / latency
        ideal_wall = max(run.calls / ideal_rate, CRITICAL_PATH_CALLS * latency)
        steady = run.steady_rate
        in_process = executor_factory is None
        rows.append(
            [
                calls_in_flight,
                where,
                documents_in_flight,
                docs,
                run.calls,
                run.wall,
                ideal_wall,
                run.calls / run.wall,
                "n/a" if steady is None else steady,
                ideal_rate,
                f"{ideal_wall / run.wall:.0%}",
                "n/a" if steady is None else f"{steady / ideal_rate:.0%}",
                run.cpu_ms_per_call if in_process else "(workers)",
                f"{run.cpu / run.wall:.0%}" if in_process else "(workers)",
            ]
        )
        key = "calls_in_flight" if in_process else "calls_in_flight_ray"
        bench.results.setdefault(key, {})[calls_in_flight] = (
            steady or run.calls / run.wall
        ) / ideal_rate
    say(
        table(
            f"(b2) Throughput by LLM calls in flight (`max_llm_calls`), {args.latency_ms:g} ms per "
            f"call, LLM cache {'on' if args.llm_cache else 'off'}",
            [
                "LLM calls in flight",
                "where",
                "documents in flight",
                "docs",
                "LLM calls",
                "wall s",
                "ideal s",
                "calls/s",
                "steady calls/s",
                "ideal calls/s",
                "% of ideal (wall)",
                "% of ideal (steady)",
                "client CPU ms/call",
                "CPU busy",
            ],
            rows,
        )
    )
    say(
        f"ideal = LLM calls in flight / {args.latency_ms:g} ms calls per second (every slot always "
        "busy; ideal s also at least one document's critical path). Steady: the rate between 10 % "
        "and 90 % of the run's calls, without start-up and tail. A process spending c ms of CPU "
        "per call tops out at 1000 / c calls per second, whatever the bound.\n"
    )


def ray_executor(args: argparse.Namespace) -> Callable[[Any], Any]:
    """A factory of `RayExecutor`s on the local Ray that `main_async` started."""

    def make(context: Any) -> Any:
        from langgraph_taskcraft.ray_executor import RayExecutor

        return RayExecutor(
            context,
            workers=args.ray_workers,
            # Every document of the run may wait on a worker at once.
            items_per_worker=max(16, args.calls_docs[-1]),
        )

    return make


# (c) Calls and tokens per accepted task.


async def bench_tokens(bench: Bench) -> None:
    """(c) LLM calls and tokens per accepted task, by role:stage, from the run's usage table."""
    args = bench.args
    server = bench.servers.get(0.0)
    await bench.warm_up(server)
    say(f"(c) tokens: {args.tokens_docs} documents ...")
    run = await bench.run(
        server,
        bench.corpus(args.tokens_docs),
        bench.scratch / "tokens",
        concurrency=8,
        label="tokens",
        cache=args.llm_cache,
    )
    summary = run.summary
    accepted = max(1, summary.tasks)
    rows = []
    totals = [0, 0, 0]
    for key, entry in sorted(summary.usage.items()):
        values = (entry.calls, entry.input_tokens, entry.output_tokens)
        rows.append([key, *(f"{value / accepted:,.1f}" for value in values)])
        totals = [
            totals[0] + entry.calls,
            totals[1] + entry.input_tokens,
            totals[2] + entry.output_tokens,
        ]
    rows.append(["**total**", *(f"{value / accepted:,.1f}" for value in totals)])
    say(
        table(
            f"(c) Per accepted atomic task ({summary.tasks} accepted, {summary.rejected} rejected, "
            f"from {run.docs} documents)",
            ["role:stage", "LLM calls", "input tokens", "output tokens"],
            rows,
        )
    )
    reasons = Counter(getattr(summary, "rejected_by_stage", {}) or {})
    say(
        f"Usage table: {totals[0]:,} calls; the server answered {run.calls:,}. Rejected by stage: "
        f"{dict(reasons) or 'n/a'}. Tokens are the mock server's counts (words and punctuation "
        "marks of the real prompts; BPE tokenizers count about 1.3 tokens per English word).\n"
    )
    bench.results["tokens"] = {"calls_per_task": totals[0] / accepted}


# (d) Peak memory for many documents.


def current_rss_mb() -> float:
    """Resident set size of this process now (Linux /proc; else the peak so far)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """The process's peak resident set size (`ru_maxrss`)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


class RssSampler:
    """Samples RSS in a thread, so the peak of a run is known without the process's history."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_mb())
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())


def folder_mb(path: Path) -> float:
    """Size of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1024**2


async def bench_memory(bench: Bench) -> None:
    """(d) peak RSS of a run over many small documents (this process holds only the client)."""
    import tracemalloc

    args = bench.args
    docs, concurrency = args.memory_docs, args.memory_concurrency
    server = bench.servers.get(0.0)
    await bench.warm_up(server)
    corpus = bench.corpus(docs)
    say(
        f"(d) memory: {docs:,} documents at concurrency {concurrency}, one fact each "
        f"({CRITICAL_PATH_CALLS} LLM calls, 1 accepted task per document); progress every "
        f"{max(1, docs // 20):,} documents ..."
    )
    if args.tracemalloc:
        tracemalloc.start(10)
    baseline, peak_before = current_rss_mb(), peak_rss_mb()
    folder = bench.scratch / "memory"
    done = 0
    started = time.perf_counter()
    every = max(1, docs // 20)
    checkpoints: list[tuple[int, float]] = []

    def on_result(result: Any) -> None:
        nonlocal done
        done += 1
        if done % every == 0 or done == docs:
            elapsed = time.perf_counter() - started
            rss = current_rss_mb()
            checkpoints.append((done, rss))
            eta = elapsed / done * (docs - done)
            say(
                f"  {done:,}/{docs:,} documents, {elapsed:,.0f} s, {done / elapsed:.1f} docs/s, "
                f"RSS {rss:,.0f} MB, about {eta:,.0f} s left"
            )

    with RssSampler() as sampler:
        run = await bench.run(
            server,
            corpus,
            folder,
            concurrency=concurrency,
            label=f"memory {docs} docs",
            cache=args.llm_cache,
            on_result=on_result,
            max_candidates_per_document=1,
        )
    top = []
    if args.tracemalloc:
        snapshot = tracemalloc.take_snapshot()
        heap_now, heap_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        top = snapshot.statistics("lineno")[:12]
        say(
            f"  tracemalloc: Python heap now {heap_now / 1024**2:.0f} MB, peak "
            f"{heap_peak / 1024**2:.0f} MB; largest allocation sites still held:"
        )
        for stat in top:
            say(f"    {stat.size / 1024**2:7.1f} MB  {stat.traceback}")
    say("  rerunning the finished run (all documents skipped) ...")
    rerun = await bench.run(
        server,
        corpus,
        folder,
        concurrency=concurrency,
        label="memory rerun",
        cache=args.llm_cache,
        max_candidates_per_document=1,
    )
    # Growth between the first and the last tenth of the run: memory kept per finished document.
    half = [rss for count, rss in checkpoints if count >= docs // 10]
    growth = (half[-1] - half[0]) / max(1, docs - docs // 10) * 1000 if len(half) > 1 else 0.0
    rows = [
        [
            f"{docs:,} docs, concurrency {concurrency}",
            run.calls,
            run.wall,
            baseline,
            sampler.peak,
            f"{peak_rss_mb():.0f} (before the run: {peak_before:.0f})",
            growth,
            folder_mb(folder),
        ]
    ]
    say(
        table(
            "(d) Memory (RSS of the process running the pipeline; the mock server runs apart)",
            [
                "run",
                "LLM calls",
                "wall s",
                "RSS before MB",
                "peak RSS MB",
                "ru_maxrss MB",
                "MB per 1,000 docs after warm-up",
                "disk MB",
            ],
            rows,
        )
    )
    say(
        f"Rerun of this finished {docs:,}-document run: {rerun.calls} LLM calls, "
        f"{rerun.wall:.1f} s.\n"
    )
    bench.results["memory"] = {"docs": docs, "peak_mb": sampler.peak, "rerun_calls": rerun.calls}


async def bench_memory_isolated(bench: Bench) -> None:
    """Run (d) in a fresh process, so that earlier benchmarks do not raise its peak RSS."""
    args = bench.args
    result = bench.scratch / "memory-result.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--only",
        "memory",
        "--no-header",
        "--memory-docs",
        str(args.memory_docs),
        "--memory-concurrency",
        str(args.memory_concurrency),
        "--result-json",
        str(result),
    ]
    if args.llm_cache:
        command.append("--llm-cache")
    if args.tracemalloc:
        command.append("--tracemalloc")
    process = await asyncio.create_subprocess_exec(*command)
    await process.wait()
    if result.exists():
        bench.results.update(json.loads(result.read_text()))


# (e) Rerun of a finished run.


def count_lines(path: Path) -> tuple[int, int]:
    """(lines, distinct ids) of a JSONL file."""
    if not path.exists():
        return 0, 0
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]
    return len(ids), len(set(ids))


async def cli_generate(
    server: ScenarioServer, corpus: Path, out: Path, state: Path, concurrency: int
) -> float:
    """`taskcraft generate` in a new process (cache on, as by default); its wall time."""
    command = [
        sys.executable,
        "-c",
        "from langgraph_taskcraft.cli import app; app()",
        "generate",
        str(corpus),
        "--out",
        str(out),
        "--data-dir",
        str(state),
        "--model",
        MODEL,
        "--base-url",
        server.base_url,
        "--concurrency",
        str(concurrency),
        "--set",
        "max_concurrency=16",
    ]
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "dummy")}
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    output, _ = await process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        say(f"  `taskcraft generate` failed ({process.returncode}):\n{output.decode()[-2000:]}")
    return wall


async def bench_rerun(bench: Bench) -> None:
    """(e) a finished run rerun: in process, as a new `taskcraft generate`, and into a new file."""
    args = bench.args
    server = bench.servers.get(0.0)
    await bench.warm_up(server)
    docs, concurrency = args.rerun_docs, 8
    say(f"(e) rerun: {docs} documents, LLM cache on (the `taskcraft generate` default) ...")
    corpus = bench.corpus(docs)
    folder = bench.scratch / "rerun"
    out = folder / "tasks.jsonl"
    rows = []
    first = await bench.run(
        server, corpus, folder, concurrency=concurrency, label="first run", cache=True, out=out
    )
    rows.append(["first run", first.calls, first.wall, first.summary.tasks, *count_lines(out)])
    again = await bench.run(
        server, corpus, folder, concurrency=concurrency, label="rerun", cache=True, out=out
    )
    rows.append(
        [
            "rerun, same command, in process",
            again.calls,
            again.wall,
            again.summary.tasks,
            *count_lines(out),
        ]
    )
    before = await server.chat_requests()
    wall = await cli_generate(server, corpus, out, folder / "state", concurrency)
    calls = await server.chat_requests() - before
    rows.append(
        [
            "rerun, same command, new `taskcraft generate` process (incl. start-up)",
            calls,
            wall,
            "",
            *count_lines(out),
        ]
    )
    fresh_out = folder / "fresh" / "tasks.jsonl"
    fresh = await bench.run(
        server,
        corpus,
        folder,
        concurrency=concurrency,
        label="new output, same LLM cache",
        cache=True,
        out=fresh_out,
    )
    rows.append(
        [
            "new output file, same data dir (answered by the LLM cache)",
            fresh.calls,
            fresh.wall,
            fresh.summary.tasks,
            *count_lines(fresh_out),
        ]
    )
    say(
        table(
            f"(e) Rerun of a finished run ({docs} documents)",
            ["run", "LLM calls", "wall s", "tasks written", "lines in output", "distinct ids"],
            rows,
        )
    )
    bench.results["rerun"] = {"calls": max(again.calls, calls), "cache_calls": fresh.calls}


# Main.


def summary_table(results: dict[str, Any]) -> str:
    """Targets of the issue against what was measured."""
    rows = []
    if "overhead" in results:
        value = results["overhead"]["ms_per_call"]
        cached = results["overhead"]["ms_per_call_cache"]
        rows.append(
            [
                "overhead",
                TARGETS["overhead"],
                f"{value:.1f} ms (LLM cache on: {cached:.1f} ms)",
                "yes" if max(value, cached) < 20 else "no",
            ]
        )
    if "throughput" in results:
        ratio = results["throughput"].get(64) or results["throughput"].get("64")
        if ratio is not None:
            rows.append(
                [
                    "throughput, 64 documents in flight",
                    TARGETS["throughput"],
                    f"{ratio:.0%}",
                    "yes" if ratio >= 0.9 else "no",
                ]
            )
    for key, where in (("calls_in_flight", ""), ("calls_in_flight_ray", ", Ray")):
        ratio = (results.get(key) or {}).get(64) or (results.get(key) or {}).get("64")
        if ratio is not None:
            rows.append(
                [
                    f"throughput, 64 LLM calls in flight{where}",
                    ">= 90 % of 64 / latency calls per second",
                    f"{ratio:.0%}",
                    "yes" if ratio >= 0.9 else "no",
                ]
            )
    if "memory" in results:
        memory = results["memory"]
        rows.append(
            [
                "memory",
                TARGETS["memory"],
                f"{memory['peak_mb']:.0f} MB for {memory['docs']:,} documents",
                "yes"
                if memory["peak_mb"] < 500 and memory["docs"] >= 10_000
                else ("yes (fewer docs)" if memory["peak_mb"] < 500 else "no"),
            ]
        )
    if "rerun" in results:
        calls = results["rerun"]["calls"]
        rows.append(
            [
                "rerun",
                TARGETS["rerun"],
                f"{calls} (new output with LLM cache: {results['rerun']['cache_calls']})",
                "yes" if calls == 0 else "no",
            ]
        )
    return table("Targets", ["benchmark", "target", "measured", "met"], rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def ints(text: str) -> list[int]:
        return [int(part) for part in text.split(",") if part.strip()]

    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_BENCHMARKS),
        help=f"comma-separated, from {', '.join(ALL_BENCHMARKS)} (or `all`)",
    )
    parser.add_argument("--overhead-docs", type=int, default=32)
    parser.add_argument(
        "--direct-calls", type=int, default=300, help="direct client calls per baseline in (a)"
    )
    parser.add_argument(
        "--concurrency", type=ints, default=[1, 8, 64], help="document concurrencies of (b)"
    )
    parser.add_argument(
        "--throughput-docs",
        type=ints,
        default=[8, 64, 256],
        help="documents per concurrency of (b), same order",
    )
    parser.add_argument("--latency-ms", type=float, default=200.0, help="latency per call in (b)")
    parser.add_argument(
        "--calls-in-flight",
        type=ints,
        default=[1, 8, 64],
        help="bounds on LLM calls in flight (`max_llm_calls`) of (b2); empty: skip (b2)",
    )
    parser.add_argument(
        "--calls-docs",
        type=ints,
        default=[4, 32, 256],
        help="documents per bound of (b2), same order",
    )
    parser.add_argument(
        "--docs-per-slot",
        type=float,
        default=2.0,
        help="documents in flight per LLM call slot in (b2) (keeps the slots busy)",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="also run the largest (b2) bound with the Ray executor (local Ray)",
    )
    parser.add_argument("--ray-workers", type=int, default=2, help="Ray worker processes")
    parser.add_argument("--tokens-docs", type=int, default=32)
    parser.add_argument("--memory-docs", type=int, default=10_000)
    parser.add_argument("--memory-concurrency", type=int, default=64)
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also trace the Python heap in (d) (slower; shows allocation sites)",
    )
    parser.add_argument("--rerun-docs", type=int, default=64)
    parser.add_argument(
        "--llm-cache",
        action="store_true",
        help="SQLite LLM cache on in (b), (c), (d) (always measured in (a), (e))",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="PREFIX",
        help="record each measured run with py-spy to PREFIX-<run>.txt and print "
        "where the event loop's time went",
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep corpora, outputs and state in this folder"
    )
    parser.add_argument("--no-header", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen = (
        ALL_BENCHMARKS
        if args.only == "all"
        else tuple(name.strip() for name in args.only.split(",") if name.strip())
    )
    unknown = set(chosen) - set(ALL_BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {ALL_BENCHMARKS}")
    if len(args.concurrency) != len(args.throughput_docs):
        parser.error("--concurrency and --throughput-docs need the same number of values")
    if len(args.calls_in_flight) != len(args.calls_docs):
        parser.error("--calls-in-flight and --calls-docs need the same number of values")
    args.chosen = [name for name in ALL_BENCHMARKS if name in chosen]
    return args


async def main_async(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Run the chosen benchmarks in one event loop (the clients' connection pools live on it)."""
    bench = Bench(args, scratch)
    runners = {
        "overhead": bench_overhead,
        "throughput": bench_throughput,
        "tokens": bench_tokens,
        "memory": bench_memory if args.chosen == ["memory"] else bench_memory_isolated,
        "rerun": bench_rerun,
    }
    ray_started = False
    if args.ray and "throughput" in args.chosen:
        import ray

        # Started here, so that Ray's own start-up is not part of a measured run.
        ray.init(
            num_cpus=os.cpu_count() or 2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        ray_started = True
    try:
        for name in args.chosen:
            await runners[name](bench)
    finally:
        bench.servers.close()
        if ray_started:
            import ray

            ray.shutdown()
    return bench.results


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    os.environ.setdefault("OPENAI_API_KEY", "dummy")  # the mock server ignores it
    if not args.no_header:
        say(machine_header())
        say(f"Benchmarks: {', '.join(args.chosen)}\n")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        scratch_context: Any = contextlib.nullcontext(str(args.keep))
    else:
        scratch_context = tempfile.TemporaryDirectory(prefix="taskcraft-bench-")
    with scratch_context as scratch:
        results = asyncio.run(main_async(args, Path(scratch)))
    if args.result_json:
        args.result_json.write_text(json.dumps(results))
    if not args.no_header and results:
        say(summary_table(results))


if __name__ == "__main__":
    main()
