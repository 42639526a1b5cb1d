"""A batch run's files: the append-only JSONL outputs, the ledger of items, the run info.

`OutputFiles` names the files beside the tasks JSONL; `Ledger` (SQLite) remembers which work
items are done and the commit in progress, so a killed run can be rolled back and resumed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.planning import URL_PREFIXES


class OutputFiles:
    """The run's outputs beside the tasks JSONL.

    Append-only: `<stem>.jsonl` (accepted tasks), `.rejected.jsonl`, `.errors.jsonl` and
    `.documents.jsonl` (one line per finished or failed attempt at a work item, with its
    usage). Rewritten: `.run.json` (the run's configuration) and `.failed.jsonl` (the items
    still failed after the last run).
    """

    def __init__(self, tasks_path: Path, *, prepare: bool = True) -> None:
        self.tasks = Path(tasks_path)
        stem = self.tasks.name.removesuffix(".jsonl")
        self.rejected = self.tasks.with_name(f"{stem}.rejected.jsonl")
        self.errors = self.tasks.with_name(f"{stem}.errors.jsonl")
        self.documents = self.tasks.with_name(f"{stem}.documents.jsonl")
        self.failed = self.tasks.with_name(f"{stem}.failed.jsonl")
        self.run_info = self.tasks.with_name(f"{stem}.run.json")
        if prepare:
            self.prepare()

    @property
    def appended(self) -> tuple[Path, ...]:
        """The append-only files, in the order a commit writes them."""
        return (self.tasks, self.rejected, self.errors, self.documents)

    def prepare(self) -> None:
        """Create the folder and the files; cut a line left half-written by a kill."""
        self.tasks.parent.mkdir(parents=True, exist_ok=True)
        for path in self.appended:
            path.touch(exist_ok=True)
            _drop_torn_tail(path)

    def sizes(self) -> dict[str, int]:
        """Byte size of each append-only file, by file name."""
        return {path.name: path.stat().st_size if path.exists() else 0 for path in self.appended}

    def truncate(self, sizes: Mapping[str, int]) -> None:
        """Cut the append-only files back to `sizes` (undo a commit a kill interrupted)."""
        for path in self.appended:
            size = sizes.get(path.name)
            if size is not None and path.exists() and path.stat().st_size > size:
                with path.open("r+b") as handle:
                    handle.truncate(size)
                    handle.flush()
                    os.fsync(handle.fileno())

    def written_task_ids(self) -> set[str]:
        """Ids of the tasks already in the output (a rerun writes none of them again)."""
        return {record["id"] for record in read_jsonl(self.tasks) if "id" in record}

    def append(self, path: Path, records: Sequence[BaseModel | dict[str, Any]]) -> None:
        """Append records as JSON lines and fsync, so a kill cannot lose or tear them."""
        if not records:
            return
        lines = "".join(
            (r.model_dump_json() if isinstance(r, BaseModel) else json.dumps(r)) + "\n"
            for r in records
        )
        with path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left half-written by a kill (everything before it is intact)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
    data = path.read_bytes()
    path.write_bytes(data[: data.rfind(b"\n") + 1])


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def read_jsonl(
    path: Path, on_skipped: Callable[[], None] | None = None
) -> Iterator[dict[str, Any]]:
    """JSON objects of a JSONL file (none if it does not exist; unreadable lines skipped).

    `on_skipped` is called for each non-blank line that is not a JSON object.
    """
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # e.g. a line torn by a kill, cut at the next run's start
                record = None
            if isinstance(record, dict):
                yield record
            elif on_skipped is not None:
                on_skipped()


class Ledger:
    """Which work items of a run are done, failed or were started, and the pending commit.

    Statuses: `started` (running or killed: resumes its thread), `interrupted` (the graph
    raised: resumes its thread), `failed` (finished with provider errors: retried in a fresh
    thread), `done`. Thread-safe (SQLite, one connection behind a lock).
    """

    def __init__(self, path: Path, run_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Survives a killed process (not a power cut) without an fsync per update.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS items (run TEXT, key TEXT, status TEXT, attempt INTEGER,"
            " tasks INTEGER, rejected INTEGER, error TEXT, updated REAL, PRIMARY KEY (run, key))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pending_commits (run TEXT PRIMARY KEY, key TEXT,"
            " sizes TEXT)"
        )

    def _put_item(
        self, key: str, status: str, attempt: int, tasks: int, rejected: int, error: str
    ) -> None:
        """Write an item's row (the caller holds the lock)."""
        self._db.execute(
            "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self.run_id, key, status, attempt, tasks, rejected, error, time.time()),
        )

    def get(self, key: str) -> tuple[str, int] | None:
        """(status, attempt) of an item, or None if it never started."""
        with self._lock:
            row = self._db.execute(
                "SELECT status, attempt FROM items WHERE run = ? AND key = ?", (self.run_id, key)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def rows(self) -> dict[str, tuple[str, int]]:
        """(status, attempt) of every item of the run, by key."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, status, attempt FROM items WHERE run = ?", (self.run_id,)
            ).fetchall()
        return {key: (status, attempt) for key, status, attempt in rows}

    def set(
        self,
        key: str,
        status: str,
        attempt: int,
        *,
        tasks: int = 0,
        rejected: int = 0,
        error: str = "",
    ) -> None:
        """Record an item's status."""
        with self._lock:
            self._put_item(key, status, attempt, tasks, rejected, error)

    def begin_commit(self, key: str, sizes: Mapping[str, int]) -> None:
        """Remember the output sizes before an item's lines are appended."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pending_commits VALUES (?, ?, ?)",
                (self.run_id, key, json.dumps(dict(sizes))),
            )

    def finish_commit(
        self,
        key: str,
        status: str,
        attempt: int,
        *,
        tasks: int = 0,
        rejected: int = 0,
        error: str = "",
    ) -> None:
        """Record the item's status and clear the pending commit, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._put_item(key, status, attempt, tasks, rejected, error)
                self._db.execute("DELETE FROM pending_commits WHERE run = ?", (self.run_id,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def pending_commit(self) -> tuple[str, dict[str, int]] | None:
        """(key, output sizes) of a commit a kill interrupted, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT key, sizes FROM pending_commits WHERE run = ?", (self.run_id,)
            ).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def clear_pending_commit(self) -> None:
        """Forget the pending commit (after the outputs were cut back)."""
        with self._lock:
            self._db.execute("DELETE FROM pending_commits WHERE run = ?", (self.run_id,))

    def unfinished(self) -> list[dict[str, Any]]:
        """Items not done: `{key, status, attempt, error, updated}`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, status, attempt, error, updated FROM items"
                " WHERE run = ? AND status != 'done' ORDER BY updated",
                (self.run_id,),
            ).fetchall()
        return [
            {"key": key, "status": status, "attempt": attempt, "error": error, "updated": updated}
            for key, status, attempt, error, updated in rows
        ]

    def start_over(self) -> None:
        """Run every item of the run again, each in a fresh thread (its outputs are gone)."""
        with self._lock:
            self._db.execute(
                "UPDATE items SET status = 'failed', error = 'outputs removed: run again'"
                " WHERE run = ?",
                (self.run_id,),
            )
            self._db.execute("DELETE FROM pending_commits WHERE run = ?", (self.run_id,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


_SECRET_NAME = re.compile(r"(api_?key|secret|password|credential)", re.I)


def public_config(context: Context) -> dict[str, Any]:
    """The run configuration as a JSON-ready dict, without secrets.

    Fields named like keys or passwords are masked; URLs lose their user info and query.
    """
    values: dict[str, Any] = {}
    for item in dataclasses.fields(context):
        value = getattr(context, item.name)
        if _SECRET_NAME.search(item.name) and value:
            value = "***"
        elif isinstance(value, str) and value.startswith(URL_PREFIXES):
            parts = urlsplit(value)
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            value = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        values[item.name] = value
    return json.loads(json.dumps(values, default=str))


def write_run_info(
    files: OutputFiles,
    context: Context,
    inputs: Sequence[str],
    *,
    dedup_threshold: float | None,
    executor: str,
) -> dict[str, Any]:
    """Write `<stem>.run.json`: package version, configuration, models, inputs, start time.

    A rerun with a different configuration keeps the earlier ones under `earlier_configs`, so
    an output made by several configurations says so.
    """
    from langgraph_taskcraft import __version__
    from langgraph_taskcraft.accounting import models_by_role_of

    config = public_config(context)
    earlier: list[dict[str, Any]] = []
    if files.run_info.exists():
        with contextlib.suppress(ValueError, OSError):
            previous = json.loads(files.run_info.read_text(encoding="utf-8"))
            earlier = list(previous.get("earlier_configs") or [])
            if previous.get("config") not in (None, config):
                earlier.append({"started": previous.get("started"), "config": previous["config"]})
    info = {
        "package": "langgraph-taskcraft",
        "version": __version__,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": list(inputs),
        "config": config,
        "models": models_by_role_of(config),
        # Nothing in the pipeline itself is drawn at random: sampling is the providers'.
        "seed": context.seed,
        "dedup_threshold": dedup_threshold,
        "executor": executor,
        "earlier_configs": earlier[-20:],
    }
    _write_atomic(files.run_info, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return info


def read_run_info(tasks_path: Path) -> dict[str, Any]:
    """The `<stem>.run.json` beside a tasks file ({} when there is none)."""
    path = OutputFiles(tasks_path, prepare=False).run_info
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_failed(files: OutputFiles, ledger: Ledger, keys: set[str]) -> list[dict[str, Any]]:
    """Rewrite `<stem>.failed.jsonl` with the run's unfinished items (removed when none)."""
    failed = [row for row in ledger.unfinished() if row["key"] in keys]
    for row in failed:
        if row["status"] == "started":
            row["status"] = "interrupted"
            row["error"] = row["error"] or "the run stopped while this item was in progress"
    if failed:
        _write_atomic(files.failed, "".join(json.dumps(row) + "\n" for row in failed))
    elif files.failed.exists():
        files.failed.unlink()
    return failed
