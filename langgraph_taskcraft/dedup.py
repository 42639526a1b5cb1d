"""Duplicate questions across a dataset: exact (after normalisation) and near (MinHash LSH).

A long run over many documents produces the same question more than once (the same fact in two
documents, a rephrasing of an accepted task). `Deduplicator` remembers the accepted tasks'
questions and says whether a new question repeats one of them:

- exact: equal after `normalise_question` (Unicode NFKC, case folded, punctuation and runs of
  whitespace folded to one space);
- near: Jaccard similarity of word shingles (`shingle_words`-grams of the normalised question)
  at least `threshold`. Candidates come from a MinHash LSH index (`datasketch`), then the exact
  Jaccard of the stored shingle sets is computed, so a reported near-duplicate really is above
  the threshold (LSH may still miss a pair close to it: it is probabilistic).

Word bigrams with a threshold of 0.8 flag copies with a word or two added or dropped ("In what
year was X, built by Y, completed?" vs "What year was X, built by Y, completed?") but not
questions that differ in one substituted word, which may be the word that matters ("population"
vs "area" of a place changes two of about a dozen bigrams: Jaccard about 0.7). Lower the
threshold to about 0.7 to also catch one-word substitutions in questions of a dozen words.

Persistence: the index is rebuilt from the run's output JSONL (`from_jsonl`), never pickled.
The output file is the source of truth (append-only, always in step with what was accepted), a
pickle of the LSH index would be a second file that can fall out of step, is tied to the
`datasketch` version and its hashing scheme, and is unsafe to load from an untrusted place.
Rebuilding hashes all questions in bulk (`MinHash.bulk`) and fills the index in one insertion
session: about a second per 10,000 questions.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from datasketch import MinHash, MinHashLSH

from langgraph_taskcraft.outputs import read_jsonl

_NOT_WORD = re.compile(r"[\W_]+")


def normalise_question(question: str) -> str:
    """Lowercase (case-folded) question with punctuation and whitespace folded to single spaces."""
    folded = unicodedata.normalize("NFKC", question).casefold()
    return " ".join(_NOT_WORD.sub(" ", folded).split())


def shingles(normalised: str, size: int) -> set[str]:
    """Word `size`-grams of a normalised question (the whole question when it is shorter)."""
    words = normalised.split()
    if not words:
        return set()
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def jaccard(left: set[str] | frozenset[str], right: set[str] | frozenset[str]) -> float:
    """Jaccard similarity of two sets (0 when both are empty)."""
    union = len(left | right)
    return len(left & right) / union if union else 0.0


@dataclass(frozen=True)
class DuplicateMatch:
    """The accepted task a question repeats, how (`exact` or `near`) and how similar it is."""

    task_id: str
    kind: Literal["exact", "near"]
    similarity: float

    @property
    def reason(self) -> str:
        """A short human-readable reason, e.g. `near duplicate of ab12 (jaccard 0.86)`."""
        if self.kind == "exact":
            return f"exact duplicate of {self.task_id}"
        return f"near duplicate of {self.task_id} (jaccard {self.similarity:.2f})"


class Deduplicator:
    """Exact and near-duplicate detection over accepted tasks' questions (thread-safe).

    Args:
        threshold: Jaccard similarity of word shingles from which a question is a near
            duplicate (0 < threshold <= 1).
        shingle_words: words per shingle.
        num_perm: MinHash permutations (more: better recall near the threshold, slower).
        seed: MinHash seed; the same seed gives the same index for the same questions.
    """

    def __init__(
        self,
        threshold: float = 0.8,
        *,
        shingle_words: int = 2,
        num_perm: int = 128,
        seed: int = 1,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if shingle_words < 1:
            raise ValueError(f"shingle_words must be at least 1, got {shingle_words}")
        self.threshold = threshold
        self.shingle_words = shingle_words
        self.num_perm = num_perm
        self.seed = seed
        self.skipped_lines = 0
        """Lines of the files given to `from_jsonl` that had no usable id and question."""
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._exact: dict[str, str] = {}
        self._shingles: dict[str, frozenset[str]] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._shingles)

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._shingles

    def _minhash(self, shingle_set: Iterable[str]) -> MinHash:
        minhash = MinHash(num_perm=self.num_perm, seed=self.seed)
        minhash.update_batch([s.encode("utf-8") for s in shingle_set])
        return minhash

    def _prepare(self, question: str) -> tuple[str, frozenset[str]]:
        normalised = normalise_question(question)
        return normalised, frozenset(shingles(normalised, self.shingle_words))

    def _match_locked(
        self, normalised: str, shingle_set: frozenset[str], minhash: MinHash | None
    ) -> DuplicateMatch | None:
        exact = self._exact.get(normalised)
        if exact is not None:
            return DuplicateMatch(exact, "exact", 1.0)
        if minhash is None or not self._shingles:
            return None
        best: DuplicateMatch | None = None
        for task_id in self._lsh.query(minhash):
            similarity = jaccard(shingle_set, self._shingles[task_id])
            if similarity >= self.threshold and (best is None or similarity > best.similarity):
                best = DuplicateMatch(task_id, "near", similarity)
        return best

    def match(self, question: str) -> DuplicateMatch | None:
        """The accepted task `question` duplicates, with the kind of match; None if it is new.

        Empty questions (nothing left after normalisation) are never duplicates.
        """
        normalised, shingle_set = self._prepare(question)
        if not normalised:
            return None
        minhash = self._minhash(shingle_set)  # hashing needs no lock
        with self._lock:
            return self._match_locked(normalised, shingle_set, minhash)

    def check(self, question: str) -> str | None:
        """Id of the accepted task that `question` duplicates, or None (see `match`)."""
        found = self.match(question)
        return found.task_id if found else None

    def _insert_locked(
        self, task_id: str, normalised: str, shingle_set: frozenset[str], minhash: MinHash
    ) -> None:
        if task_id in self._shingles:  # adding the same task twice (e.g. on resume) is a no-op
            return
        self._exact.setdefault(normalised, task_id)
        self._shingles[task_id] = shingle_set
        self._lsh.insert(task_id, minhash, check_duplication=False)

    def add(self, task_id: str, question: str) -> None:
        """Remember an accepted task's question (a task id already present is ignored)."""
        normalised, shingle_set = self._prepare(question)
        if not normalised:
            return
        minhash = self._minhash(shingle_set)
        with self._lock:
            self._insert_locked(task_id, normalised, shingle_set, minhash)

    def check_and_add(self, task_id: str, question: str) -> DuplicateMatch | None:
        """Atomically: the duplicate match if there is one, else add the question and say None.

        Use it where concurrent branches accept tasks, so two copies of one question arriving at
        the same time cannot both pass.
        """
        normalised, shingle_set = self._prepare(question)
        if not normalised:
            return None
        minhash = self._minhash(shingle_set)
        with self._lock:
            found = self._match_locked(normalised, shingle_set, minhash)
            if found is None:
                self._insert_locked(task_id, normalised, shingle_set, minhash)
            return found

    def add_many(self, tasks: Iterable[tuple[str, str]]) -> None:
        """Add `(task_id, question)` pairs in bulk (hashes them together, one index session)."""
        prepared: dict[str, tuple[str, frozenset[str]]] = {}
        for task_id, question in tasks:
            normalised, shingle_set = self._prepare(question)
            if normalised and task_id not in prepared:
                prepared[task_id] = (normalised, shingle_set)
        with self._lock:
            fresh = [(tid, value) for tid, value in prepared.items() if tid not in self._shingles]
        if not fresh:
            return
        minhashes = MinHash.bulk(
            [[s.encode("utf-8") for s in shingle_set] for _, (_, shingle_set) in fresh],
            num_perm=self.num_perm,
            seed=self.seed,
        )
        with self._lock, self._lsh.insertion_session() as session:
            for (task_id, (normalised, shingle_set)), minhash in zip(fresh, minhashes, strict=True):
                if task_id in self._shingles:
                    continue
                self._exact.setdefault(normalised, task_id)
                self._shingles[task_id] = shingle_set
                session.insert(task_id, minhash, check_duplication=False)

    @classmethod
    def from_jsonl(
        cls,
        paths: str | Path | Iterable[str | Path],
        **options: float | int,
    ) -> Deduplicator:
        """Rebuild the index from task JSONL files (lines with `id` and `question`).

        Missing files count as empty; lines that are not JSON objects with a string `id` and
        `question` are skipped and counted in `skipped_lines`. `options` go to the constructor.
        """
        deduplicator = cls(**options)  # type: ignore[arg-type]
        deduplicator.add_many(deduplicator._read_pairs(paths))
        return deduplicator

    def _read_pairs(self, paths: str | Path | Iterable[str | Path]) -> Iterable[tuple[str, str]]:
        if isinstance(paths, str | Path):
            paths = [paths]
        for path in map(Path, paths):
            for record in read_jsonl(path, on_skipped=self._count_skipped_line):
                task_id, question = record.get("id"), record.get("question")
                if isinstance(task_id, str) and isinstance(question, str):
                    yield task_id, question
                else:
                    self._count_skipped_line()

    def _count_skipped_line(self) -> None:
        self.skipped_lines += 1
