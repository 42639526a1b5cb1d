"""Plain text and Markdown: decoding, identifier detection, records."""

from __future__ import annotations

import codecs
import re

from langgraph_taskcraft.loaders.base import (
    DEFAULT_SETTINGS,
    LoadError,
    LoadSettings,
    build_record,
    short_identifier,
)
from langgraph_taskcraft.records import DocumentKind, DocumentRecord

_ATX_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(?P<title>.+?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(?P<body>.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_MATTER_TITLE = re.compile(r"^title:[ \t]*(?P<title>.+?)[ \t]*$", re.MULTILINE)
# A first line longer than this is a paragraph, not a title.
_TITLE_LINE_MAX_CHARS = 150


def decode_bytes(data: bytes, declared: str | None = None) -> str:
    """Decode text of unknown encoding: BOM, declared charset, UTF-8, then a detected one."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    candidates = [declared] if declared else []
    candidates.append("utf-8")
    for encoding in candidates:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    from charset_normalizer import from_bytes  # a trafilatura dependency

    best = from_bytes(data[:200_000]).best()
    return data.decode(best.encoding if best else "latin-1", errors="replace")


def _strip_front_matter(text: str) -> tuple[str, str | None]:
    """Remove a YAML front-matter block; return the rest and its `title:` if any."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return text, None
    title_match = _FRONT_MATTER_TITLE.search(match.group("body"))
    title = title_match.group("title").strip("\"' ") if title_match else None
    return text[match.end() :], title or None


def markdown_title(text: str) -> str | None:
    """The first Markdown heading (ATX `# Title` or setext `Title` + `===`), if any."""
    previous = ""
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            previous = ""
            continue
        if in_fence:
            continue
        heading = _ATX_HEADING.match(line)
        if heading:
            return heading.group("title").strip()
        if previous.strip() and _SETEXT_UNDERLINE.match(line) and not previous.startswith(" " * 4):
            return previous.strip()
        previous = line
    return None


def first_line_title(text: str) -> str | None:
    """The first non-empty line when it is short enough to be a title."""
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line if len(line) <= _TITLE_LINE_MAX_CHARS else None
    return None


def text_identifier(text: str, fallback: str | None) -> tuple[str, str]:
    """Identifier of a text and where it came from (`front_matter`, `heading`, ...)."""
    body, front_title = _strip_front_matter(text)
    if front_title:
        return front_title, "front_matter"
    heading = markdown_title(body)
    if heading:
        return heading, "heading"
    line = first_line_title(body)
    if line:
        return line, "first_line"
    if fallback:
        return fallback, "file_name"
    # A raw text whose first line is a long paragraph: its opening words name it best.
    return short_identifier(body, 80), "first_words"


def text_document(
    data: bytes,
    *,
    source: str,
    settings: LoadSettings,
    kind: DocumentKind = "text",
    fallback_identifier: str | None = None,
    charset: str | None = None,
) -> DocumentRecord:
    """Record for the bytes of a text or Markdown document."""
    if b"\x00" in data[:8192] and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise LoadError("unsupported_type", "binary content, not text", source=source)
    text = decode_bytes(data, charset)
    return _text_record(
        text, source=source, settings=settings, kind=kind, fallback=fallback_identifier
    )


def _text_record(
    text: str,
    *,
    source: str,
    settings: LoadSettings,
    kind: DocumentKind,
    fallback: str | None,
    identifier: str | None = None,
) -> DocumentRecord:
    identifier_source = "given"
    if identifier is None:
        identifier, identifier_source = text_identifier(text, fallback)
    if kind == "markdown":
        text, _ = _strip_front_matter(text)
    return build_record(
        source=source,
        kind=kind,
        identifier=identifier,
        text=text,
        settings=settings,
        metadata={"identifier_source": identifier_source},
    )


def load_text(
    text: str,
    settings: LoadSettings = DEFAULT_SETTINGS,
    *,
    identifier: str | None = None,
    source: str = "text:",
) -> DocumentRecord:
    """Record for a raw text; its identifier is `identifier`, else its heading or first line.

    Raises `LoadError("empty_document")` for a blank text.
    """
    return _text_record(
        text, source=source, settings=settings, kind="text", fallback=None, identifier=identifier
    )
