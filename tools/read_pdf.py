"""The `read_pdf` tool: the text of one page of a PDF file or PDF URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.tools import ToolException
from pydantic import BaseModel, Field, PrivateAttr

from langgraph_taskcraft.loaders import LoadError, LoadSettings, fetch_url, is_url, pdf_pages
from langgraph_taskcraft.tools.base import AgentTool
from langgraph_taskcraft.tools.pages import BoundedCache


class ReadPdfInput(BaseModel):
    """Arguments of the `read_pdf` tool."""

    source: str = Field(description="The PDF to read: a file path or a URL.")
    page: int = Field(default=1, description="PDF page number, starting at 1.")


class ReadPdfTool(AgentTool):
    """Reads one page of a PDF (path or URL) with the loaders' PDF text extraction.

    Encrypted, broken or missing PDFs and out-of-range pages come back as a message for the
    agent. A page longer than `page_chars` is cut, saying how much was left out.
    """

    name: str = "read_pdf"
    description: str = (
        "Read the text of one page of a PDF document, given its file path or URL. The reply "
        "starts with `[title] page i of n`; call again with another page number to read more."
    )
    args_schema: type[BaseModel] = ReadPdfInput

    page_chars: int = Field(default=4000, ge=200, description="Characters returned per page.")
    load_settings: LoadSettings = Field(
        default_factory=LoadSettings, description="PDF page limit and download limits."
    )
    _documents: BoundedCache[tuple[str, list[str]]] = PrivateAttr(default_factory=BoundedCache)

    def _run(self, source: str, page: int = 1, **_: Any) -> str:
        """The page's text with its `[title] page i of n` header."""
        source = source.strip()
        title, pages = self._documents.get_or_make(source, lambda: self._read(source))
        total = len(pages)
        if page < 1 or page > total:
            limit = self.load_settings.pdf_max_pages
            beyond = f" (only the first {limit} pages are read)" if total >= limit else ""
            return f"Page {page} does not exist: [{title}] has {total} readable pages{beyond}."
        text = pages[page - 1].strip() or "(no text could be extracted from this page)"
        if len(text) > self.page_chars:
            left_out = len(text) - self.page_chars
            text = f"{text[: self.page_chars]}\n[… {left_out} more characters on this page cut]"
        return f"[{title}] page {page} of {total}\n\n{text}"

    def _read(self, source: str) -> tuple[str, list[str]]:
        try:
            data = self._fetch(source)
            texts, title = pdf_pages(data, self.load_settings)
        except ToolException:
            raise
        except LoadError as exc:
            raise ToolException(f"Could not read the PDF {source}: {exc.detail}") from exc
        except OSError as exc:
            raise ToolException(f"Could not read the PDF {source}: {exc.strerror or exc}") from exc
        except Exception as exc:  # noqa: BLE001 - whatever failed, the agent gets a message
            raise ToolException(
                f"Could not read the PDF {source}: {type(exc).__name__}: {exc}"
            ) from exc
        return title or _name_of(source), texts

    def _fetch(self, source: str) -> bytes:
        if is_url(source):
            data, _content_type = fetch_url(source, self.load_settings)
            return data
        path = Path(source).expanduser()
        if not path.is_file():
            raise ToolException(f"No PDF file at {source!r}.")
        size = path.stat().st_size
        if size > self.load_settings.max_bytes:
            raise ToolException(
                f"The PDF {source} is too large ({size:,} bytes, limit "
                f"{self.load_settings.max_bytes:,})."
            )
        return path.read_bytes()


def _name_of(source: str) -> str:
    """A readable fallback title: the file name of a path or URL."""
    return source.rstrip("/").rsplit("/", 1)[-1] or source
