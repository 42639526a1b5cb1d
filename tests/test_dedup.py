from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from langgraph_taskcraft.dedup import (
    Deduplicator,
    DuplicateMatch,
    jaccard,
    normalise_question,
    shingles,
)

EIFFEL = "In what year was the Eiffel Tower, designed by Gustave Eiffel's company, completed?"


def test_normalise_question_folds_case_punctuation_and_space() -> None:
    assert normalise_question("  What  is the CAPITAL of France?! ") == (
        "what is the capital of france"
    )
    assert normalise_question("Who wrote “Faust”—Goethe_or_Schiller?") == (
        "who wrote faust goethe or schiller"
    )
    assert normalise_question("ＦＵＬＬ width") == "full width"
    assert normalise_question("?!") == ""


def test_shingles_and_jaccard() -> None:
    assert shingles("a b c", 2) == {"a b", "b c"}
    assert shingles("short", 3) == {"short"}
    assert shingles("", 2) == set()
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 0.0


def test_exact_duplicates_after_normalisation() -> None:
    dedup = Deduplicator()
    assert dedup.check(EIFFEL) is None
    dedup.add("t1", EIFFEL)
    match = dedup.match(EIFFEL.upper().replace(",", " ,  "))
    assert match == DuplicateMatch("t1", "exact", 1.0)
    assert match is not None and match.reason == "exact duplicate of t1"
    assert dedup.check(EIFFEL) == "t1"
    assert "t1" in dedup and len(dedup) == 1


def test_near_duplicates_by_shingle_jaccard() -> None:
    dedup = Deduplicator(threshold=0.8)
    dedup.add("t1", EIFFEL)
    dedup.add("t2", "What is the population of the city that hosted the 1900 Summer Olympics?")
    for reworded in (
        "What year was the Eiffel Tower, designed by Gustave Eiffel's company, completed?",
        "In what year was the Eiffel Tower, designed by Gustave Eiffel's company, completed in?",
    ):
        match = dedup.match(reworded)
        assert match is not None and match.task_id == "t1" and match.kind == "near"
        assert 0.8 <= match.similarity < 1.0
        assert match.reason.startswith("near duplicate of t1 (jaccard 0.")
    # A substituted word changes two bigrams: below 0.8 in a question this short.
    assert dedup.check(EIFFEL.replace("In what", "In which")) is None
    # One word that matters changes the question: not a duplicate at 0.8.
    assert dedup.check("What is the area of the city that hosted the 1900 Summer Olympics?") is None
    assert dedup.check("Who designed the Louvre pyramid?") is None


def test_threshold_is_configurable() -> None:
    question = "What is the area of the city that hosted the 1900 Summer Olympics?"
    other = "What is the population of the city that hosted the 1900 Summer Olympics?"
    similarity = jaccard(
        shingles(normalise_question(question), 2), shingles(normalise_question(other), 2)
    )
    assert 0.6 < similarity < 0.8
    strict = Deduplicator(threshold=0.8)
    loose = Deduplicator(threshold=0.6)
    for dedup in (strict, loose):
        dedup.add("pop", other)
    assert strict.check(question) is None
    assert loose.check(question) == "pop"
    with pytest.raises(ValueError):
        Deduplicator(threshold=0)
    with pytest.raises(ValueError):
        Deduplicator(shingle_words=0)


def test_best_near_match_wins() -> None:
    dedup = Deduplicator(threshold=0.5, shingle_words=1)
    dedup.add("far", "alpha beta gamma delta epsilon zeta")
    dedup.add("close", "alpha beta gamma delta epsilon eta")
    match = dedup.match("alpha beta gamma delta epsilon eta theta")
    assert match is not None and match.task_id == "close"


def test_add_is_idempotent_and_empty_questions_are_ignored() -> None:
    dedup = Deduplicator()
    dedup.add("t1", EIFFEL)
    dedup.add("t1", "A completely different question about rivers in Spain?")
    assert len(dedup) == 1
    assert dedup.check("A completely different question about rivers in Spain?") is None
    dedup.add("empty", "?!")
    assert "empty" not in dedup
    assert dedup.check("") is None


def test_check_and_add_lets_exactly_one_concurrent_copy_through() -> None:
    dedup = Deduplicator()
    questions = [(f"t{i}", f"Which river flows through city number {i % 5}?") for i in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda pair: dedup.check_and_add(*pair), questions))
    accepted = [pair for pair, result in zip(questions, results, strict=True) if result is None]
    assert len(accepted) == 5
    assert {normalise_question(q) for _, q in accepted} == {
        normalise_question(f"Which river flows through city number {i}?") for i in range(5)
    }
    assert all(r is None or r.kind == "exact" for r in results)


def test_rebuild_from_jsonl_skips_bad_lines(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    lines = [
        json.dumps({"id": "t1", "question": EIFFEL, "answer": "1889"}),
        "",
        "{not json",
        json.dumps({"id": 3, "question": "numeric id"}),
        json.dumps(["a", "list"]),
        json.dumps({"id": "t2", "question": "Who painted the ceiling of the Sistine Chapel?"}),
    ]
    tasks.write_text("\n".join(lines) + '\n{"id": "t3", "question": "torn', encoding="utf-8")
    dedup = Deduplicator.from_jsonl([tasks, tmp_path / "missing.jsonl"], threshold=0.7)
    assert len(dedup) == 2 and dedup.threshold == 0.7
    assert dedup.skipped_lines == 4
    assert dedup.check(EIFFEL.lower()) == "t1"
    near = "Who painted the ceiling of the Sistine Chapel in Rome?"
    assert dedup.check(near) == "t2"


def test_rebuilt_index_agrees_with_incremental_one(tmp_path: Path) -> None:
    questions = [
        (f"q{i}", f"What is the {word} of item {i} in the catalogue of the national museum?")
        for i, word in enumerate(["height", "weight", "age", "colour", "origin"] * 20)
    ]
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": q}) + "\n" for i, q in questions))
    rebuilt = Deduplicator.from_jsonl(path)
    incremental = Deduplicator()
    for task_id, question in questions:
        incremental.add(task_id, question)
    probes = [q.replace("national", "National") + "?" for _, q in questions[:10]]
    probes += ["What is the colour of item 3 in the catalogue of the national museum now?"]
    assert [rebuilt.match(p) for p in probes] == [incremental.match(p) for p in probes]
    assert rebuilt.check(probes[-1]) == "q3"
