"""Sources to documents: expanding folders and globs, and loading one file or URL by type."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from langgraph_taskcraft.loaders.base import DEFAULT_SETTINGS, LoadError, LoadSettings
from langgraph_taskcraft.loaders.fetch import fetch_url, is_url
from langgraph_taskcraft.loaders.html import html_document
from langgraph_taskcraft.loaders.image import image_document
from langgraph_taskcraft.loaders.pdf import pdf_document
from langgraph_taskcraft.loaders.text import text_document
from langgraph_taskcraft.records import DocumentKind, DocumentRecord

EXTENSION_KINDS: dict[str, DocumentKind] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".gif": "image",
    ".webp": "image",
    ".bmp": "image",
}
"""File extensions the loaders read, and the kind of document each one is."""

_CONTENT_TYPE_KINDS: dict[str, DocumentKind] = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
}
_GLOB_CHARACTERS = frozenset("*?[")


def kind_from_extension(name: str) -> DocumentKind | None:
    """Document kind for a file name or URL path, by extension (case-insensitive)."""
    return EXTENSION_KINDS.get(PurePosixPath(name).suffix.lower())


def kind_from_content_type(content_type: str) -> DocumentKind | None:
    """Document kind for an HTTP Content-Type, or None when it is missing or generic."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime.startswith("image/") and mime != "image/svg+xml":
        return "image"
    return _CONTENT_TYPE_KINDS.get(mime)


def sniff_kind(data: bytes) -> DocumentKind | None:
    """Document kind from the first bytes (magic numbers), for untyped files and responses."""
    head = data[:1024]
    if b"%PDF-" in head:
        return "pdf"
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")) or (
        head.startswith(b"RIFF") and head[8:12] == b"WEBP"
    ):
        return "image"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")) or b"<body" in lowered:
        return "html"
    return None


def _charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip("\"'")
    return None


def _is_supported_file(path: Path) -> bool:
    return path.is_file() and kind_from_extension(path.name) is not None


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _folder_files(folder: Path) -> list[str]:
    files = (
        path
        for path in folder.rglob("*")
        if _is_supported_file(path) and not _is_hidden(path, folder)
    )
    return sorted(str(path) for path in files)


def expand_sources(sources: Iterable[str]) -> list[str]:
    """Turn paths, folders, globs and URLs into a list of single sources, without duplicates.

    Folders are searched recursively for supported files (hidden ones skipped), globs are
    expanded (matched folders are searched too; only supported files kept), both sorted.
    URLs and plain file paths are kept as they are, including paths that do not exist, so that
    loading them reports `not_found`; a glob that matches nothing is kept for the same reason.
    """
    expanded: list[str] = []
    for raw in sources:
        source = raw.strip()
        if not source:
            continue
        if is_url(source):
            expanded.append(source)
            continue
        if source.lower().startswith("file://"):
            source = url2pathname(urlsplit(source).path)
        path = Path(os.path.expanduser(source))
        if path.is_dir():
            expanded.extend(_folder_files(path))
        elif _GLOB_CHARACTERS & set(source) and not path.exists():
            matches: list[str] = []
            for match in sorted(glob.glob(str(path), recursive=True)):
                match_path = Path(match)
                if match_path.is_dir():
                    matches.extend(_folder_files(match_path))
                elif _is_supported_file(match_path):
                    matches.append(match)
            expanded.extend(matches or [source])
        else:
            expanded.append(str(path))
    return list(dict.fromkeys(expanded))


def _load_bytes(
    data: bytes,
    kind: DocumentKind,
    *,
    source: str,
    name: str,
    settings: LoadSettings,
    url: str | None = None,
    charset: str | None = None,
) -> DocumentRecord:
    # A URL identifies a downloaded document better than its last path segment.
    fallback = url or name
    if kind == "pdf":
        return pdf_document(data, source=source, settings=settings, fallback_identifier=fallback)
    if kind == "html":
        return html_document(
            data,
            source=source,
            settings=settings,
            url=url,
            fallback_identifier=fallback,
            charset=charset,
        )
    if kind == "image":
        stem = PurePosixPath(name).stem if name else ""
        return image_document(
            data, source=source, settings=settings, name=name or source, identifier=stem or source
        )
    return text_document(
        data,
        source=source,
        settings=settings,
        kind=kind,
        fallback_identifier=fallback,
        charset=charset,
    )


def _load_url(url: str, settings: LoadSettings) -> DocumentRecord:
    data, content_type = fetch_url(url, settings)
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    kind = kind_from_content_type(content_type) or kind_from_extension(name) or sniff_kind(data)
    if kind is None:
        raise LoadError(
            "unsupported_type",
            f"unsupported content type {content_type or '(none)'!r}",
            source=url,
        )
    return _load_bytes(
        data,
        kind,
        source=url,
        name=name,
        settings=settings,
        url=url,
        charset=_charset(content_type),
    )


def _load_file(source: str, settings: LoadSettings) -> DocumentRecord:
    path = Path(os.path.expanduser(source))
    if not path.exists():
        hint = " (URLs must start with http:// or https://)" if source.startswith("www.") else ""
        raise LoadError("not_found", f"no such file or folder{hint}", source=source)
    if path.is_dir():
        raise LoadError(
            "unsupported_type", "is a folder (expand it with expand_sources)", source=source
        )
    try:
        size = path.stat().st_size
        if size > settings.max_bytes:
            raise LoadError(
                "too_large",
                f"the file has {size:,} bytes, more than the limit of {settings.max_bytes:,}",
                source=source,
            )
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(
            "io_error", f"cannot be read ({exc.strerror or exc})", source=source
        ) from exc
    kind = kind_from_extension(path.name)
    if kind is None:
        kind = sniff_kind(data)
    if kind is None:
        supported = ", ".join(sorted(EXTENSION_KINDS))
        raise LoadError(
            "unsupported_type",
            f"unsupported file type {path.suffix or '(no extension)'!r}; supported: {supported}",
            source=source,
        )
    return _load_bytes(data, kind, source=source, name=path.name, settings=settings)


def load_document(source: str, settings: LoadSettings = DEFAULT_SETTINGS) -> DocumentRecord:
    """Load one file or http(s) URL into a DocumentRecord (blocking; run it in a thread).

    The kind follows the file extension, or for URLs the response's Content-Type (then the
    URL's extension, then the first bytes). Raises LoadError with a short `error` class
    (`not_found`, `unsupported_type`, `http_error`, `pdf_encrypted`, `image_too_large`, ...)
    and a one-line message naming the source.
    """
    try:
        if is_url(source):
            return _load_url(source, settings)
        return _load_file(source, settings)
    except LoadError as exc:
        raise exc.for_source(source) from exc.__cause__
