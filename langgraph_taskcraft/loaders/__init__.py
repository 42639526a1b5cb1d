"""Document loading: files, folders, globs and URLs into DocumentRecords.

Text, Markdown, HTML (boilerplate removed), PDF and images are supported; every failure is a
`LoadError` with a short `error` class and a one-line message naming the source. All functions
here are blocking: async code calls them through `asyncio.to_thread`.
"""

from langgraph_taskcraft.loaders.base import (
    DEFAULT_SETTINGS,
    LoadError,
    LoadSettings,
    build_record,
    detect_language,
    split_chunks,
)
from langgraph_taskcraft.loaders.fetch import fetch_url, is_url
from langgraph_taskcraft.loaders.html import html_to_text
from langgraph_taskcraft.loaders.image import encode_image
from langgraph_taskcraft.loaders.pdf import PdfText, pdf_pages, read_pdf
from langgraph_taskcraft.loaders.sources import (
    EXTENSION_KINDS,
    expand_sources,
    kind_from_content_type,
    kind_from_extension,
    load_document,
)
from langgraph_taskcraft.loaders.text import decode_bytes, load_text

__all__ = [
    "DEFAULT_SETTINGS",
    "EXTENSION_KINDS",
    "LoadError",
    "LoadSettings",
    "PdfText",
    "build_record",
    "decode_bytes",
    "detect_language",
    "encode_image",
    "expand_sources",
    "fetch_url",
    "html_to_text",
    "is_url",
    "kind_from_content_type",
    "kind_from_extension",
    "load_document",
    "load_text",
    "pdf_pages",
    "read_pdf",
    "split_chunks",
]
