"""The LLM reply cache: SQLite, keyed by what is sent to the provider, shared between processes.

`RequestCache` is a LangChain `BaseCache` on the standard library's `sqlite3`:

- one table `taskcraft_llm_replies` (other tables in the file, such as the `full_llm_cache` of
  LangChain-community's `SQLiteCache`, are left alone), one row per request: the SHA-256 of
  (canonical prompt, model settings) as the key, the model settings (`llm_string`) and the
  generations serialised with `langchain_core.load.dumps`;
- WAL journal and a busy timeout, every write one `INSERT OR REPLACE` statement: several
  processes (Ray workers) read and write the same file at once without losing a reply;
- the async methods run the SQLite work on one thread of the cache's own, never on the event
  loop (the `langgraph dev` server rejects blocking calls there);
- a file that cannot be used (corrupted, not a database, unwritable) is reported once and the
  run goes on without the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import Serializable, dumps, loads
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk
from pydantic import BaseModel

logger = logging.getLogger(__name__)

# `loads` is marked beta; reading our own replies with it is what LangChain's caches do.
warnings.filterwarnings("ignore", message="The function `loads` is in beta", module=__name__)

TABLE = "taskcraft_llm_replies"
"""The cache's table (its own name: a file may also hold LangChain's `full_llm_cache`)."""

BUSY_TIMEOUT_MS = 60_000
"""How long a write waits for another process's write (SQLite's default is 5 s)."""

_NOT_SENT_FIELDS = ("id", "usage_metadata", "response_metadata")
"""Message fields LangChain serialises into a cache key that are never sent to a provider."""

_REPLY_CLASSES: list[type[Serializable]] = [
    ChatGeneration,
    ChatGenerationChunk,
    Generation,
    GenerationChunk,
    AIMessage,
    AIMessageChunk,
]
"""What a cached reply may contain (`loads` revives nothing else)."""

_inherited_connections: list[sqlite3.Connection] = []
"""Connections a forked process got from its parent: kept open, never used."""

_UNUSABLE_FILE_ERRORS = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CANTOPEN"})
"""SQLite errors after which the file is given up (others, e.g. a busy file, skip one call)."""


def canonical_prompt(prompt: str) -> str:
    """A chat prompt's cache key reduced to what the provider receives.

    LangChain keys its cache on the serialised messages, including the usage metadata of AI
    messages in the history, which it rewrites on a cache hit (`total_cost: 0`): without this,
    an agent's second turn never hits the cache on a rerun.
    """
    try:
        messages = json.loads(prompt)
    except ValueError:
        return prompt
    if not isinstance(messages, list):
        return prompt
    for message in messages:
        fields = message.get("kwargs") if isinstance(message, dict) else None
        if isinstance(fields, dict):
            for name in _NOT_SENT_FIELDS:
                fields.pop(name, None)
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def request_key(prompt: str, llm_string: str) -> bytes:
    """The row key of a request: SHA-256 of its canonical prompt and model settings."""
    digest = hashlib.sha256(canonical_prompt(prompt).encode())
    # A JSON prompt never holds a raw NUL, so the pair is encoded unambiguously.
    digest.update(b"\0")
    digest.update(llm_string.encode())
    return digest.digest()


def _storable(generation: Generation) -> Generation:
    """The generation with pydantic values of its message's `additional_kwargs` as dicts.

    OpenAI's structured output (`json_schema`) puts the parsed schema object there, which
    `dumps` cannot serialise; its parser accepts the dict (`schema(**parsed)`) on a cache hit.
    """
    message = getattr(generation, "message", None)
    extra = getattr(message, "additional_kwargs", None) or {}
    if message is None or not any(isinstance(value, BaseModel) for value in extra.values()):
        return generation
    plain = {
        name: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        for name, value in extra.items()
    }
    return generation.model_copy(
        update={"message": message.model_copy(update={"additional_kwargs": plain})}
    )


class RequestCache(BaseCache):
    """LLM replies in the SQLite file at `path`, keyed by what is sent to the provider.

    Opens the file on first use and pickles as its path, so it can be shipped to worker
    processes (e.g. Ray) and shared through the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(Path(path).resolve())
        self._connection: sqlite3.Connection | None = None
        self._pid = 0  # the process that opened the connection (a forked child reopens)
        self._lock = threading.Lock()
        self._disabled = False
        self._warned: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (type(self), (self.path,))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    # -- the database ------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: each statement is its own transaction, so a write takes the write lock at
        # once (waiting up to the busy timeout) instead of upgrading a read lock, which SQLite
        # refuses without waiting when another process writes.
        connection = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # WAL: readers never wait for a writer, a commit appends to the log. NORMAL
            # synchronous skips the fsync per commit: a power cut may lose the last replies,
            # never the file's consistency, and a lost reply is only asked again.
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                " key BLOB PRIMARY KEY,"  # request_key(prompt, llm_string)
                " llm_string TEXT NOT NULL,"
                " generations TEXT NOT NULL,"  # langchain_core.load.dumps of the list
                " stored_at REAL NOT NULL"  # Unix time, to prune old replies by hand
                ") WITHOUT ROWID"
            )
        except BaseException:
            connection.close()
            raise
        return connection

    @contextlib.contextmanager
    def _database(self, action: str) -> Iterator[sqlite3.Connection | None]:
        """The open connection, held alone; None if the cache is off or cannot open now.

        SQLite and file errors, opening included, are logged once per kind and never reach the
        LLM call.
        """
        if self._disabled:
            yield None
            return
        with self._lock:
            connection = None
            try:
                if self._connection is not None and self._pid != os.getpid():
                    # A connection must not cross a fork: a child opens its own and never
                    # closes the parent's (that could disturb the parent's locks).
                    _inherited_connections.append(self._connection)
                    self._connection = None
                if self._connection is None:
                    self._connection, self._pid = self._open(), os.getpid()
                connection = self._connection
            except (sqlite3.Error, OSError) as exc:
                self._failed(action, exc)
            if connection is None:
                yield None
                return
            try:
                yield connection
            except (sqlite3.Error, OSError) as exc:
                self._failed(action, exc)

    def _failed(self, action: str, exc: sqlite3.Error | OSError) -> None:
        code = getattr(exc, "sqlite_errorname", "")
        if isinstance(exc, OSError) or code in _UNUSABLE_FILE_ERRORS:
            self._disabled = True
            if self._connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._connection.close()
                self._connection = None
            self._warn_once(
                "unusable",
                "LLM cache %s cannot be used (%s: %s); the run goes on without it",
                self.path,
                type(exc).__name__,
                exc,
            )
        else:  # e.g. still locked after the busy timeout: only this reply goes uncached
            self._warn_once(
                f"{action}:{code}",
                "LLM cache %s: %s failed (%s: %s); going on",
                self.path,
                action,
                type(exc).__name__,
                exc,
            )

    def _warn_once(self, kind: str, message: str, *args: Any) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message, *args)

    # -- BaseCache ---------------------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Cached generations for the prompt and model settings, or None."""
        key = request_key(prompt, llm_string)
        row = None
        with self._database("lookup") as connection:
            if connection is not None:
                row = connection.execute(
                    f"SELECT generations FROM {TABLE} WHERE key = ?", (key,)
                ).fetchone()
        if row is None:
            return None
        try:
            generations = loads(row[0], allowed_objects=_REPLY_CLASSES)
        except Exception as exc:  # written by another version of LangChain: ask again
            self._warn_once("unreadable", "LLM cache: unreadable reply ignored (%s)", exc)
            return None
        return generations if isinstance(generations, list) else None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store the generations of a prompt and model settings (never fails the call)."""
        key = request_key(prompt, llm_string)
        try:
            serialised = dumps([_storable(generation) for generation in return_val])
        except (TypeError, ValueError) as exc:
            self._warn_once("serialise", "LLM cache: reply not stored (%s)", exc)
            return
        with self._database("update") as connection:
            if connection is not None:
                connection.execute(
                    f"INSERT OR REPLACE INTO {TABLE} (key, llm_string, generations, stored_at)"
                    " VALUES (?, ?, ?, ?)",
                    (key, llm_string, serialised, time.time()),
                )

    def clear(self, **kwargs: Any) -> None:
        """Delete every cached reply."""
        with self._database("clear") as connection:
            if connection is not None:
                connection.execute(f"DELETE FROM {TABLE}")

    # The async methods hand the SQLite work to the cache's own thread: the event loop never
    # blocks on the file, and one thread keeps the connection busy without lock contention.

    def _run_off_loop(self, function: Any, *args: Any) -> asyncio.Future[Any]:
        # No lock here: it would be taken on the event loop. Two loops racing to create the
        # executor only leave one idle thread.
        if self._executor is None or self._executor_pid != os.getpid():
            # A forked child has the parent's executor but not its thread.
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="llm-cache")
            self._executor_pid = os.getpid()
        return asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Async `lookup`, run off the event loop."""
        if self._disabled:
            return None
        return await self._run_off_loop(self.lookup, prompt, llm_string)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Async `update`, run off the event loop."""
        if self._disabled:
            return
        await self._run_off_loop(self.update, prompt, llm_string, return_val)

    async def aclear(self, **kwargs: Any) -> None:
        """Async `clear`, run off the event loop."""
        await self._run_off_loop(self.clear)


@contextlib.contextmanager
def use_llm_cache(data_dir: str | Path | None) -> Iterator[None]:
    """Cache LLM replies in `<data_dir>/llm_cache.sqlite` (None: no cache) for the block.

    Sets LangChain's global cache and restores the previous one afterwards, so an identical
    rerun costs no LLM call and `--no-cache` really sends every request.
    """
    from langchain_core.globals import get_llm_cache, set_llm_cache

    previous = get_llm_cache()
    if data_dir is None:
        set_llm_cache(None)
    else:
        set_llm_cache(RequestCache(Path(data_dir) / "llm_cache.sqlite"))
    try:
        yield
    finally:
        set_llm_cache(previous)
