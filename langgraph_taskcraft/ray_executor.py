"""Run a batch's documents on Ray (a local Ray by default, or a cluster at `address`).

`RayExecutor` plugs into `run_batch` like `LocalExecutor`: the driver still plans the work,
writes every output file and keeps the ledger, so resume, no-duplicate and dedup guarantees do
not depend on the executor. Only the graph runs remotely.

Items go to a pool of Ray actors (`ItemWorker`, one per CPU by default). Each actor is an async
Ray actor: it keeps one event loop, one compiled graph on the SQLite checkpointer in
`<data_dir>/checkpoints.sqlite`, and one set of LLM clients for its whole life, and runs up to
`items_per_worker` items at once. Documents are I/O-bound (waiting for LLM replies), so a few
processes each with many items in flight use the cluster far better than one process per
document, and connection pools are not rebuilt per document. Each item is one actor task
(`ItemWorker.run`): a streaming generator that yields the graph's progress events, then the
`ItemResult`. A worker that dies (out of memory, a crashed node) is restarted by Ray and its
items are retried there; they resume from their last checkpoint. Ray and the workers start with
the first item that has to run, so a rerun of a finished run starts neither.

Workers are set up like the driver: same working directory (relative input paths resolve the
same way), the driver's own source folders on `sys.path` (model specs such as
`tests.scenario:MODEL` import), and the driver's LLM cache (`set_llm_cache`) when one is set:
a `RequestCache` travels as its path, and all workers share its SQLite file.
Budgets that a process enforces alone (`requests_per_minute`, `tokens_per_minute`,
`max_llm_calls`) are split evenly among the workers, so that together they keep to the
configured totals.
Provider API keys must be in the workers' environment: for a local Ray, the driver's
environment when Ray starts; otherwise pass them with `runtime_env={"env_vars": {...}}` or set
them on the cluster.

On a multi-node cluster `data_dir` must be a folder every node reaches at the same path (a
shared filesystem), as the checkpoints and the LLM cache are SQLite files in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import sysconfig
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.planning import WorkItem
from langgraph_taskcraft.runner import ItemResult, checkpointed_graph, run_item

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 60_000
"""How long a worker waits for another process's write to the shared SQLite files."""

RAY_MISSING = (
    "the Ray executor needs Ray: pip install 'ray>=2.40' (or the package's `ray` extra: "
    "pip install 'langgraph-taskcraft[ray]')"
)


@dataclasses.dataclass(frozen=True)
class WorkerSetup:
    """What a worker process needs to behave like the driver."""

    working_dir: str
    python_paths: tuple[str, ...] = ()
    llm_cache: Any = None  # the driver's (picklable) LangChain cache: a RequestCache is its path


def _installed_locations() -> list[Path]:
    """Folders of the interpreter's standard library and installed packages."""
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    return [Path(p).resolve() for p in {sysconfig.get_path(n) for n in names} if p]


def _source_paths() -> tuple[str, ...]:
    """The driver's `sys.path` folders that hold its own code (not the installed packages)."""
    installed = _installed_locations()
    paths = []
    for entry in sys.path:
        path = Path(entry or os.getcwd()).resolve()
        if not path.is_dir() or "site-packages" in path.parts or "dist-packages" in path.parts:
            continue
        if any(path == place or place in path.parents for place in installed):
            continue
        paths.append(str(path))
    return tuple(dict.fromkeys(paths))


def worker_context(context: Context, workers: int) -> Context:
    """The context workers run with: absolute paths, the run's budgets split among workers.

    Rate limiters and the bound on LLM calls hold per process, so each of `workers` gets its
    share, and together they keep to the configured totals.
    """
    workers = max(1, workers)
    changes: dict[str, Any] = {"data_dir": str(Path(context.data_dir).resolve())}
    if context.corpus_path and "://" not in context.corpus_path:
        changes["corpus_path"] = str(Path(context.corpus_path).resolve())
    if context.requests_per_minute > 0:
        changes["requests_per_minute"] = context.requests_per_minute / workers
    if context.tokens_per_minute > 0:
        changes["tokens_per_minute"] = context.tokens_per_minute / workers
    if context.max_llm_calls > 0:
        changes["max_llm_calls"] = max(1, context.max_llm_calls // workers)
    return dataclasses.replace(context, **changes)


class ItemWorker:
    """A Ray actor that runs work items' graph threads (see the module docstring)."""

    def __init__(self, context: Context, setup: WorkerSetup) -> None:
        self.context = context
        with contextlib.suppress(OSError):  # a node without the driver's folder keeps its own
            os.chdir(setup.working_dir)
        sys.path.extend(p for p in setup.python_paths if p not in sys.path)
        if setup.llm_cache is not None:
            from langchain_core.globals import set_llm_cache

            # A RequestCache arrives as its path and opens the shared file on first use.
            set_llm_cache(setup.llm_cache)
        self._stack = contextlib.AsyncExitStack()
        self._graph: Any = None
        self._opening: asyncio.Lock | None = None

    async def _compiled_graph(self) -> Any:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._graph is None:
                graph = await self._stack.enter_async_context(checkpointed_graph(self.context))
                # Every worker writes to the same SQLite file: wait for the others' writes for
                # up to a minute, not SQLite's default 5 s, which a busy machine exceeds.
                await graph.checkpointer.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                self._graph = graph
        return self._graph

    async def run(
        self, item: WorkItem, config: dict[str, Any], with_events: bool
    ) -> AsyncIterator[tuple[str, Any]]:
        """Run or resume one item: yields `("event", chunk)`s, then `("result", ItemResult)`."""
        stream: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def on_event(_key: str, chunk: dict[str, Any]) -> None:
            stream.put_nowait(("event", chunk))

        async def run() -> None:
            stream.put_nowait(
                ("result", await self._run(item, config, on_event if with_events else None))
            )

        task = asyncio.ensure_future(run())
        try:
            while True:
                kind, value = await stream.get()
                yield kind, value
                if kind == "result":
                    return
        finally:
            task.cancel()

    async def run_quietly(self, item: WorkItem, config: dict[str, Any]) -> ItemResult:
        """Run or resume one item without progress events."""
        return await self._run(item, config, None)

    async def _run(
        self,
        item: WorkItem,
        config: dict[str, Any],
        on_event: Callable[[str, dict[str, Any]], None] | None,
    ) -> ItemResult:
        try:
            graph = await self._compiled_graph()
            return await run_item(graph, item, config, self.context, on_event)
        except Exception as exc:  # e.g. the data folder is not reachable from this node
            message = f"worker failed: {type(exc).__name__}: {exc}"
            return ItemResult(key=item.key, status="failed", message=message)

    async def close(self) -> None:
        """Close the checkpointer's connection."""
        await self._stack.aclose()
        self._graph = None


class RayExecutor:
    """Runs a batch's items on Ray; outputs and the ledger stay with the driver (`run_batch`).

    Args:
        context: the run's configuration (shipped to every worker).
        address: Ray cluster to attach to (`auto`, `ray://host:10001`, `host:6379`); None starts
            a local Ray, unless this process already has one.
        num_cpus: CPUs of the local Ray that is started (default: all).
        workers: worker actors (default: one per CPU of the cluster).
        items_per_worker: items one worker runs at once (they wait on LLM replies).
        runtime_env: Ray runtime environment of the workers, e.g. `{"env_vars": {...}}`.
        init_options: more keyword arguments for `ray.init` (e.g. `_temp_dir`,
            `object_store_memory`).
    """

    def __init__(
        self,
        context: Context,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        workers: int | None = None,
        items_per_worker: int = 16,
        runtime_env: Mapping[str, Any] | None = None,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.context = context
        self.address = address
        self.num_cpus = num_cpus
        self.workers = workers
        self.items_per_worker = max(1, items_per_worker)
        self.runtime_env = dict(runtime_env or {})
        self.init_options = dict(init_options or {})
        self._started_ray = False
        self._starting: asyncio.Lock | None = None
        self._actors: list[Any] = []
        self._in_flight: list[int] = []

    async def __aenter__(self) -> RayExecutor:
        try:
            import ray  # noqa: F401 - fail at once, not at the first document
        except ImportError as exc:
            raise RuntimeError(RAY_MISSING) from exc
        self._starting = asyncio.Lock()
        return self

    async def _workers(self) -> list[Any]:
        """The worker actors, started with the first item to run.

        A rerun with nothing left to do starts neither Ray nor a worker. A Ray that cannot start
        (a wrong address) raises, which stops the run: it is not the item's failure.
        """
        if self._starting is None:
            raise RuntimeError("RayExecutor.run called outside `async with executor`")
        async with self._starting:
            if not self._actors:
                import ray

                if not ray.is_initialized():
                    options: dict[str, Any] = {
                        "address": self.address,
                        "ignore_reinit_error": True,
                        "include_dashboard": False,
                        "log_to_driver": False,
                        "configure_logging": False,
                        **self.init_options,
                    }
                    if self.address is None and self.num_cpus is not None:
                        options["num_cpus"] = self.num_cpus
                    # In this thread: Ray installs its SIGTERM handler only from the main
                    # thread, and every item is waiting for the workers anyway.
                    ray.init(**options)
                    self._started_ray = True
                await self._start_workers(ray)
        return self._actors

    async def _start_workers(self, ray: Any) -> None:
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        count = self.workers or max(1, int(cpus))
        from langchain_core.globals import get_llm_cache

        cache = get_llm_cache()  # the driver's, shipped to the workers
        if cache is not None:
            try:
                ray.cloudpickle.dumps(cache)
            except Exception as exc:  # e.g. a cache holding a client connection
                logger.warning("the Ray workers run without the LLM cache %r: %s", cache, exc)
                cache = None
        setup = WorkerSetup(
            working_dir=os.getcwd(),
            python_paths=_source_paths(),
            llm_cache=cache,
        )
        actor_class = ray.remote(ItemWorker).options(
            num_cpus=min(1.0, cpus / count),
            max_concurrency=self.items_per_worker,
            max_restarts=2,
            max_task_retries=2,
            runtime_env=self.runtime_env or None,
        )
        context = worker_context(self.context, count)
        self._in_flight = [0] * count
        self._actors = [actor_class.remote(context, setup) for _ in range(count)]

    async def __aexit__(self, *exc_info: object) -> None:
        self._starting = None
        actors, self._actors = self._actors, []
        if not actors and not self._started_ray:
            return
        import ray

        with contextlib.suppress(Exception):
            closing = [actor.close.remote() for actor in actors]
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), timeout=10)
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if self._started_ray:
            self._started_ray = False
            await asyncio.to_thread(ray.shutdown)

    async def run(
        self,
        item: WorkItem,
        config: dict[str, Any],
        on_event: Callable[[str, dict[str, Any]], None] | None,
    ) -> ItemResult:
        """Run or resume one item on the least busy worker; failures come back as a result."""
        actors = await self._workers()
        index = min(range(len(actors)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        result: ItemResult | None = None
        try:
            stream = (
                actors[index]
                .run.options(num_returns="streaming")
                .remote(item, config, on_event is not None)
            )
            async for reference in stream:
                kind, value = await reference
                if kind == "event" and on_event is not None:
                    on_event(item.key, value)
                elif kind == "result":
                    result = value
            if result is None:
                # Ray retried the stream after losing its worker, and the new attempt (resumed
                # from the checkpoint, so with fewer events) ended at positions already read.
                # The thread is finished or nearly: read its result.
                result = await actors[index].run_quietly.remote(item, config)
        except Exception as exc:  # a lost worker or node: the item is retried on the next run
            message = f"Ray worker failed: {type(exc).__name__}: {exc}"
            return ItemResult(key=item.key, status="failed", message=message[:2000])
        finally:
            self._in_flight[index] -= 1
        return result
