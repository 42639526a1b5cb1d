"""The `open_page` tool: read a corpus document or a web page one window at a time."""

from __future__ import annotations

from typing import Any

from langchain_core.tools import ToolException
from pydantic import BaseModel, Field, PrivateAttr

from langgraph_taskcraft.loaders import LoadError, LoadSettings, is_url, load_document
from langgraph_taskcraft.tools.base import AgentTool
from langgraph_taskcraft.tools.corpus import Corpus
from langgraph_taskcraft.tools.pages import BoundedCache, render_page, split_pages


class OpenPageInput(BaseModel):
    """Arguments of the `open_page` tool."""

    target: str = Field(
        description="What to open: a doc_id exactly as shown in search results, or a full URL "
        "starting with http:// or https://."
    )
    page: int = Field(
        default=1,
        description="Page to read, starting at 1. The reply says how many pages there are.",
    )


class OpenPageTool(AgentTool):
    """Reads a corpus document (by id) or a web page (by URL), `page_chars` characters a page.

    Problems (unknown id, dead URL, page out of range) come back as a message for the agent.
    """

    name: str = "open_page"
    description: str = (
        "Open a document to read its text, one page at a time. `target` is a doc_id from "
        "search results or a URL. The reply starts with `[title] page i of n`; call again with "
        "the next page number to read further."
    )
    args_schema: type[BaseModel] = OpenPageInput

    corpus: Corpus | None = Field(
        default=None, description="Corpus whose document ids can be opened; None: URLs only."
    )
    page_chars: int = Field(default=4000, ge=200, description="Characters per page.")
    load_settings: LoadSettings = Field(
        default_factory=LoadSettings, description="Download limits (size, timeout)."
    )
    _downloads: BoundedCache[tuple[str, list[str]]] = PrivateAttr(default_factory=BoundedCache)

    def _run(self, target: str, page: int = 1, **_: Any) -> str:
        """The requested page with its `[title] page i of n` header."""
        title, pages = self.pages_of(target.strip())
        return render_page(title, pages, page)

    def pages_of(self, target: str) -> tuple[str, list[str]]:
        """Title and pages of a corpus document or URL; ToolException when it cannot be opened."""
        if self.corpus is not None:
            document = self.corpus.resolve(target)
            if document is not None:
                return document.title, split_pages(document.text, self.page_chars)
        if is_url(target):
            return self._downloads.get_or_make(target, lambda: self._download(target))
        if self.corpus is None:
            raise ToolException(
                f"Cannot open {target!r}: give a full URL starting with http:// or https://."
            )
        raise ToolException(
            f"Unknown document {target!r}: give a doc_id exactly as shown in search results "
            "(the part in square brackets), or a full URL starting with http:// or https://."
        )

    def _download(self, url: str) -> tuple[str, list[str]]:
        try:
            record = load_document(url, self.load_settings)
        except LoadError as exc:
            raise ToolException(f"Could not open {url}: {exc.detail}") from exc
        except Exception as exc:  # noqa: BLE001 - whatever failed, the agent gets a message
            raise ToolException(f"Could not open {url}: {type(exc).__name__}: {exc}") from exc
        return record.identifier, split_pages(record.text, self.page_chars)
