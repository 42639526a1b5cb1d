"""LangChain tools of the verifier agent: search, open_page, read_pdf, inspect_image.

Each tool is a `BaseTool` that works on its own in any agent; `build_tools` assembles the set a
run's `Context` asks for. Building tools does no I/O and reads no API key: the corpus is loaded
and indexed on the first search, and the image model is resolved on the first image question.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from langchain_core.tools import BaseTool

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.loaders import LoadSettings
from langgraph_taskcraft.records import DocumentRecord
from langgraph_taskcraft.tools.corpus import Corpus, CorpusDocument, SearchHit
from langgraph_taskcraft.tools.inspect_image import InspectImageTool
from langgraph_taskcraft.tools.open_page import OpenPageTool
from langgraph_taskcraft.tools.read_pdf import ReadPdfTool
from langgraph_taskcraft.tools.search import LocalSearchTool, SearchUnavailable, TavilySearchTool

__all__ = [
    "Corpus",
    "CorpusDocument",
    "InspectImageTool",
    "LocalSearchTool",
    "OpenPageTool",
    "ReadPdfTool",
    "SearchHit",
    "SearchUnavailable",
    "TavilySearchTool",
    "build_tools",
    "corpus_for",
]


def corpus_for(context: Context, documents: Sequence[DocumentRecord] = ()) -> Corpus:
    """The local search corpus of a run: `context.corpus_path` if set, else `documents`.

    A corpus path's index is persisted under `<data_dir>/indexes/`; the run's own documents are
    indexed in memory only (they are few and change with every run).
    """
    if context.corpus_path:
        return Corpus.from_path(
            Path(context.corpus_path).expanduser(),
            settings=LoadSettings.from_context(context),
            data_dir=Path(context.data_dir).expanduser(),
        )
    return Corpus.from_records(documents)


def build_tools(context: Context, documents: Sequence[DocumentRecord] = ()) -> list[BaseTool]:
    """The verifier agent's tools for a run: search, open_page, read_pdf, inspect_image.

    `search` is BM25 over the local corpus (see `corpus_for`) or Tavily web search when
    `context.search_backend == "tavily"`; `open_page` opens ids of that same corpus and URLs;
    `inspect_image` asks the `agent` role's model, resolved at its first call.
    """
    from langgraph_taskcraft.llm import chat_model

    settings = LoadSettings.from_context(context)
    corpus: Corpus | None = None
    search: BaseTool
    if context.search_backend == "tavily":
        search = TavilySearchTool(max_results=context.search_results)
    else:
        corpus = corpus_for(context, documents)
        search = LocalSearchTool(corpus=corpus, max_results=context.search_results)
    return [
        search,
        OpenPageTool(corpus=corpus, page_chars=context.page_chars, load_settings=settings),
        ReadPdfTool(page_chars=context.page_chars, load_settings=settings),
        InspectImageTool(
            model_factory=partial(chat_model, context, "agent"), load_settings=settings
        ),
    ]
