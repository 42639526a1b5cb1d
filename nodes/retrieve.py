"""Retrieve: load the input sources and texts into documents (the first stage of the graph)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from langgraph.runtime import Runtime

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.loaders import (
    LoadError,
    LoadSettings,
    expand_sources,
    load_document,
    load_text,
)
from langgraph_taskcraft.records import DocumentError, DocumentRecord
from langgraph_taskcraft.state import TaskcraftState

logger = logging.getLogger(__name__)

MAX_PARALLEL_LOADS = 4
"""Documents loaded at the same time (each in a worker thread: parsing is CPU-bound)."""

STAGE = "retrieve"


def _error(source: str, exc: BaseException) -> DocumentError:
    if isinstance(exc, LoadError):
        return DocumentError(source=source, stage=STAGE, error=exc.error, message=str(exc))
    # A loader bug or an unforeseen library error must cost one document, not the run.
    detail = " ".join(str(exc).split()) or "no details"
    return DocumentError(
        source=source,
        stage=STAGE,
        error=type(exc).__name__,
        message=f"{source}: unexpected {type(exc).__name__} while loading: {detail}",
    )


async def _load_source(
    source: str, settings: LoadSettings, limit: asyncio.Semaphore
) -> DocumentRecord | DocumentError:
    async with limit:
        started = time.perf_counter()
        try:
            document = await asyncio.to_thread(load_document, source, settings)
        except Exception as exc:
            error = _error(source, exc)
            logger.warning("retrieve: %s", error.message)
            return error
        logger.debug("retrieve: loaded %s in %.2f s", source, time.perf_counter() - started)
        return document


async def _load_raw_text(
    index: int, text: str, settings: LoadSettings, limit: asyncio.Semaphore
) -> DocumentRecord | DocumentError:
    source = f"text:{index}"
    async with limit:
        try:
            # Chunking and language detection are CPU work: keep them off the event loop.
            return await asyncio.to_thread(load_text, text, settings, source=source)
        except Exception as exc:
            return _error(source, exc)


async def retrieve(state: TaskcraftState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Load `state.sources` (files, folders, globs, URLs) and `state.texts` into documents.

    Each failing source becomes a DocumentError (stage `retrieve`) and the others go on;
    documents with the same content id are kept once, in input order.
    """
    context = runtime.context if runtime.context is not None else Context()
    settings = LoadSettings.from_context(context)
    sources = await asyncio.to_thread(expand_sources, state.sources)
    limit = asyncio.Semaphore(MAX_PARALLEL_LOADS)
    results = await asyncio.gather(
        *(_load_source(source, settings, limit) for source in sources),
        *(_load_raw_text(index, text, settings, limit) for index, text in enumerate(state.texts)),
    )

    documents: list[DocumentRecord] = []
    errors: list[DocumentError] = []
    seen: dict[str, str] = {}
    for result in results:
        if isinstance(result, DocumentError):
            errors.append(result)
        elif result.id in seen:
            logger.info("retrieve: %s duplicates %s; kept once", result.source, seen[result.id])
        else:
            seen[result.id] = result.source
            documents.append(result)
    logger.info(
        "retrieve: %d document(s) loaded, %d error(s), from %d source(s) and %d text(s)",
        len(documents),
        len(errors),
        len(sources),
        len(state.texts),
    )
    return {"documents": documents, "errors": errors}
