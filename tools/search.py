"""The `search` tool: BM25 over a local corpus, or Tavily web search. Both are named `search`.

Results are returned to the model as readable lines, `[id] title — snippet`, and to the caller
as a ToolMessage artifact (a list of dicts) for tracing and tests.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Literal

from langchain_core.tools import ToolException
from langchain_core.utils import secret_from_env
from pydantic import BaseModel, Field, SecretStr

from langgraph_taskcraft.tools.base import AgentTool
from langgraph_taskcraft.tools.corpus import (
    Corpus,
    SearchHit,
    SearchUnavailable,
    make_snippet,
    query_terms,
)

SNIPPET_CHARS = 400


class SearchInput(BaseModel):
    """Arguments of the `search` tool."""

    query: str = Field(
        description="What to look for: specific keywords such as names, titles, places, dates "
        "or a short question. Prefer distinctive words over generic ones."
    )


def format_results(query: str, hits: list[SearchHit]) -> str:
    """One line per hit, `[id] title — snippet`, or a clear `no results` line."""
    if not hits:
        return f"No results for {query!r}. Try other keywords (names, titles, distinctive words)."
    return "\n".join(
        f"[{hit.doc_id}] {' '.join(hit.title.split())} — {hit.snippet}" for hit in hits
    )


class SearchTool(AgentTool):
    """What every `search` backend shares: a query in, result lines out, the hits as artifact."""

    name: str = "search"
    args_schema: type[BaseModel] = SearchInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"


class LocalSearchTool(SearchTool):
    """Keyword (BM25) search over a local `Corpus`, one result per document."""

    description: str = (
        "Search the document collection with keyword (BM25) matching. Returns the best "
        "matching documents, one per line as `[doc_id] title — snippet`. Use specific keywords "
        "(names, titles, dates, distinctive terms); rephrase and search again if nothing fits. "
        "To read a whole document, call `open_page` with its doc_id."
    )

    corpus: Corpus = Field(description="The documents to search.")
    max_results: int = Field(default=5, ge=1, description="Results returned by one call.")

    def _run(self, query: str, **_: Any) -> tuple[str, list[dict[str, Any]]]:
        """Search the corpus; the artifact lists the hits with their scores."""
        hits = self.corpus.search(query, k=self.max_results)
        return format_results(query, hits), [asdict(hit) for hit in hits]


class TavilySearchTool(SearchTool):
    """Web search through the Tavily API (`tavily-python`).

    The API key comes from `api_key` or the `TAVILY_API_KEY` environment variable, read when the
    tool is built or called, never at import; a missing key fails at call time with
    `SearchUnavailable`, not at construction.
    """

    description: str = (
        "Search the web. Returns the best matching pages, one per line as "
        "`[url] title — snippet`. Use specific keywords (names, titles, dates, distinctive "
        "terms); rephrase and search again if nothing fits. To read a whole page, call "
        "`open_page` with its url."
    )

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("TAVILY_API_KEY", default=None),
        description="Tavily API key; defaults to the TAVILY_API_KEY environment variable.",
    )
    max_results: int = Field(default=5, ge=1, le=20)
    search_depth: Literal["basic", "advanced"] = "basic"
    include_domains: list[str] = Field(default_factory=list)
    exclude_domains: list[str] = Field(default_factory=list)
    timeout: float = 30.0

    def _key(self) -> str:
        key = self.api_key.get_secret_value() if self.api_key else os.environ.get("TAVILY_API_KEY")
        if not key:
            raise SearchUnavailable(
                "Tavily web search needs an API key: set TAVILY_API_KEY (or pass api_key=), or "
                "use the local search backend (search_backend='local')."
            )
        return key

    def _request(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_results": self.max_results,
            "search_depth": self.search_depth,
            "timeout": self.timeout,
        }
        if self.include_domains:
            options["include_domains"] = self.include_domains
        if self.exclude_domains:
            options["exclude_domains"] = self.exclude_domains
        return options

    def _run(self, query: str, **_: Any) -> tuple[str, list[dict[str, Any]]]:
        """Ask Tavily (blocking client)."""
        from tavily import TavilyClient

        client = TavilyClient(api_key=self._key())
        return self._format(query, self._call(lambda: client.search(query, **self._request())))

    async def _arun(self, query: str, **_: Any) -> tuple[str, list[dict[str, Any]]]:
        """Ask Tavily (async client)."""
        from tavily import AsyncTavilyClient

        client = AsyncTavilyClient(api_key=self._key())
        try:
            response = await client.search(query, **self._request())
        except Exception as exc:  # noqa: BLE001 - classified below
            raise _classify(exc) from exc
        return self._format(query, response)

    @staticmethod
    def _call(search: Any) -> dict[str, Any]:
        try:
            return search()
        except Exception as exc:  # noqa: BLE001 - classified below
            raise _classify(exc) from exc

    def _format(self, query: str, response: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        terms = query_terms(query)
        hits = [
            SearchHit(
                doc_id=str(result.get("url") or ""),
                title=" ".join(str(result.get("title") or result.get("url") or "").split()),
                snippet=make_snippet(str(result.get("content") or ""), terms, SNIPPET_CHARS),
                score=float(result.get("score") or 0.0),
                source=str(result.get("url") or ""),
            )
            for result in response.get("results", [])
            if result.get("url")
        ]
        return format_results(query, hits), [asdict(hit) for hit in hits]


def _classify(exc: Exception) -> Exception:
    """Key problems stop the run with a clear error; anything else goes back to the agent."""
    from tavily import InvalidAPIKeyError, MissingAPIKeyError

    if isinstance(exc, InvalidAPIKeyError | MissingAPIKeyError):
        return SearchUnavailable(f"Tavily rejected the API key: {exc}")
    return ToolException(f"Web search failed ({type(exc).__name__}: {exc}). Try again later.")
