"""A local document corpus with a BM25 passage index (bm25s), cached in memory and on disk.

Documents are split into passages; each passage is indexed together with its document title so
that title words match. The index depends only on the corpus content (and the index settings),
so it is keyed by a content hash: kept in an in-process cache and saved under
`<data_dir>/indexes/<hash>/` with bm25s `save`/`load`, so a large corpus is tokenised once.

Loading is lazy: building a `Corpus` does no I/O, which keeps `build_tools` safe to call from
async code; the first search (run by LangChain in a worker thread) loads and indexes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from langgraph_taskcraft.records import DocumentError, DocumentRecord, content_id

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1
"""Bumped whenever the on-disk layout or the passage/tokenisation scheme changes."""

INDEX_DIR_NAME = "indexes"
MEMORY_CACHE_SIZE = 8
LOAD_WORKERS = 8

IndexOrigin = Literal["built", "disk", "memory", "empty"]
_DocumentLoader = Callable[["Corpus"], tuple[list["CorpusDocument"], list[DocumentError]]]


class SearchUnavailable(RuntimeError):
    """Search cannot work as configured (missing corpus, missing API key): not the agent's fault.

    Tools raise it instead of returning a message, so a misconfigured run stops with a clear
    error rather than failing every task with "no results".
    """


@dataclass(frozen=True)
class CorpusDocument:
    """One searchable document: an id the agent can open, a title and the plain text."""

    id: str
    title: str
    text: str
    source: str = ""


@dataclass(frozen=True)
class SearchHit:
    """One search result: the best passage of a document for the query."""

    doc_id: str
    title: str
    snippet: str
    score: float
    source: str = ""


@dataclass
class _PassageIndex:
    """A bm25s retriever over passages and, per passage, its document and character span."""

    retriever: bm25s.BM25 | None
    passage_doc: np.ndarray
    passage_start: np.ndarray
    passage_end: np.ndarray

    @property
    def size(self) -> int:
        return int(self.passage_doc.shape[0])


_memory_indexes: OrderedDict[str, _PassageIndex] = OrderedDict()
_memory_lock = threading.Lock()
_build_locks: dict[str, threading.Lock] = {}
_loaded_folders: dict[tuple[str, str], tuple[str, list[CorpusDocument], list[DocumentError]]] = {}

index_builds = 0
"""How many indexes this process tokenised and built (cache and disk hits do not count)."""


@lru_cache(maxsize=1)
def available_stemmer() -> tuple[str, Callable[[list[str]], list[str]] | None]:
    """PyStemmer's English stemmer when it is installed, else no stemming (checked once)."""
    try:
        import Stemmer
    except ImportError:
        return "none", None
    per_thread = threading.local()  # PyStemmer's stemmer objects are not thread-safe

    def stem_words(words: list[str]) -> list[str]:
        stemmer = getattr(per_thread, "stemmer", None)
        if stemmer is None:
            stemmer = per_thread.stemmer = Stemmer.Stemmer("english")
        return list(stemmer.stemWords(words))

    return "pystemmer-english", stem_words


def clear_memory_cache() -> None:
    """Forget the indexes and folder loads cached in this process (the disk cache stays)."""
    with _memory_lock:
        _memory_indexes.clear()
        _loaded_folders.clear()


class Corpus:
    """Documents with a lazily built BM25 passage index.

    Build one with `from_records`, `from_jsonl`, `from_folder` or `from_path`, or pass
    `CorpusDocument`s directly. Give `data_dir` to persist the index under
    `<data_dir>/indexes/<content hash>/`.
    """

    def __init__(
        self,
        documents: Iterable[CorpusDocument] = (),
        *,
        data_dir: str | Path | None = None,
        passage_chars: int = 1000,
        passage_overlap: int = 100,
        snippet_chars: int = 400,
        name: str = "",
        _loader: _DocumentLoader | None = None,
    ) -> None:
        if passage_chars < 100:
            raise ValueError("passage_chars must be at least 100")
        self.data_dir = Path(data_dir) if data_dir else None
        self.passage_chars = passage_chars
        self.passage_overlap = max(0, min(passage_overlap, passage_chars // 2))
        self.snippet_chars = snippet_chars
        self.name = name or "documents"
        self._loader = _loader
        self._documents: list[CorpusDocument] | None = None
        self._errors: list[DocumentError] = []
        self._by_id: dict[str, int] = {}
        self._content_hash: str | None = None
        self._index: _PassageIndex | None = None
        self.index_origin: IndexOrigin | None = None
        self._lock = threading.RLock()
        if _loader is None:
            self._set_documents(list(documents), [])

    # ----------------------------------------------------------------- constructors

    @classmethod
    def from_records(
        cls,
        records: Sequence[DocumentRecord],
        *,
        data_dir: str | Path | None = None,
        **options: Any,
    ) -> Corpus:
        """A corpus over loaded documents; ids are the records' ids, titles their identifiers."""
        documents = [
            CorpusDocument(
                id=record.id, title=record.identifier, text=record.text, source=record.source
            )
            for record in records
        ]
        options.setdefault("name", "run documents")
        return cls(documents, data_dir=data_dir, **options)

    @classmethod
    def from_jsonl(
        cls, path: str | Path, *, data_dir: str | Path | None = None, **options: Any
    ) -> Corpus:
        """A corpus read (on first use) from a JSONL file of `{"id", "title", "text"}` lines.

        A line without `id` gets a content hash; lines that are not JSON objects with a
        non-empty `text` are skipped and reported in `errors`.
        """
        jsonl_path = Path(path)
        options.setdefault("name", str(jsonl_path))
        return cls(data_dir=data_dir, _loader=lambda corpus: _read_jsonl(jsonl_path), **options)

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        *,
        settings: Any = None,
        data_dir: str | Path | None = None,
        **options: Any,
    ) -> Corpus:
        """A corpus of every document under a folder, loaded (on first use) by the loaders.

        `settings` is a `loaders.LoadSettings` (defaults when None). Files that fail to load
        are skipped and reported in `errors`. With `data_dir`, the loaded texts are saved with
        the index, so an unchanged folder (same files, sizes and modification times) is not
        parsed again in the next run.
        """
        folder = Path(path)
        options.setdefault("name", str(folder))
        return cls(
            data_dir=data_dir,
            _loader=lambda corpus: corpus._load_folder(folder, settings),
            **options,
        )

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        settings: Any = None,
        data_dir: str | Path | None = None,
        **options: Any,
    ) -> Corpus:
        """`from_jsonl` for a `.jsonl` file, else `from_folder` (a folder or a single file)."""
        if str(path).lower().endswith(".jsonl"):
            return cls.from_jsonl(path, data_dir=data_dir, **options)
        return cls.from_folder(path, settings=settings, data_dir=data_dir, **options)

    @property
    def stemmer_name(self) -> str:
        """`pystemmer-english` when PyStemmer is installed, else `none`."""
        return available_stemmer()[0]

    @property
    def _stemmer(self) -> Callable[[list[str]], list[str]] | None:
        return available_stemmer()[1]

    # ----------------------------------------------------------------- documents

    def _set_documents(self, documents: list[CorpusDocument], errors: list[DocumentError]) -> None:
        unique: list[CorpusDocument] = []
        by_id: dict[str, int] = {}
        for document in documents:
            if document.id in by_id:
                continue  # the same content twice: one copy is enough to search and open
            by_id[document.id] = len(unique)
            unique.append(document)
        self._documents = unique
        self._by_id = by_id
        self._errors = errors

    def _ensure_documents(self) -> list[CorpusDocument]:
        if self._documents is None:
            with self._lock:
                if self._documents is None and self._loader is not None:
                    documents, errors = self._loader(self)
                    self._set_documents(documents, errors)
        assert self._documents is not None
        return self._documents

    @property
    def documents(self) -> list[CorpusDocument]:
        """The documents (loaded on first access)."""
        return self._ensure_documents()

    @property
    def errors(self) -> list[DocumentError]:
        """Documents or lines that could not be loaded."""
        self._ensure_documents()
        return list(self._errors)

    def __len__(self) -> int:
        return len(self._ensure_documents())

    def get(self, doc_id: str) -> CorpusDocument | None:
        """The document with this id, or None."""
        self._ensure_documents()
        position = self._by_id.get(doc_id.strip())
        return None if position is None else self.documents[position]

    def resolve(self, target: str) -> CorpusDocument | None:
        """The document with this id, else this source (path or URL), else this unique title.

        Models sometimes pass a title or a URL where the id is expected.
        """
        target = target.strip()
        found = self.get(target)
        if found is not None:
            return found
        for document in self.documents:
            if document.source and document.source == target:
                return document
        wanted = _normalise_title(target)
        matches = [doc for doc in self.documents if _normalise_title(doc.title) == wanted]
        return matches[0] if len(matches) == 1 else None

    @property
    def content_hash(self) -> str:
        """Hash of the documents and the index settings: the index cache key."""
        if self._content_hash is None:
            digest = hashlib.sha256()
            header = (
                f"format={INDEX_FORMAT};passage={self.passage_chars}/{self.passage_overlap};"
                f"stemmer={self.stemmer_name};stopwords=en;bm25s-default"
            )
            digest.update(header.encode())
            for document in self._ensure_documents():
                for part in (document.id, document.title, document.source, document.text):
                    digest.update(part.encode("utf-8", "surrogatepass"))
                    digest.update(b"\x00")
            self._content_hash = digest.hexdigest()[:32]
        return self._content_hash

    # ----------------------------------------------------------------- index

    def index_dir(self) -> Path | None:
        """Where this corpus's index is (or would be) saved, when a data_dir was given."""
        if self.data_dir is None:
            return None
        return self.data_dir / INDEX_DIR_NAME / self.content_hash

    def build_index(self) -> IndexOrigin:
        """Make the index ready (memory cache, then disk, then build); return where it came from."""
        # Loading a folder may already build the index (its snapshot points at the saved copy).
        self._ensure_documents()
        if self._index is not None:
            assert self.index_origin is not None
            return self.index_origin
        with self._lock:
            if self._index is None:
                self._index, self.index_origin = self._obtain_index()
        assert self.index_origin is not None
        return self.index_origin

    def _obtain_index(self) -> tuple[_PassageIndex, IndexOrigin]:
        documents = self._ensure_documents()
        key = self.content_hash
        with _memory_lock:
            cached = _memory_indexes.get(key)
            if cached is not None:
                _memory_indexes.move_to_end(key)
                return cached, "memory"
            build_lock = _build_locks.setdefault(key, threading.Lock())
        # One build per content hash at a time, even across Corpus objects of the same content.
        with build_lock:
            with _memory_lock:
                cached = _memory_indexes.get(key)
            if cached is not None:
                return cached, "memory"
            origin: IndexOrigin
            index = self._load_saved_index(len(documents))
            if index is not None:
                origin = "disk"
            else:
                index = self._build(documents)
                origin = "empty" if index.retriever is None else "built"
                if index.retriever is not None:
                    self._save_index(index, documents)
            with _memory_lock:
                _memory_indexes[key] = index
                while len(_memory_indexes) > MEMORY_CACHE_SIZE:
                    _memory_indexes.popitem(last=False)
            return index, origin

    def _build(self, documents: list[CorpusDocument]) -> _PassageIndex:
        global index_builds
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        splitter = RecursiveCharacterTextSplitter(
            chunk_size=self.passage_chars,
            chunk_overlap=self.passage_overlap,
            add_start_index=True,
        )
        passage_doc: list[int] = []
        passage_start: list[int] = []
        passage_end: list[int] = []
        indexed_texts: list[str] = []
        for position, document in enumerate(documents):
            if not document.text.strip():
                continue
            for piece in splitter.create_documents([document.text]):
                start = int(piece.metadata["start_index"])
                passage_doc.append(position)
                passage_start.append(start)
                passage_end.append(start + len(piece.page_content))
                indexed_texts.append(f"{document.title}\n{piece.page_content}")
        index = _PassageIndex(
            retriever=None,
            passage_doc=np.asarray(passage_doc, dtype=np.int32),
            passage_start=np.asarray(passage_start, dtype=np.int64),
            passage_end=np.asarray(passage_end, dtype=np.int64),
        )
        if not indexed_texts:
            return index
        tokens = bm25s.tokenize(
            indexed_texts, stopwords=list(STOPWORDS_EN), stemmer=self._stemmer, show_progress=False
        )
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        index.retriever = retriever
        index_builds += 1
        return index

    def _save_index(self, index: _PassageIndex, documents: list[CorpusDocument]) -> None:
        final = self.index_dir()
        if final is None or index.retriever is None:
            return
        staging = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir(parents=True, exist_ok=True)
            index.retriever.save(str(staging), show_progress=False)
            np.savez(
                staging / "passages.npz",
                doc=index.passage_doc,
                start=index.passage_start,
                end=index.passage_end,
            )
            _write_documents(staging / "documents.jsonl", documents)
            meta = {
                "format": INDEX_FORMAT,
                "documents": len(documents),
                "passages": index.size,
                "stemmer": self.stemmer_name,
                "name": self.name,
            }
            # meta.json is written last: its presence marks a complete index.
            (staging / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            if final.exists():
                shutil.rmtree(staging, ignore_errors=True)  # another process saved it first
                return
            os.replace(staging, final)
        except OSError as exc:
            logger.warning("could not save the search index to %s: %s", final, exc)
            shutil.rmtree(staging, ignore_errors=True)

    def _load_saved_index(self, document_count: int) -> _PassageIndex | None:
        folder = self.index_dir()
        if folder is None or not (folder / "meta.json").is_file():
            return None
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            if meta.get("format") != INDEX_FORMAT or meta.get("documents") != document_count:
                return None
            retriever = bm25s.BM25.load(str(folder), show_progress=False)
            with np.load(folder / "passages.npz") as passages:
                index = _PassageIndex(
                    retriever=retriever,
                    passage_doc=passages["doc"],
                    passage_start=passages["start"],
                    passage_end=passages["end"],
                )
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring an unreadable search index at %s: %s", folder, exc)
            return None
        return index if index.size == meta.get("passages") else None

    # ----------------------------------------------------------------- search

    def search(self, query: str, k: int = 5) -> list[SearchHit]:
        """The `k` best documents for a query, each with its best passage as the snippet."""
        documents = self._ensure_documents()
        self.build_index()
        index = self._index
        if index is None or index.retriever is None or k <= 0:
            return []
        query_tokens = bm25s.tokenize(
            query,
            stopwords=list(STOPWORDS_EN),
            stemmer=self._stemmer,
            return_ids=False,
            show_progress=False,
        )[0]
        if not query_tokens:
            return []
        scores = index.retriever.get_scores(query_tokens)
        ranked = _top_passages(scores, want=k * 4)
        if len({int(index.passage_doc[p]) for p in ranked}) < k:
            ranked = _top_passages(scores, want=len(scores))
        hits: list[SearchHit] = []
        seen: set[int] = set()
        terms = query_terms(query)
        for passage in ranked:
            position = int(index.passage_doc[passage])
            if position in seen:
                continue  # one result per document: its best passage
            seen.add(position)
            document = documents[position]
            passage_text = document.text[
                int(index.passage_start[passage]) : int(index.passage_end[passage])
            ]
            hits.append(
                SearchHit(
                    doc_id=document.id,
                    title=document.title,
                    snippet=make_snippet(passage_text, terms, self.snippet_chars),
                    score=round(float(scores[passage]), 4),
                    source=document.source,
                )
            )
            if len(hits) == k:
                break
        return hits

    # ----------------------------------------------------------------- folder loading

    def _load_folder(
        self, folder: Path, settings: Any
    ) -> tuple[list[CorpusDocument], list[DocumentError]]:
        from langgraph_taskcraft.loaders import LoadSettings, expand_sources

        settings = settings if settings is not None else LoadSettings()
        if not folder.exists() and not set("*?[") & set(str(folder)):
            raise SearchUnavailable(f"the search corpus {folder} does not exist")
        sources = sorted(expand_sources([str(folder)]))
        fingerprint = _fingerprint(sources, settings)
        cache_key = (str(folder.resolve()), repr(settings))
        with _memory_lock:
            cached = _loaded_folders.get(cache_key)
        if cached is not None and cached[0] == fingerprint:
            return cached[1], cached[2]
        loaded = self._read_folder_snapshot(cache_key, fingerprint)
        if loaded is None:
            loaded = _load_sources(sources, settings)
            self._write_folder_snapshot(cache_key, fingerprint, loaded)
        with _memory_lock:
            _loaded_folders[cache_key] = (fingerprint, loaded[0], loaded[1])
        return loaded

    def _snapshot_manifest(self, cache_key: tuple[str, str]) -> Path | None:
        if self.data_dir is None:
            return None
        name = content_id(*cache_key, length=24)
        return self.data_dir / INDEX_DIR_NAME / "folders" / f"{name}.json"

    def _read_folder_snapshot(
        self, cache_key: tuple[str, str], fingerprint: str
    ) -> tuple[list[CorpusDocument], list[DocumentError]] | None:
        manifest = self._snapshot_manifest(cache_key)
        if manifest is None or not manifest.is_file():
            return None
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            if data.get("fingerprint") != fingerprint:
                return None
            documents_file = manifest.parent.parent / data["content_hash"] / "documents.jsonl"
            documents = _read_documents(documents_file)
            errors = [DocumentError.model_validate(error) for error in data.get("errors", [])]
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring an unreadable corpus snapshot %s: %s", manifest, exc)
            return None
        return documents, errors

    def _write_folder_snapshot(
        self,
        cache_key: tuple[str, str],
        fingerprint: str,
        loaded: tuple[list[CorpusDocument], list[DocumentError]],
    ) -> None:
        manifest = self._snapshot_manifest(cache_key)
        documents, errors = loaded
        if manifest is None or not documents:
            return
        self._set_documents(documents, errors)
        data = {
            "folder": cache_key[0],
            "fingerprint": fingerprint,
            "content_hash": self.content_hash,
            "errors": [error.model_dump() for error in errors],
        }
        try:
            manifest.parent.mkdir(parents=True, exist_ok=True)
            staging = manifest.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
            staging.write_text(json.dumps(data), encoding="utf-8")
            os.replace(staging, manifest)
        except OSError as exc:
            logger.warning("could not save the corpus snapshot %s: %s", manifest, exc)
        # The documents themselves are saved with the index; build it now so the snapshot
        # never points at a missing documents file.
        self.build_index()


# --------------------------------------------------------------------- helpers


def _normalise_title(title: str) -> str:
    return " ".join(title.casefold().split())


def _top_passages(scores: np.ndarray, want: int) -> list[int]:
    """Indices of the highest positive scores, best first."""
    positive = np.flatnonzero(scores > 0)
    if positive.size == 0:
        return []
    if positive.size > want:
        chosen = np.argpartition(-scores[positive], want - 1)[:want]
        positive = positive[chosen]
    order = np.argsort(-scores[positive], kind="stable")
    return [int(i) for i in positive[order]]


_WORD = re.compile(r"(?u)\b\w\w+\b")
_STOPWORDS = frozenset(STOPWORDS_EN)


def query_terms(query: str) -> list[str]:
    """The distinct non-stopword words of a query, longest first (for snippet selection)."""
    terms = {word for word in _WORD.findall(query.casefold()) if word not in _STOPWORDS}
    return sorted(terms, key=len, reverse=True)


def make_snippet(text: str, terms: Sequence[str], max_chars: int) -> str:
    """The window of `text` (at most `max_chars`) holding the most distinct query terms."""
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    lowered = flat.casefold()
    hits: list[tuple[int, str]] = []
    for term in terms:
        # Prefix match so that plural or inflected forms of a query word still count.
        hits += [(m.start(), term) for m in re.finditer(rf"\b{re.escape(term)}", lowered)]
    best_start, best_count = 0, -1
    lead = max_chars // 5
    for position, _ in hits:
        start = max(0, position - lead)
        count = len({term for where, term in hits if start <= where < start + max_chars})
        if count > best_count:
            best_start, best_count = start, count
    start = best_start
    if start > 0:
        space = flat.find(" ", start)
        start = space + 1 if 0 <= space < start + 30 else start
    end = min(len(flat), start + max_chars)
    if end < len(flat):
        space = flat.rfind(" ", start, end)
        end = space if space > start + max_chars // 2 else end
    return ("…" if start > 0 else "") + flat[start:end] + ("…" if end < len(flat) else "")


def _read_jsonl(path: Path) -> tuple[list[CorpusDocument], list[DocumentError]]:
    if not path.is_file():
        raise SearchUnavailable(f"the search corpus {path} does not exist or is not a file")
    documents: list[CorpusDocument] = []
    errors: list[DocumentError] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(_corpus_error(where, "invalid_json", str(exc)))
                continue
            if not isinstance(item, dict) or not str(item.get("text") or "").strip():
                errors.append(
                    _corpus_error(where, "invalid_record", "expected an object with a `text`")
                )
                continue
            text = str(item["text"])
            title = str(item.get("title") or "").strip()
            doc_id = str(item.get("id") or "").strip() or content_id(title, text)
            documents.append(
                CorpusDocument(
                    id=doc_id, title=title or doc_id, text=text, source=str(item.get("url") or "")
                )
            )
    return documents, errors


def _corpus_error(source: str, error: str, message: str) -> DocumentError:
    return DocumentError(source=source, stage="corpus", error=error, message=message)


def _load_sources(
    sources: list[str], settings: Any
) -> tuple[list[CorpusDocument], list[DocumentError]]:
    from langgraph_taskcraft.loaders import LoadError, load_document

    def load_one(source: str) -> CorpusDocument | DocumentError:
        try:
            record = load_document(source, settings)
        except LoadError as exc:
            return _corpus_error(source, exc.error, exc.message)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the corpus
            return _corpus_error(source, "load_failed", f"{type(exc).__name__}: {exc}")
        return CorpusDocument(
            id=record.id, title=record.identifier, text=record.text, source=record.source
        )

    documents: list[CorpusDocument] = []
    errors: list[DocumentError] = []
    with ThreadPoolExecutor(max_workers=LOAD_WORKERS) as pool:
        for outcome in pool.map(load_one, sources):
            if isinstance(outcome, DocumentError):
                errors.append(outcome)
            else:
                documents.append(outcome)
    return documents, errors


def _fingerprint(sources: list[str], settings: Any) -> str:
    """Cheap change detector for a folder: every file's path, size and modification time."""
    parts = [repr(settings)]
    for source in sources:
        try:
            stat = os.stat(source)
        except OSError:
            parts.append(f"{source}|missing")
            continue
        parts.append(f"{source}|{stat.st_size}|{stat.st_mtime_ns}")
    return content_id(*parts, length=32)


def _write_documents(path: Path, documents: list[CorpusDocument]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for document in documents:
            out.write(json.dumps(asdict(document), ensure_ascii=False) + "\n")


def _read_documents(path: Path) -> list[CorpusDocument]:
    with path.open(encoding="utf-8") as lines:
        return [CorpusDocument(**json.loads(line)) for line in lines if line.strip()]
