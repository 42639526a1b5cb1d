"""The local corpus and its BM25 passage index: ranking, snippets, caching and persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from langgraph_taskcraft.records import DocumentRecord
from langgraph_taskcraft.tools import corpus as corpus_module
from langgraph_taskcraft.tools.corpus import Corpus, CorpusDocument, make_snippet

DOCUMENTS = [
    {
        "id": "lighthouse",
        "title": "Varnholm Lighthouse",
        "text": "The Varnholm Lighthouse stands on a granite skerry off the northern coast. It "
        "was designed by the engineer Ilse Marten in 1871, and its lamp is visible for nineteen "
        "nautical miles.",
    },
    {
        "id": "orchid",
        "title": "Blue ghost orchid",
        "text": "The blue ghost orchid grows in cloud forests at high altitude. Its flowers are "
        "pollinated at night by a single species of hawk moth.",
    },
    {
        "id": "railway",
        "title": "Tessaly Mountain Railway",
        "text": "The Tessaly Mountain Railway is a narrow gauge railway opened in 1903. Its "
        "steepest section uses a rack and pinion system to climb the pass.",
    },
    {
        "id": "cheese",
        "title": "Oberkamm cheese",
        "text": "Oberkamm is a hard cheese from the alpine valleys. The wheels are aged in "
        "limestone caves for fourteen months before they are sold.",
    },
    {
        "id": "comet",
        "title": "Comet Rellin-Hoff",
        "text": "Comet Rellin-Hoff is a periodic comet with an orbital period of 212 years. It "
        "was discovered by two amateur astronomers observing from a rooftop.",
    },
]

QUERIES = {
    "who designed the Varnholm lighthouse": "lighthouse",
    "narrow gauge rack railway": "railway",
    "cheese aged in limestone caves": "cheese",
    "orbital period of the comet": "comet",
}


@pytest.fixture(autouse=True)
def fresh_memory_cache():
    corpus_module.clear_memory_cache()
    yield
    corpus_module.clear_memory_cache()


def write_jsonl(path: Path, documents: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in documents), encoding="utf-8")
    return path


def write_folder(folder: Path) -> Path:
    folder.mkdir()
    for document in DOCUMENTS:
        (folder / f"{document['id']}.md").write_text(
            f"# {document['title']}\n\n{document['text']}\n", encoding="utf-8"
        )
    return folder


def assert_ranks_right_document_first(corpus: Corpus, id_of) -> None:
    for query, expected in QUERIES.items():
        hits = corpus.search(query, k=3)
        assert hits, query
        assert id_of(hits[0]) == expected, (query, [(h.title, h.score) for h in hits])
        assert hits[0].score > 0
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_jsonl_corpus_ranks_the_right_document_first(tmp_path):
    corpus = Corpus.from_jsonl(write_jsonl(tmp_path / "corpus.jsonl", DOCUMENTS))
    assert len(corpus) == len(DOCUMENTS)
    assert_ranks_right_document_first(corpus, lambda hit: hit.doc_id)
    hit = corpus.search("Ilse Marten", k=1)[0]
    assert hit.title == "Varnholm Lighthouse"
    assert "Ilse Marten" in hit.snippet


def test_record_corpus_ranks_the_right_document_first():
    records = [
        DocumentRecord(
            id=f"rec-{d['id']}",
            source=f"text:{d['id']}",
            kind="text",
            identifier=d["title"],
            chunks=[d["text"]],
        )
        for d in DOCUMENTS
    ]
    corpus = Corpus.from_records(records)
    assert_ranks_right_document_first(corpus, lambda hit: hit.doc_id.removeprefix("rec-"))
    assert corpus.get("rec-comet").title == "Comet Rellin-Hoff"


def test_folder_corpus_ranks_the_right_document_first(tmp_path):
    corpus = Corpus.from_folder(write_folder(tmp_path / "docs"))
    assert len(corpus) == len(DOCUMENTS)
    assert corpus.errors == []
    by_title = {d["title"]: d["id"] for d in DOCUMENTS}
    assert_ranks_right_document_first(corpus, lambda hit: by_title[hit.title])
    hit = corpus.search("hawk moth", k=1)[0]
    assert Path(hit.source).name == "orchid.md"
    assert corpus.resolve(hit.source) is corpus.get(hit.doc_id)


def test_folder_files_that_fail_to_load_are_reported_and_skipped(tmp_path):
    folder = write_folder(tmp_path / "docs")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    corpus = Corpus.from_folder(folder)
    assert len(corpus) == len(DOCUMENTS)
    assert [Path(e.source).name for e in corpus.errors] == ["broken.pdf"]
    assert corpus.errors[0].error.startswith("pdf_")


def test_jsonl_lines_without_text_are_reported_and_skipped(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        json.dumps(DOCUMENTS[0]) + "\n"
        "not json\n"
        + json.dumps({"id": "x", "title": "no text"})
        + "\n"
        + json.dumps({"title": "Anonymous", "text": "A document without an id."})
        + "\n",
        encoding="utf-8",
    )
    corpus = Corpus.from_jsonl(path)
    assert [d.title for d in corpus.documents] == ["Varnholm Lighthouse", "Anonymous"]
    assert corpus.documents[1].id  # a content hash stands in for the missing id
    assert [(e.source.rsplit(":", 1)[1], e.error) for e in corpus.errors] == [
        ("2", "invalid_json"),
        ("3", "invalid_record"),
    ]


def test_empty_corpus_returns_no_results(tmp_path):
    empty = Corpus([])
    assert empty.search("anything") == []
    assert empty.build_index() == "empty"
    blank = Corpus([CorpusDocument(id="a", title="Blank", text="   ")])
    assert blank.search("blank") == []
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    assert Corpus.from_jsonl(path, data_dir=tmp_path / "data").search("x") == []
    assert not (tmp_path / "data" / "indexes").exists()


def test_queries_of_stopwords_or_unknown_words_return_nothing():
    corpus = Corpus(
        [CorpusDocument(id=d["id"], title=d["title"], text=d["text"]) for d in DOCUMENTS]
    )
    assert corpus.search("the of and") == []
    assert corpus.search("zyxwvut") == []
    assert corpus.search("") == []


def test_one_result_per_document_with_its_best_passage():
    long_text = " ".join(
        f"Paragraph {i} talks about weather and farming in general terms." for i in range(60)
    )
    needle = " The harvest festival of Quellbrun is held on the second Sunday of October."
    documents = [
        CorpusDocument(id="long", title="Regional almanac", text=long_text + needle + long_text),
        CorpusDocument(
            id="other",
            title="Festivals",
            text="Many towns hold a festival in autumn, with music and dancing in the streets.",
        ),
    ]
    corpus = Corpus(documents, passage_chars=500)
    hits = corpus.search("Quellbrun harvest festival", k=5)
    assert [h.doc_id for h in hits] == ["long", "other"]
    assert "second Sunday of October" in hits[0].snippet
    assert len(hits[0].snippet) <= corpus.snippet_chars + 2


def test_snippet_centres_on_the_query_terms():
    text = "filler words " * 100 + "the Zorbin treaty was signed in Kell " + "more filler " * 100
    snippet = make_snippet(text, ["zorbin", "treaty"], 120)
    assert "Zorbin treaty" in snippet
    assert snippet.startswith("…") and snippet.endswith("…")
    assert len(snippet) <= 122
    assert make_snippet("short text", ["x"], 120) == "short text"


def test_resolve_accepts_id_source_and_unique_title():
    corpus = Corpus(
        [
            CorpusDocument(id="a1", title="Alpha", text="first", source="https://example.org/a"),
            CorpusDocument(id="b2", title="Twin", text="second"),
            CorpusDocument(id="c3", title="Twin", text="third"),
        ]
    )
    assert corpus.resolve(" a1 ").id == "a1"
    assert corpus.resolve("https://example.org/a").id == "a1"
    assert corpus.resolve("alpha").id == "a1"
    assert corpus.resolve("Twin") is None  # ambiguous titles do not resolve
    assert corpus.resolve("missing") is None


def test_index_is_saved_then_loaded_from_disk_without_reindexing(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", DOCUMENTS)
    data_dir = tmp_path / "data"
    builds_before = corpus_module.index_builds

    first = Corpus.from_jsonl(path, data_dir=data_dir)
    assert first.build_index() == "built"
    assert corpus_module.index_builds == builds_before + 1
    saved = data_dir / "indexes" / first.content_hash
    for name in ("meta.json", "vocab.index.json", "passages.npz", "documents.jsonl"):
        assert (saved / name).is_file(), name
    expected = [h.doc_id for h in first.search("narrow gauge railway")]

    # Same content, new handle, same process: the in-memory cache answers.
    assert Corpus.from_jsonl(path, data_dir=data_dir).build_index() == "memory"

    # A new process (simulated by clearing the memory cache) loads the saved index.
    corpus_module.clear_memory_cache()
    second = Corpus.from_jsonl(path, data_dir=data_dir)
    assert second.build_index() == "disk"
    assert corpus_module.index_builds == builds_before + 1
    assert [h.doc_id for h in second.search("narrow gauge railway")] == expected

    # Changed content gets a new hash and a new index.
    write_jsonl(path, [*DOCUMENTS, {"id": "new", "title": "New", "text": "A new railway."}])
    third = Corpus.from_jsonl(path, data_dir=data_dir)
    assert third.content_hash != first.content_hash
    assert third.build_index() == "built"
    assert corpus_module.index_builds == builds_before + 2


def test_unreadable_saved_index_is_rebuilt(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", DOCUMENTS)
    first = Corpus.from_jsonl(path, data_dir=tmp_path / "data")
    first.build_index()
    (tmp_path / "data" / "indexes" / first.content_hash / "passages.npz").write_bytes(b"junk")
    corpus_module.clear_memory_cache()
    second = Corpus.from_jsonl(path, data_dir=tmp_path / "data")
    assert second.build_index() == "built"
    assert second.search("hawk moth")[0].doc_id == "orchid"


def test_unchanged_folder_is_not_parsed_again(tmp_path, monkeypatch):
    from langgraph_taskcraft import loaders

    folder = write_folder(tmp_path / "docs")
    data_dir = tmp_path / "data"
    first = Corpus.from_folder(folder, data_dir=data_dir)
    assert first.build_index() == "built"
    corpus_module.clear_memory_cache()

    def must_not_load(*args, **kwargs):
        raise AssertionError("an unchanged folder was parsed again")

    monkeypatch.setattr(loaders, "load_document", must_not_load)
    second = Corpus.from_folder(folder, data_dir=data_dir)
    assert [d.id for d in second.documents] == [d.id for d in first.documents]
    assert second.build_index() == "disk"
    assert second.search("limestone caves")[0].title == "Oberkamm cheese"

    # Touching the folder (a new file) invalidates the snapshot: the loaders run again.
    monkeypatch.undo()
    (folder / "extra.txt").write_text("Extra notes about lighthouses.", encoding="utf-8")
    corpus_module.clear_memory_cache()
    third = Corpus.from_folder(folder, data_dir=data_dir)
    assert len(third) == len(DOCUMENTS) + 1


def test_concurrent_first_searches_build_the_index_once():
    from concurrent.futures import ThreadPoolExecutor

    documents = [CorpusDocument(id=d["id"], title=d["title"], text=d["text"]) for d in DOCUMENTS]
    builds_before = corpus_module.index_builds
    handles = [Corpus(documents) for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda c: c.search("hawk moth")[0].doc_id, handles))
    assert results == ["orchid"] * 8
    assert corpus_module.index_builds == builds_before + 1


def test_a_missing_corpus_is_a_configuration_error_not_no_results(tmp_path):
    from langgraph_taskcraft.tools import LocalSearchTool, SearchUnavailable

    for corpus in (
        Corpus.from_path(tmp_path / "absent.jsonl"),
        Corpus.from_path(tmp_path / "absent-folder"),
    ):
        with pytest.raises(SearchUnavailable, match="does not exist"):
            LocalSearchTool(corpus=corpus).invoke({"query": "lighthouse"})


def test_an_installed_stemmer_is_used_and_keys_the_index(monkeypatch):
    import sys
    import types

    documents = [CorpusDocument(id=d["id"], title=d["title"], text=d["text"]) for d in DOCUMENTS]
    plain = Corpus(documents)
    assert plain.stemmer_name == "none"  # PyStemmer is not a dependency
    assert plain.search("lighthouses") == []

    class FakeStemmer:  # stands in for PyStemmer: strips a plural "s"
        def __init__(self, language):
            assert language == "english"

        def stemWords(self, words):  # noqa: N802 - PyStemmer's API
            return [w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words]

    monkeypatch.setitem(sys.modules, "Stemmer", types.SimpleNamespace(Stemmer=FakeStemmer))
    corpus_module.available_stemmer.cache_clear()
    try:
        stemmed = Corpus(documents)
        assert stemmed.stemmer_name == "pystemmer-english"
        assert stemmed.content_hash != plain.content_hash
        assert stemmed.search("lighthouses")[0].doc_id == "lighthouse"
    finally:
        corpus_module.available_stemmer.cache_clear()
