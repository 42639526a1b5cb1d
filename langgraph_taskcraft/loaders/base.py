"""Shared pieces of the loaders: the error type, the settings and record assembly."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from langgraph_taskcraft.records import DocumentKind, DocumentRecord, ImageData, content_id

if TYPE_CHECKING:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from langgraph_taskcraft.context import Context

# Below this many letters the language guess is noise, so none is recorded.
_MIN_LANGUAGE_LETTERS = 40
# Language identification is as good on a sample as on a whole book, and much faster.
_LANGUAGE_SAMPLE_CHARS = 20_000
_IDENTIFIER_MAX_CHARS = 200


class LoadError(Exception):
    """A document that cannot be loaded, with a short error class and a one-line message.

    `error` is machine-readable (`pdf_encrypted`, `http_error`, ...); `message` names the
    source and says what is wrong, and is also `str(exc)`.
    """

    def __init__(self, error: str, detail: str, *, source: str | None = None) -> None:
        self.error = error
        self.detail = " ".join(detail.split())
        self.source = source
        self.message = f"{source}: {self.detail}" if source else self.detail
        super().__init__(self.message)

    def for_source(self, source: str) -> LoadError:
        """The same error naming `source` (helpers that see only bytes raise it without one)."""
        if self.source:
            return self
        named = LoadError(self.error, self.detail, source=source)
        named.__cause__ = self.__cause__
        return named


@dataclass(frozen=True)
class LoadSettings:
    """Limits applied while loading documents."""

    chunk_chars: int = 4000
    """Target characters per chunk; chunks are cut at paragraph, then line, then word breaks."""
    pdf_max_pages: int = 50
    """Pages read from one PDF (the rest are skipped and counted in the metadata)."""
    image_max_side: int = 1024
    """Images are downscaled so that their longer side is at most this many pixels."""
    image_max_pixels: int = 50_000_000
    """Images declaring more pixels are refused before decoding (decompression bombs)."""
    max_bytes: int = 50 * 2**20
    """Files and downloads larger than this are refused."""
    timeout: float = 20.0
    """Seconds allowed for one download, from connecting to the last byte."""

    @classmethod
    def from_context(cls, context: Context) -> LoadSettings:
        """Settings taken from a run's Context (chunk size, PDF pages, image side)."""
        return cls(
            chunk_chars=context.chunk_chars,
            pdf_max_pages=context.pdf_max_pages,
            image_max_side=context.image_max_side,
        )


DEFAULT_SETTINGS = LoadSettings()


def clean_text(text: str) -> str:
    """Normalize extracted text: NFC, no NULs or stray control characters, tidy blank lines."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    # Control characters (other than tab/newline) come from broken encodings and confuse
    # tokenizers; form feeds separate pages and are treated as paragraph breaks.
    text = text.replace("\f", "\n\n")
    text = re.sub(r"[\x00-\x08\x0b\x0e-\x1f\x7f]", "", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def short_identifier(text: str, max_chars: int = _IDENTIFIER_MAX_CHARS) -> str:
    """One-line identifier: whitespace collapsed, cut at a word boundary when too long."""
    line = " ".join(text.split())
    if len(line) <= max_chars:
        return line
    cut = line[:max_chars].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:-") + "…"


@lru_cache(maxsize=8)
def _splitter(chunk_chars: int) -> RecursiveCharacterTextSplitter:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    # No overlap: chunks feed fact extraction, where a repeated passage yields duplicate facts.
    return RecursiveCharacterTextSplitter(
        chunk_size=chunk_chars,
        chunk_overlap=0,
        separators=["\n\n", "\n", ". ", " ", ""],
        keep_separator="end",
    )


def split_chunks(text: str, chunk_chars: int) -> list[str]:
    """Split text into chunks of about `chunk_chars`, at paragraph boundaries where possible."""
    if not text:
        return []
    if len(text) <= chunk_chars:
        return [text]
    return [chunk.strip() for chunk in _splitter(chunk_chars).split_text(text) if chunk.strip()]


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of the text's language, or None when the text is too short to tell."""
    if sum(ch.isalpha() for ch in text[:_LANGUAGE_SAMPLE_CHARS]) < _MIN_LANGUAGE_LETTERS:
        return None
    import py3langid  # loads its model on import (~0.5 s), so only when first needed

    language, _score = py3langid.classify(text[:_LANGUAGE_SAMPLE_CHARS])
    return str(language)


def build_record(
    *,
    source: str,
    kind: DocumentKind,
    identifier: str,
    text: str,
    settings: LoadSettings,
    images: Sequence[tuple[ImageData, bytes]] = (),
    metadata: dict[str, Any] | None = None,
) -> DocumentRecord:
    """Assemble a DocumentRecord: chunks, language and a content id over text and image bytes.

    Raises `LoadError("empty_document")` when there is neither text nor an image.
    """
    text = clean_text(text)
    if not text and not images:
        raise LoadError("empty_document", "no text could be extracted", source=source)
    return DocumentRecord(
        id=content_id(text, *(encoded for _, encoded in images)),
        source=source,
        kind=kind,
        identifier=short_identifier(identifier) or source,
        chunks=split_chunks(text, settings.chunk_chars),
        images=[image for image, _ in images],
        language=detect_language(text) if kind != "image" else None,
        metadata={"chars": len(text), **(metadata or {})},
    )
