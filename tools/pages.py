"""Paging of long texts into fixed-size windows for the reading tools."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

ValueT = TypeVar("ValueT")

# A page break is moved back to a paragraph, line or word break when one is this close to the
# window's end, so words are not cut in half.
_BREAK_SEARCH_FRACTION = 0.2


def split_pages(text: str, page_chars: int) -> list[str]:
    """Cut text into pages of at most `page_chars`, preferring paragraph, line, word breaks."""
    if page_chars <= 0:
        raise ValueError("page_chars must be positive")
    text = text.strip()
    if not text:
        return [""]
    pages: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + page_chars)
        if end < len(text):
            earliest = end - int(page_chars * _BREAK_SEARCH_FRACTION)
            for separator in ("\n\n", "\n", " "):
                cut = text.rfind(separator, earliest, end)
                if cut > start:
                    end = cut + len(separator)
                    break
        page = text[start:end].strip()
        if page:
            pages.append(page)
        start = end
    return pages or [""]


def render_page(title: str, pages: list[str], page: int) -> str:
    """`[title] page i of n` followed by the page text, or a message when out of range."""
    total = len(pages)
    if page < 1 or page > total:
        return (
            f"Page {page} does not exist: [{title}] has {total} page{'s' if total != 1 else ''} "
            f"(pages 1 to {total})."
        )
    body = pages[page - 1] or "(this page has no text)"
    return f"[{title}] page {page} of {total}\n\n{body}"


class BoundedCache(Generic[ValueT]):
    """A small thread-safe LRU cache so that paging through a URL downloads it once."""

    def __init__(self, max_items: int = 32) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, ValueT] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: str, make: Callable[[], ValueT]) -> ValueT:
        """The cached value for `key`, else `make()` (errors are not cached)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return value
