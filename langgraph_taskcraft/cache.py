"""The LLM reply cache: LangChain's SQLite cache keyed by what is sent to the provider."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.caches import BaseCache

logger = logging.getLogger(__name__)

_NOT_SENT_FIELDS = ("id", "usage_metadata", "response_metadata")
"""Message fields LangChain serialises into a cache key that are never sent to a provider."""


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


class RequestCache(BaseCache):
    """LangChain's `SQLiteCache` at `path`, keyed by what is sent to the provider.

    Opens the database on first use and pickles as its path, so it can be shipped to worker
    processes (e.g. Ray) and shared through the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(Path(path).resolve())
        self._sqlite: Any = None
        self._opening = threading.Lock()
        # Two identical requests in flight both miss, then both store: one writer at a time.
        self._writing = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (type(self), (self.path,))

    def _cache(self) -> Any:
        with self._opening:
            if self._sqlite is None:
                from langchain_community.cache import SQLiteCache

                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._sqlite = SQLiteCache(database_path=self.path)
        return self._sqlite

    def lookup(self, prompt: str, llm_string: str) -> Any:
        """Cached generations for the prompt and model settings, or None."""
        return self._cache().lookup(canonical_prompt(prompt), llm_string)

    def update(self, prompt: str, llm_string: str, return_val: Any) -> None:
        """Store the generations of a prompt and model settings (never fails the call)."""
        from sqlalchemy.exc import SQLAlchemyError

        cache = self._cache()
        try:
            with self._writing:
                cache.update(canonical_prompt(prompt), llm_string, return_val)
        except SQLAlchemyError as exc:
            # Another process stored the same reply first, or the file is busy: the reply was
            # received all the same, only its copy in the cache is missing.
            logger.warning("LLM cache: reply not stored (%s)", type(exc).__name__)

    def clear(self, **kwargs: Any) -> None:
        """Delete every cached reply."""
        self._cache().clear(**kwargs)


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
