"""PDF files: page texts (pypdf), a title, and clear errors for broken or locked files."""

from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from langgraph_taskcraft.loaders.base import DEFAULT_SETTINGS, LoadError, LoadSettings, build_record
from langgraph_taskcraft.records import DocumentRecord

# Plain extraction yielding fewer characters per page than this is retried in layout mode,
# which reads some PDFs (unusual text operators, odd font encodings) that plain mode misses.
_LAYOUT_RETRY_CHARS_PER_PAGE = 20
# A PDF with fewer letters and digits than this in total has no usable text (scans, broken
# files that open leniently with a stray date or page number).
_MIN_DOCUMENT_CHARS = 20
_TITLE_MAX_CHARS = 200
# The title must be set in a font clearly larger than the body text.
_TITLE_FONT_RATIO = 1.15
_BOILERPLATE_LINE = re.compile(
    r"^(proceedings of|arxiv:|doi:|https?://|www\.|issn|isbn|vol\.|volume \d|page \d|"
    r"preprint|copyright|published|received|accepted|journal of)|©|\(c\) ?\d{4}",
    re.IGNORECASE,
)
_CATALOG_OBJECT = re.compile(rb"(\d+)\s+(\d+)\s+obj\s*<<\s*/Type\s*/Catalog\b")
_SENTENCE_BREAK = re.compile(r"[.!?] +[A-Z]")
_FILE_NAME_TITLE = re.compile(r"\.(docx?|pdf|tex|dvi|ps|pptx?|odt|rtf|indd|qxd|xlsx?)$", re.I)
_GENERIC_TITLES = {"untitled", "title", "no title", "document", "pdf", "slide 1", "presentation"}


class _DropFontToolsHint(logging.Filter):
    """Drop pypdf's hint to install fontTools: it dumps a whole font dictionary per font and
    page, and extraction gives the same text without fontTools."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("fontTools is required")


logging.getLogger("pypdf._cmap").addFilter(_DropFontToolsHint())


@dataclass
class PdfText:
    """Text extracted from a PDF, page by page, with how it was obtained."""

    pages: list[str]
    title: str | None
    title_source: str | None
    page_count: int
    extraction_mode: str = "plain"
    failed_pages: list[int] = field(default_factory=list)
    repaired: bool = False
    """The file was truncated; the pages before the cut were recovered."""


def _letters_and_digits(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


def _is_truncated(data: bytes) -> bool:
    return b"%%EOF" not in data[-2048:]


def _with_repaired_trailer(data: bytes) -> bytes | None:
    """A truncated PDF with a trailer appended: pypdf then rebuilds the cross-reference table
    from the objects that survived, which recovers the pages before the cut."""
    catalog = _CATALOG_OBJECT.search(data)
    if catalog is None:
        return None
    root = b"%s %s R" % (catalog.group(1), catalog.group(2))
    return data + b"\ntrailer\n<< /Root " + root + b" >>\nstartxref\n0\n%%EOF\n"


def _open_pdf(data: bytes) -> tuple[Any, bool]:
    """Open a PDF leniently (repairing a truncated one if possible); decrypt it with the empty
    password when it is encrypted. Returns the reader and whether the file was repaired."""
    from pypdf import PasswordType, PdfReader
    from pypdf.errors import DependencyError, EmptyFileError

    if not data:
        raise LoadError("pdf_empty", "the PDF file is empty (0 bytes)")
    if b"%PDF-" not in data[:1024]:
        raise LoadError("pdf_malformed", "not a PDF file (no %PDF header)")
    repaired = False
    try:
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
            encrypted = reader.is_encrypted
        except EmptyFileError:
            raise
        except Exception:
            patched = _with_repaired_trailer(data) if _is_truncated(data) else None
            if patched is None:
                raise
            reader = PdfReader(io.BytesIO(patched), strict=False)
            encrypted, repaired = reader.is_encrypted, True
    except EmptyFileError as exc:
        raise LoadError("pdf_empty", "the PDF file is empty") from exc
    except Exception as exc:  # pypdf raises many types (PdfReadError, ValueError, KeyError...)
        state = "is truncated (no %%EOF marker) and" if _is_truncated(data) else ""
        raise LoadError(
            "pdf_malformed", f"the PDF {state} cannot be parsed ({_describe(exc)})"
        ) from exc
    if encrypted:
        # Many PDFs are encrypted only to restrict printing/copying and open with "".
        try:
            result = reader.decrypt("")
        except DependencyError as exc:
            raise LoadError(
                "pdf_encrypted", f"the PDF is encrypted and cannot be decrypted: {exc}"
            ) from exc
        except Exception as exc:
            raise LoadError(
                "pdf_encrypted", f"the PDF is encrypted and cannot be decrypted ({_describe(exc)})"
            ) from exc
        if result == PasswordType.NOT_DECRYPTED:
            raise LoadError("pdf_encrypted", "the PDF is password-protected")
    return reader, repaired


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _metadata_title(reader: Any) -> str | None:
    try:
        raw = reader.metadata.title if reader.metadata else None
    except Exception:  # broken /Info dictionaries are common and never fatal
        return None
    if not raw:
        return None
    title = " ".join(str(raw).split())
    title = re.sub(r"^Microsoft (Word|PowerPoint|Excel) - ", "", title)
    if _FILE_NAME_TITLE.search(title) or title.lower() in _GENERIC_TITLES:
        return None
    if sum(ch.isalpha() for ch in title) < 3:
        return None
    return title[:_TITLE_MAX_CHARS]


def _largest_font_title(segments: list[tuple[str, float, float]]) -> str | None:
    """The lines set in the largest font on the page, when that font stands out from the body.

    `segments` are (text, font size, baseline y) in content-stream order.
    """
    sized = [segment for segment in segments if segment[1] > 0 and segment[0].strip()]
    lettered = [size for text, size, _ in sized if sum(ch.isalpha() for ch in text) >= 3]
    if not lettered:
        return None
    # Body size: the size most characters are set in.
    weight: dict[float, int] = {}
    for text, size, _ in sized:
        weight[round(size, 1)] = weight.get(round(size, 1), 0) + len(text)
    body_size = max(weight, key=lambda size: weight[size])
    largest = max(lettered)
    if largest < body_size * _TITLE_FONT_RATIO:
        return None
    # Group segments into lines by baseline; a title line has text in the largest font. Other
    # sizes on such a line (small caps, as in "LONGEVAL") belong to the title too.
    lines: list[list[tuple[str, float]]] = []
    last_y: float | None = None
    for text, size, y in sized:
        if last_y is None or abs(y - last_y) > 1.0:
            lines.append([])
        lines[-1].append((text, size))
        last_y = y
    title_lines: list[str] = []
    for line in lines:
        is_title_line = any(
            size >= largest * 0.95 and any(ch.isalpha() for ch in text) for text, size in line
        )
        if is_title_line:
            title_lines.append("".join(text for text, _ in line))
        elif title_lines:
            break
    title = " ".join(" ".join(title_lines).split())
    if sum(ch.isalpha() for ch in title) < 3:
        return None
    return title if len(title) <= _TITLE_MAX_CHARS else None


def _first_substantial_line(text: str) -> str | None:
    """The first line of page 1 that could be a title (not a header, not running prose)."""
    for line in text.splitlines():
        line = " ".join(line.split())
        if sum(ch.isalpha() for ch in line) < 4 or _BOILERPLATE_LINE.search(line):
            continue
        if len(line) > 150 or _SENTENCE_BREAK.search(line) or line.endswith((",", "-")):
            return None  # the page opens with body text: no title to find
        return line
    return None


def _extract_page(page: Any, mode: str) -> str:
    if mode == "layout":
        return str(page.extract_text(extraction_mode="layout", layout_mode_space_vertically=False))
    return str(page.extract_text())


def read_pdf(data: bytes, settings: LoadSettings = DEFAULT_SETTINGS) -> PdfText:
    """Extract the text of the first `settings.pdf_max_pages` pages of a PDF and its title.

    Raises LoadError: `pdf_empty` (0 bytes), `pdf_malformed` (not a PDF, unparseable, no
    readable page), `pdf_encrypted` (needs a password). Pages that fail on their own are
    left empty and listed in `failed_pages`.
    """
    reader, repaired = _open_pdf(data)
    the_pdf = "the truncated PDF" if repaired else "the PDF"
    try:
        page_count = len(reader.pages)
    except Exception as exc:
        raise LoadError(
            "pdf_malformed", f"{the_pdf} has an unreadable page tree ({_describe(exc)})"
        ) from exc
    if page_count == 0:
        raise LoadError("pdf_malformed", f"{the_pdf} has no readable pages")
    pages_to_read = min(page_count, max(1, settings.pdf_max_pages))

    segments: list[tuple[str, float, float]] = []

    def record_font_size(text: str, cm: Any, tm: Any, _font: Any, size: Any) -> None:
        try:
            scale = math.hypot(tm[2], tm[3]) * math.hypot(cm[2], cm[3])
            baseline = float(tm[5]) * float(cm[3]) + float(cm[5])
            segments.append((text, float(size) * scale, baseline))
        except (TypeError, ValueError, IndexError):
            pass

    texts: list[str] = []
    failed: list[int] = []
    for index in range(pages_to_read):
        try:
            page = reader.pages[index]
            if index == 0:
                texts.append(str(page.extract_text(visitor_text=record_font_size)))
            else:
                texts.append(_extract_page(page, "plain"))
        except Exception:  # a broken page must not lose the others
            texts.append("")
            failed.append(index + 1)
    if len(failed) == pages_to_read:
        raise LoadError(
            "pdf_malformed", f"none of the {pages_to_read} pages of {the_pdf} could be read"
        )

    mode = "plain"
    if _letters_and_digits("".join(texts)) < _LAYOUT_RETRY_CHARS_PER_PAGE * pages_to_read:
        layout: list[str] = []
        for index in range(pages_to_read):
            try:
                layout.append(_extract_page(reader.pages[index], "layout"))
            except Exception:
                layout.append("")
        if _letters_and_digits("".join(layout)) > _letters_and_digits("".join(texts)):
            texts, mode = layout, "layout"

    title, title_source = _metadata_title(reader), "metadata"
    if not title:
        title, title_source = _largest_font_title(segments), "largest_font"
    if not title:
        title, title_source = _first_substantial_line(texts[0]), "first_line"
    return PdfText(
        pages=texts,
        title=title,
        title_source=title_source if title else None,
        page_count=page_count,
        extraction_mode=mode,
        failed_pages=failed,
        repaired=repaired,
    )


def pdf_pages(
    data: bytes, settings: LoadSettings = DEFAULT_SETTINGS
) -> tuple[list[str], str | None]:
    """Texts of the first `settings.pdf_max_pages` pages of a PDF and its title (or None).

    Raises LoadError (`pdf_empty`, `pdf_malformed`, `pdf_encrypted`) as `read_pdf` does.
    """
    extracted = read_pdf(data, settings)
    return extracted.pages, extracted.title


def pdf_document(
    data: bytes,
    *,
    source: str,
    settings: LoadSettings,
    fallback_identifier: str | None = None,
) -> DocumentRecord:
    """Record for the bytes of a PDF: pages joined by blank lines, title as identifier."""
    extracted = read_pdf(data, settings)
    text = "\n\n".join(page.strip() for page in extracted.pages if page.strip())
    found = _letters_and_digits(text)
    if found < _MIN_DOCUMENT_CHARS:
        detail = "no text" if found == 0 else f"almost no text ({found} letters and digits)"
        raise LoadError(
            "empty_document",
            f"{detail} could be extracted from {len(extracted.pages)} page(s) "
            "(a scanned or broken PDF? OCR is not supported)",
            source=source,
        )
    return build_record(
        source=source,
        kind="pdf",
        identifier=extracted.title or fallback_identifier or source,
        text=text,
        settings=settings,
        metadata={
            "title": extracted.title,
            "identifier_source": extracted.title_source or "file_name",
            "pages": extracted.page_count,
            "pages_read": len(extracted.pages),
            "extraction_mode": extracted.extraction_mode,
            **({"failed_pages": extracted.failed_pages} if extracted.failed_pages else {}),
            **({"repaired": True} if extracted.repaired else {}),
        },
    )
