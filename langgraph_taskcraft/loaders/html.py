"""Web pages: main text without boilerplate (trafilatura) and the page title."""

from __future__ import annotations

import html as html_lib
import re

from langgraph_taskcraft.loaders.base import LoadSettings, build_record
from langgraph_taskcraft.loaders.text import decode_bytes
from langgraph_taskcraft.records import DocumentRecord

_TITLE_TAG = re.compile(r"<title[^>]*>(?P<title>.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_DOCUMENT_ELEMENT = re.compile(r"<(html|body|head)[\s>]", re.IGNORECASE)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*(?P<charset>[\w-]+)""", re.I)


def _title_tag(html: str) -> str | None:
    match = _TITLE_TAG.search(html[:500_000])
    if not match:
        return None
    title = " ".join(html_lib.unescape(re.sub(r"<[^>]+>", "", match.group("title"))).split())
    return title or None


def _tidy_lines(text: str) -> str:
    # Source indentation survives inside paragraphs; collapse it, keep one block per line.
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def html_to_text(html: str, url: str | None = None) -> tuple[str, str | None]:
    """Main text of a web page (navigation, footers, ads removed) and its title, if any.

    Uses trafilatura's boilerplate removal; pages too short or too unusual for it fall back
    to all visible text. The title is trafilatura's (which drops site-name suffixes), else
    the `<title>` element.
    """
    import trafilatura  # slow to import (lxml, justext, htmldate)

    text = ""
    title: str | None = None
    if html.strip() and not _DOCUMENT_ELEMENT.search(html[:10_000]):
        # trafilatura's parser rejects bare fragments; give them a document around them.
        html = f"<html><body>{html}</body></html>"
    if html.strip():
        document = trafilatura.bare_extraction(
            html,
            url=url,
            output_format="python",
            with_metadata=True,
            include_comments=False,
            include_tables=True,
        )
        if document is not None and not isinstance(document, dict):
            text = document.text or ""
            title = document.title or None
        if not text.strip():
            text = trafilatura.html2txt(html)
    title = " ".join(title.split()) if title else _title_tag(html)
    return _tidy_lines(text), title or None


def html_charset(data: bytes) -> str | None:
    """Charset declared in a page's `<meta>` element, if any."""
    match = _META_CHARSET.search(data[:4096])
    return match.group("charset").decode("ascii") if match else None


def html_document(
    data: bytes,
    *,
    source: str,
    settings: LoadSettings,
    url: str | None = None,
    fallback_identifier: str | None = None,
    charset: str | None = None,
) -> DocumentRecord:
    """Record for the bytes of an HTML page; identifier = title, else URL or file name."""
    page = decode_bytes(data, charset or html_charset(data))
    text, title = html_to_text(page, url=url)
    return build_record(
        source=source,
        kind="html",
        identifier=title or url or fallback_identifier or source,
        text=text,
        settings=settings,
        metadata={
            "title": title,
            "identifier_source": "title" if title else ("url" if url else "file_name"),
            **({"url": url} if url else {}),
        },
    )
