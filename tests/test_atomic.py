"""Atomic task formation: extraction, questions, normalisation, leak check, limits, errors."""

from __future__ import annotations

import sys

import pytest
from langchain_core.messages import BaseMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.nodes.atomic import (
    FormedQuestion,
    QuestionExample,
    examples_from_tasks,
    form_candidates,
    form_question,
)
from langgraph_taskcraft.nodes.normalise import (
    answer_in_question,
    answer_key,
    canonical_text,
    normalise_answer,
)
from langgraph_taskcraft.records import (
    Candidate,
    DocumentRecord,
    ImageData,
    Task,
    Verification,
    content_id,
)
from langgraph_taskcraft.state import TaskcraftState
from tests.fakes import Rule, ScriptedChatModel, structured, transcript_of

# The model under test; each test installs its own with `use_generator`.
GENERATOR: ScriptedChatModel | None = None

EXTRACT = r"You collect short, checkable facts"
QUESTION = r"Write one question"


@pytest.fixture
def use_generator(monkeypatch: pytest.MonkeyPatch):
    def install(*rules: Rule) -> ScriptedChatModel:
        model = ScriptedChatModel(rules=list(rules))
        monkeypatch.setattr(sys.modules[__name__], "GENERATOR", model)
        return model

    return install


def make_context(**overrides: object) -> Context:
    values: dict[str, object] = {
        "generator_model": f"{__name__}:GENERATOR",
        "structured_output_retries": 2,
        "max_chunks_per_document": 4,
        "max_candidates_per_document": 5,
        "max_concurrency": 4,
    }
    values.update(overrides)
    return Context(**values)  # type: ignore[arg-type]


def document(
    marker: str, chunks: list[str], identifier: str = "", **extra: object
) -> DocumentRecord:
    return DocumentRecord(
        id=content_id(marker),
        source=f"/docs/{marker.lower()}.md",
        kind="markdown",
        identifier=identifier or f"{marker} report",
        chunks=chunks,
        **extra,  # type: ignore[arg-type]
    )


async def run_node(documents: list[DocumentRecord], context: Context, **state: object) -> dict:
    return await form_candidates(
        TaskcraftState(documents=documents, **state),  # type: ignore[arg-type]
        Runtime(context=context),
    )


def conclusions(identifier: str, *facts: tuple[str, str]):
    return structured(
        "Conclusions",
        identifier=identifier,
        conclusions=[{"answer": answer, "relation": relation} for answer, relation in facts],
    )


def question(text: str, answer: str):
    return structured("FormedQuestion", question=text, answer=answer)


def prompts_matching(model: ScriptedChatModel, pattern: str) -> list[list[BaseMessage]]:
    import re

    return [call for call in model.calls if re.search(pattern, transcript_of(call), re.S)]


OBSERVATORY = document(
    "OBSV",
    [
        "MARKER-OBS-1 The Zorblat Observatory on Kestrel Hill was founded in 1911.",
        "MARKER-OBS-2 Its main telescope has a mirror of 2,500 mm.",
    ],
    identifier="Zorblat Observatory",
)

OBSERVATORY_RULES = [
    Rule(
        QUESTION + r".*Relation: year the Zorblat Observatory was founded",
        question("In what year was the Zorblat Observatory on Kestrel Hill founded?", "1911"),
    ),
    Rule(
        QUESTION + r".*Relation: diameter of the main telescope mirror",
        question(
            "What is the mirror diameter of the main telescope of the Zorblat Observatory?",
            "2,500 mm",
        ),
    ),
    Rule(
        r"MARKER-OBS-1",
        conclusions(
            "Zorblat Observatory, Kestrel Hill",
            ("1911.", "year the Zorblat Observatory was founded"),
        ),
    ),
    Rule(
        r"MARKER-OBS-2",
        conclusions(
            "",  # the model keeps the given identifier
            ("2,500mm", "diameter of the main telescope mirror"),
        ),
    ),
]


async def test_two_chunks_give_candidates_with_questions(use_generator) -> None:
    model = use_generator(*OBSERVATORY_RULES)
    result = await run_node([OBSERVATORY], make_context())

    assert result["errors"] == [] and result["rejected"] == []
    founded, mirror = result["candidates"]
    assert isinstance(founded, Candidate)
    assert (founded.answer, founded.chunk_index) == ("1911", 0)
    assert founded.identifier == "Zorblat Observatory, Kestrel Hill"  # refined by the model
    assert founded.question == "In what year was the Zorblat Observatory on Kestrel Hill founded?"
    assert founded.relation == "year the Zorblat Observatory was founded"
    assert founded.id == content_id(OBSERVATORY.id, "1911", founded.question)
    assert (founded.document_id, founded.source) == (OBSERVATORY.id, OBSERVATORY.source)
    assert (mirror.answer, mirror.chunk_index) == ("2500 mm", 1)  # normalised
    assert mirror.identifier == "Zorblat Observatory"
    assert result["usage"]["generator:extract"].calls == 2
    assert result["usage"]["generator:form_question"].calls == 2
    assert result["usage"]["generator:extract"].input_tokens > 0
    # The extraction prompt carries the document's identifier and its chunk.
    (first_extract,) = prompts_matching(model, "MARKER-OBS-1")
    assert "Zorblat Observatory" in transcript_of(first_extract)


async def test_node_runs_inside_a_graph(use_generator) -> None:
    use_generator(*OBSERVATORY_RULES)
    builder = StateGraph(TaskcraftState, context_schema=Context)
    builder.add_node("form_candidates", form_candidates)
    builder.add_edge(START, "form_candidates")
    builder.add_edge("form_candidates", END)
    graph = builder.compile()

    output = await graph.ainvoke(TaskcraftState(documents=[OBSERVATORY]), context=make_context())

    assert [c.answer for c in output["candidates"]] == ["1911", "2500 mm"]
    assert output["usage"]["generator:form_question"].calls == 2


async def test_answer_in_question_is_rejected_not_dropped(use_generator) -> None:
    doc = document("LEAK", ["MARKER-LEAK The Velmora treaty was signed on 5 March 1921."])
    use_generator(
        Rule(
            QUESTION,
            # The date is written differently; the normalised forms still match.
            question("What did the Velmora treaty of March 5th, 1921 settle?", "5 March 1921"),
        ),
        Rule("MARKER-LEAK", conclusions("Velmora treaty", ("5 March 1921", "signing date"))),
    )
    result = await run_node([doc], make_context())

    assert result["candidates"] == []
    (rejection,) = result["rejected"]
    assert (rejection.stage, rejection.reason) == ("leak_check", "answer_in_question")
    assert rejection.answer == "1921-03-05"
    assert rejection.question.startswith("What did the Velmora treaty")
    assert (rejection.document_id, rejection.source) == (doc.id, doc.source)
    assert rejection.identifier == "Velmora treaty"


async def test_malformed_extraction_is_rejected_after_the_retries(use_generator) -> None:
    doc = document("BROKEN", ["MARKER-BROKEN some text"])
    model = use_generator(Rule("MARKER-BROKEN", structured("Conclusions", conclusions="oops")))
    result = await run_node([doc], make_context(structured_output_retries=2))

    assert len(model.calls) == 1 + 2
    assert result["candidates"] == [] and result["errors"] == []
    (rejection,) = result["rejected"]
    assert (rejection.stage, rejection.reason) == ("extract", "llm_output_invalid")
    assert rejection.detail.startswith("chunk 0:")
    assert result["usage"]["generator:extract"].calls == 3


async def test_malformed_question_is_rejected_and_others_go_on(use_generator) -> None:
    doc = document("HALF", ["MARKER-HALF Lake Ostra is 41 m deep and was mapped in 1874."])
    model = use_generator(
        Rule(QUESTION + ".*Relation: maximum depth", question("   ", "41 m")),
        Rule(
            QUESTION + ".*Relation: year of the first map",
            question("In what year was Lake Ostra first mapped?", "1874"),
        ),
        Rule(
            "MARKER-HALF",
            conclusions(
                "Lake Ostra",
                ("41 m", "maximum depth of Lake Ostra"),
                ("1874", "year of the first map of Lake Ostra"),
            ),
        ),
    )
    result = await run_node([doc], make_context(structured_output_retries=1))

    assert [c.answer for c in result["candidates"]] == ["1874"]
    (rejection,) = result["rejected"]
    assert (rejection.stage, rejection.reason) == ("form_question", "llm_output_invalid")
    assert rejection.answer == "41 m"
    assert len(prompts_matching(model, QUESTION + ".*maximum depth")) == 1 + 1


def rate_limited(messages: list[BaseMessage]):
    raise RuntimeError("429 Too Many Requests")


async def test_provider_error_fails_only_its_document(use_generator) -> None:
    failing = document("FAILING", ["MARKER-FAILING text", "MARKER-FAILING-2 more text"])
    use_generator(Rule("MARKER-FAILING", rate_limited), *OBSERVATORY_RULES)
    result = await run_node([failing, OBSERVATORY], make_context())

    (error,) = result["errors"]
    assert (error.source, error.stage, error.error) == (
        failing.source,
        "form_candidates",
        "RuntimeError",
    )
    assert "429" in error.message
    assert [c.document_id for c in result["candidates"]] == [OBSERVATORY.id] * 2


async def test_provider_error_while_forming_questions_fails_the_document(use_generator) -> None:
    doc = document("QFAIL", ["MARKER-QFAIL The Brask canal opened in 1822."])
    use_generator(
        Rule(QUESTION, rate_limited),
        Rule("MARKER-QFAIL", conclusions("Brask canal", ("1822", "opening year"))),
    )
    result = await run_node([doc], make_context())

    assert result["candidates"] == []
    assert [e.error for e in result["errors"]] == ["RuntimeError"]


MANY_FACTS_RULES = [
    Rule(QUESTION + ".*Relation: r1", question("Q1 about the Quillon engine?", "100 kW")),
    Rule(QUESTION + ".*Relation: r2", question("Q2 about the Quillon engine?", "1954")),
    Rule(QUESTION + ".*Relation: r3", question("Q3 about the Quillon engine?", "Ada Brenn")),
    Rule(QUESTION + ".*Relation: r4", question("Q4 about the Quillon engine?", "Varo")),
    Rule(
        "MARKER-MANY",
        conclusions(
            "Quillon engine",
            ("100kW", "r1"),
            ("100 kW", "r1 again, same answer"),  # duplicate after normalisation
            ("1954", "r2"),
            ("Ada Brenn", "r3"),
            ("Varo", "r4"),
        ),
    ),
]


async def test_candidates_are_limited_per_document(use_generator) -> None:
    doc = document("MANY", ["MARKER-MANY facts about the Quillon engine"])
    model = use_generator(*MANY_FACTS_RULES)
    result = await run_node([doc], make_context(max_candidates_per_document=2))

    assert [c.answer for c in result["candidates"]] == ["100 kW", "1954"]
    # Questions are only formed for the places available.
    assert len(prompts_matching(model, QUESTION)) == 2
    assert "up to 2 facts" in transcript_of(prompts_matching(model, EXTRACT)[0])


async def test_rejected_question_is_replaced_by_the_next_fact(use_generator) -> None:
    doc = document("MANY", ["MARKER-MANY facts about the Quillon engine"])
    leaking = Rule(QUESTION + ".*Relation: r1", question("Is 100 kW the Quillon output?", "100 kW"))
    model = use_generator(leaking, *MANY_FACTS_RULES)
    result = await run_node([doc], make_context(max_candidates_per_document=2))

    assert [c.answer for c in result["candidates"]] == ["1954", "Ada Brenn"]
    assert [r.reason for r in result["rejected"]] == ["answer_in_question"]
    assert len(prompts_matching(model, QUESTION)) == 3


async def test_only_the_first_chunks_are_read(use_generator) -> None:
    doc = document("CHUNKS", [f"MARKER-CHUNK-{i} text" for i in range(5)])
    model = use_generator(
        Rule(
            "MARKER-CHUNK",
            conclusions(
                "Chunky",
            ),
        )
    )
    await run_node([doc], make_context(max_chunks_per_document=3))

    seen = sorted(
        i for i in range(5) for call in model.calls if f"MARKER-CHUNK-{i}" in transcript_of(call)
    )
    assert seen == [0, 1, 2]


async def test_tightened_answer_is_kept_only_when_part_of_the_original(use_generator) -> None:
    doc = document("TIGHT", ["MARKER-TIGHT The Orsk ferry began service in the year 1907."])
    use_generator(
        Rule(
            QUESTION + ".*Relation: start",
            question("When did the Orsk ferry begin service?", "1907"),
        ),
        Rule(
            QUESTION + ".*Relation: operator",
            # Not part of the extracted answer: the answer read from the document wins.
            question("Which company operated the Orsk ferry?", "Northern Lines"),
        ),
        Rule(
            "MARKER-TIGHT",
            conclusions(
                "Orsk ferry",
                ("the year 1907", "start of service"),
                ("Orsk Steam Company", "operator"),
            ),
        ),
    )
    result = await run_node([doc], make_context())

    assert [c.answer for c in result["candidates"]] == ["1907", "Orsk Steam Company"]


async def test_overlong_answer_is_rejected(use_generator) -> None:
    doc = document("LONG", ["MARKER-LONG text"])
    long_answer = (
        "a sentence that goes on and on far longer than any short factual answer should go"
    )
    use_generator(Rule("MARKER-LONG", conclusions("Long", (long_answer, "summary"))))
    result = await run_node([doc], make_context())

    assert result["candidates"] == []
    assert [(r.stage, r.reason) for r in result["rejected"]] == [("extract", "answer_too_long")]


async def test_image_document_sends_image_blocks(use_generator) -> None:
    image = ImageData(
        mime_type="image/png", base64="iVBORw0KGgo=", width=4, height=3, caption="MARKER-IMG plot"
    )
    doc = DocumentRecord(
        id=content_id("img"),
        source="/docs/rainfall.png",
        kind="image",
        identifier="rainfall.png",
        images=[image],
    )
    model = use_generator(
        Rule(QUESTION, question("What peak rainfall does the chart rainfall.png show?", "82 mm")),
        Rule("MARKER-IMG", conclusions("rainfall.png", ("82mm", "peak monthly rainfall"))),
    )
    result = await run_node([doc], make_context())

    assert [c.answer for c in result["candidates"]] == ["82 mm"]
    (extract_call,) = prompts_matching(model, EXTRACT)
    (message,) = extract_call
    assert isinstance(message, HumanMessage) and isinstance(message.content, list)
    blocks = [b for b in message.content if isinstance(b, dict)]
    image_blocks = [b for b in blocks if b.get("type") == "image"]
    assert image_blocks == [
        {
            "type": "image",
            "id": image_blocks[0]["id"],
            "base64": "iVBORw0KGgo=",
            "mime_type": "image/png",
        }
    ]
    labels = [b["text"] for b in blocks if b.get("type") == "text"]
    assert "Image 1 of rainfall.png: MARKER-IMG plot" in labels


async def test_text_document_sends_no_image_blocks(use_generator) -> None:
    model = use_generator(*OBSERVATORY_RULES)
    await run_node([OBSERVATORY], make_context())
    for call in prompts_matching(model, EXTRACT):
        assert all(isinstance(m.content, str) for m in call)


async def test_empty_document_is_an_error(use_generator) -> None:
    model = use_generator()
    empty = document("EMPTY", [])
    result = await run_node([empty], make_context())

    assert [(e.source, e.error) for e in result["errors"]] == [(empty.source, "empty_document")]
    assert model.calls == []


async def test_form_question_renders_few_shot_examples(use_generator) -> None:
    model = use_generator(Rule(QUESTION, question("Where is the Tamsin dam?", "Eldor")))
    examples = [
        QuestionExample("Brask canal", "opening year", "1822", "When did the Brask canal open?")
    ]
    formed = await form_question(
        model,
        "Tamsin dam",
        "location",
        "Eldor",
        context=make_context(),
        usage={},
        examples=examples,
    )

    assert formed == FormedQuestion(question="Where is the Tamsin dam?", answer="Eldor")
    prompt = transcript_of(model.calls[0])
    assert 'answer "1822" → question "When did the Brask canal open?"' in prompt
    assert "Relation: location" in prompt


async def test_form_question_without_examples_has_no_example_block(use_generator) -> None:
    model = use_generator(Rule(QUESTION, question("Where is the Tamsin dam?", "Eldor")))
    await form_question(model, "Tamsin dam", "location", "Eldor", context=make_context(), usage={})
    assert "accepted earlier" not in transcript_of(model.calls[0])


def accepted_task(n: int, kind: str = "atomic") -> Task:
    return Task(
        id=str(n),
        question=f"Question {n}?",
        answer=f"A{n}",
        kind=kind,  # type: ignore[arg-type]
        identifier=f"Doc {n}",
        relation=f"relation {n}",
        source="s",
        document_id="d",
        verification=Verification(accepted=True),
    )


def test_examples_from_tasks_takes_recent_atomic_tasks() -> None:
    tasks = [accepted_task(1), accepted_task(2, "depth"), accepted_task(3), accepted_task(4)]
    assert examples_from_tasks(tasks, limit=2) == [
        QuestionExample("Doc 3", "relation 3", "A3", "Question 3?"),
        QuestionExample("Doc 4", "relation 4", "A4", "Question 4?"),
    ]
    assert examples_from_tasks(tasks, limit=0) == []


async def test_node_uses_accepted_tasks_as_examples(use_generator) -> None:
    model = use_generator(*OBSERVATORY_RULES)
    await run_node([OBSERVATORY], make_context(), tasks=[accepted_task(7)])
    for call in prompts_matching(model, QUESTION):
        assert 'question "Question 7?"' in transcript_of(call)


# --- normalisation -----------------------------------------------------------------------------

NORMALISED = [
    # whitespace and wrapping
    ("  Paris  ", "Paris"),
    ("New\u00a0 York\n City", "New York City"),
    ("Paris.", "Paris"),
    ("Paris;", "Paris"),
    ('"Paris"', "Paris"),
    ("\u201cThe Raven.\u201d", "The Raven"),
    ("'Blue Moon'", "Blue Moon"),
    ('"Paris."', "Paris"),
    ('Paris"', "Paris"),
    ("\u00abLe Monde\u00bb", "Le Monde"),
    # numbers
    ("1,234", "1234"),
    ("1,234,567", "1234567"),
    ("1,234,567.89", "1234567.89"),
    ("$1,250", "$1250"),
    ("\u22125", "-5"),
    ("3.50", "3.50"),
    ("1,234 people", "1234 people"),
    # percentages
    ("45 %", "45%"),
    ("45 percent", "45%"),
    ("12.5 per cent", "12.5%"),
    ("45%", "45%"),
    # dates
    ("March 5, 2020", "2020-03-05"),
    ("March 5 2020", "2020-03-05"),
    ("Mar. 5th, 2020", "2020-03-05"),
    ("5 March 2020", "2020-03-05"),
    ("5th of March, 2020", "2020-03-05"),
    ("5 MARCH 2020", "2020-03-05"),
    ("2020-03-05", "2020-03-05"),
    ("2020-3-5", "2020-03-05"),
    ("2020/03/05", "2020-03-05"),
    ("13/03/2020", "2020-03-13"),
    ("03/13/2020", "2020-03-13"),
    ("13.03.2020", "2020-03-13"),
    ("Thursday, March 5, 2020", "Thursday, 2020-03-05"),
    # units
    ("5km", "5 km"),
    ("3.5GHz", "3.5 GHz"),
    ("25°C", "25 °C"),
    ("120km/h", "120 km/h"),
    ("5km²", "5 km²"),
    ("2,500mm", "2500 mm"),
    ("16GB", "16 GB"),
]

UNCHANGED = [
    "U.S.",
    "Washington, D.C.",
    "Apple Inc.",
    "John F.",
    "Yahoo!",
    "Who's Afraid of Virginia Woolf?",
    "students'",
    "'90s",
    '"A" and "B"',
    "rock 'n' roll",
    "Paris",
    "paris",  # letter case is kept
    "1,5",  # European decimal comma: ambiguous
    "12,34",
    "1,2345",
    "1 234",  # space grouping is left alone
    "1.2.3",
    "3.14",
    "978-3-16-148410-0",
    "05/03/2020",  # day and month could be swapped
    "March 2020",  # no day
    "March 5",  # no year
    "5 March 20",
    "February 30, 2020",  # not a date
    "2020-13-45",
    "5–7 March 2020",  # a range: converting its end would detach its start
    "4 and 5 March 2020",
    "February 28 – March 5, 2020",
    "$5m",  # million, not metres
    "1990s",
    "7B",
    "4K",
    "5G",
    "5 km",
    "5-km",
    "A4",
    "kg",
    "9h30",
    "5 percentage points",
    "2020-03-05T10:00",
    "Route 66",
    "",
]


@pytest.mark.parametrize(("raw", "expected"), NORMALISED)
def test_normalise_answer(raw: str, expected: str) -> None:
    assert normalise_answer(raw) == expected


@pytest.mark.parametrize("raw", UNCHANGED)
def test_normalise_answer_leaves_ambiguous_forms_unchanged(raw: str) -> None:
    assert normalise_answer(raw) == raw


@pytest.mark.parametrize(("raw", "expected"), NORMALISED)
def test_normalise_answer_is_idempotent(raw: str, expected: str) -> None:
    assert normalise_answer(normalise_answer(raw)) == expected


def test_canonical_text_keeps_sentence_punctuation() -> None:
    assert (
        canonical_text("How far is it, in km, from A to B (opened March 5, 2020)?")
        == "How far is it, in km, from A to B (opened 2020-03-05)?"
    )
    assert canonical_text("It weighs 1,200kg.") == "It weighs 1200 kg."


def test_answer_key_equates_spellings_of_one_answer() -> None:
    assert answer_key("1,234") == answer_key("1234")
    assert answer_key("PARIS") == answer_key("paris.")
    assert answer_key("March 5, 2020") == answer_key("5 March 2020")
    assert answer_key("1,234") != answer_key("1,235")


LEAKS = [
    ("Paris", "Is the capital of France Paris?", True),
    ("Paris", "Which city is the capital, PARIS or Lyon?", True),
    ("Paris", "Which Parisian museum holds the painting?", False),
    ("1911", "When was the observatory founded?", False),
    ("1911", "What happened in 1911 at the observatory?", True),
    ("5", "Which of the top 5 cities is largest?", True),
    ("5", "What changed in version 5.1 of the software?", False),
    ("5", "How many of the 1,500 members voted?", False),
    ("1234", "Why did 1,234 people attend?", True),
    ("1,234", "Why did 1234 people attend?", True),
    ("2020-03-05", "What happened on March 5, 2020?", True),
    ("5 March 2020", "What happened on 2020-03-05?", True),
    ("2020-03-05", "What happened in 2020?", False),
    ("45%", "Did 45 percent of voters agree?", True),
    ("5 km", "Is the trail 5km long?", True),
    ("New York", "Which city, new  york or Boston, hosted it?", True),
    ("Apple Inc.", "When was Apple Inc. founded?", True),
    ("Ada", "Who designed the Adams engine?", False),
    ("", "Any question?", False),
]


@pytest.mark.parametrize(("answer", "question_text", "expected"), LEAKS)
def test_answer_in_question(answer: str, question_text: str, expected: bool) -> None:
    assert answer_in_question(answer, question_text) is expected
