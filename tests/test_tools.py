"""The agent's tools: LangChain standard tool tests, behaviour, and a create_agent round trip."""

from __future__ import annotations

import base64
import functools
import io
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_tests.unit_tests import ToolsUnitTests

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.records import DocumentRecord
from langgraph_taskcraft.tools import (
    Corpus,
    CorpusDocument,
    InspectImageTool,
    LocalSearchTool,
    OpenPageTool,
    ReadPdfTool,
    SearchUnavailable,
    TavilySearchTool,
    build_tools,
)
from langgraph_taskcraft.tools import corpus as corpus_module
from tests.fakes import Rule, ScriptedChatModel, tool_call

LIGHTHOUSE = CorpusDocument(
    id="lighthouse",
    title="Varnholm Lighthouse",
    text="The Varnholm Lighthouse stands on a granite skerry. It was designed by the engineer "
    "Ilse Marten in 1871.",
)
ORCHID = CorpusDocument(
    id="orchid",
    title="Blue ghost orchid",
    text="The blue ghost orchid is pollinated at night by a hawk moth.",
)

# Resolved by `chat_model` from a Context spec ("tests.test_tools:IMAGE_MODEL").
IMAGE_MODEL = ScriptedChatModel(rules=[Rule("tallest bar", "The tallest bar shows 42.")])


@pytest.fixture(autouse=True)
def fresh_memory_cache():
    corpus_module.clear_memory_cache()
    yield
    corpus_module.clear_memory_cache()


def small_corpus() -> Corpus:
    return Corpus([LIGHTHOUSE, ORCHID])


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal text PDF (Helvetica, one text object per page), written by hand."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] "
        f"/Count {len(pages)} >>",
        3: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for page_id, text in zip(page_ids, pages, strict=True):
        lines = " ".join(f"({escape(line)}) '" for line in text.split("\n"))
        ops = f"BT /F1 12 Tf 72 720 Td 14 TL {lines} ET"
        objects[page_id] = (
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>"
        )
        objects[page_id + 1] = f"<< /Length {len(ops)} >>\nstream\n{ops}\nendstream"
    info_id = None
    if title:
        info_id = max(objects) + 1
        objects[info_id] = f"<< /Title ({escape(title)}) >>"
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = out.tell()
        out.write(f"{number} 0 obj\n{objects[number]}\nendobj\n".encode("latin-1"))
    xref = out.tell()
    size = max(objects) + 1
    out.write(f"xref\n0 {size}\n0000000000 65535 f \n".encode())
    for number in range(1, size):
        out.write(f"{offsets[number]:010d} 00000 n \n".encode())
    info = f" /Info {info_id} 0 R" if info_id else ""
    out.write(f"trailer\n<< /Size {size} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def write_png(path: Path, size: tuple[int, int] = (2000, 1000)) -> Path:
    from PIL import Image

    Image.new("RGB", size, (200, 30, 30)).save(path, format="PNG")
    return path


@pytest.fixture
def web_server(tmp_path):
    """A static HTTP server on 127.0.0.1 (free port) serving tmp_path/site; counts GETs."""
    site = tmp_path / "site"
    site.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site, f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------- standard tool tests


class TestLocalSearchToolStandard(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return LocalSearchTool

    @property
    def tool_constructor_params(self):
        return {"corpus": small_corpus(), "max_results": 3}

    @property
    def tool_invoke_params_example(self):
        return {"query": "Varnholm lighthouse engineer"}


class TestTavilySearchToolStandard(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return TavilySearchTool

    @property
    def tool_invoke_params_example(self):
        return {"query": "Varnholm lighthouse engineer"}

    @property
    def init_from_env_params(self):
        return {"TAVILY_API_KEY": "tvly-from-env"}, {}, {"api_key": "tvly-from-env"}


class TestOpenPageToolStandard(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return OpenPageTool

    @property
    def tool_constructor_params(self):
        return {"corpus": small_corpus(), "page_chars": 1000}

    @property
    def tool_invoke_params_example(self):
        return {"target": "lighthouse", "page": 1}


class TestReadPdfToolStandard(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return ReadPdfTool

    @property
    def tool_invoke_params_example(self):
        return {"source": "https://example.org/report.pdf", "page": 2}


class TestInspectImageToolStandard(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return InspectImageTool

    @property
    def tool_constructor_params(self):
        return {"model": ScriptedChatModel(default="An image.")}

    @property
    def tool_invoke_params_example(self):
        return {"source": "chart.png", "question": "What does the tallest bar show?"}


def test_every_tool_has_the_names_the_agent_prompt_uses():
    assert LocalSearchTool(corpus=small_corpus()).name == "search"
    assert TavilySearchTool().name == "search"
    assert OpenPageTool().name == "open_page"
    assert ReadPdfTool().name == "read_pdf"
    assert InspectImageTool(model=IMAGE_MODEL).name == "inspect_image"


# --------------------------------------------------------------------- search


def test_local_search_returns_readable_lines_and_an_artifact():
    tool = LocalSearchTool(corpus=small_corpus(), max_results=2)
    message = tool.invoke(
        tool_call("search", query="who designed Varnholm lighthouse").tool_calls[0]
    )
    assert isinstance(message, ToolMessage)
    first_line = message.text.splitlines()[0]
    assert first_line.startswith("[lighthouse] Varnholm Lighthouse — ")
    assert "Ilse Marten" in first_line
    assert message.artifact[0]["doc_id"] == "lighthouse"
    assert message.artifact[0]["score"] > 0


def test_local_search_without_matches_or_documents_says_no_results():
    assert "No results" in LocalSearchTool(corpus=small_corpus()).invoke({"query": "zyxwvut"})
    assert "No results" in LocalSearchTool(corpus=Corpus([])).invoke({"query": "lighthouse"})


def test_tavily_without_key_builds_and_fails_clearly_at_call(monkeypatch):
    import tavily

    monkeypatch.delenv("TAVILY_API_KEY", raising=False)

    class NoNetwork:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a Tavily client was built without a key")

    monkeypatch.setattr(tavily, "TavilyClient", NoNetwork)
    monkeypatch.setattr(tavily, "AsyncTavilyClient", NoNetwork)
    tool = TavilySearchTool()
    assert tool.api_key is None
    with pytest.raises(SearchUnavailable, match="TAVILY_API_KEY"):
        tool.invoke({"query": "lighthouse"})


async def test_tavily_formats_results_and_returns_failures_to_the_agent(monkeypatch):
    import tavily

    calls: list[tuple[str, dict]] = []
    response = {
        "results": [
            {
                "url": "https://example.org/varnholm",
                "title": "Varnholm Lighthouse",
                "content": "Designed by the engineer Ilse Marten in 1871.",
                "score": 0.9,
            }
        ]
    }

    class FakeClient:
        def __init__(self, api_key=None, **kwargs):
            assert api_key == "tvly-test"

        def search(self, query, **options):
            calls.append((query, options))
            if query == "fail":
                raise tavily.UsageLimitExceededError("quota exceeded")
            if query == "bad key":
                raise tavily.InvalidAPIKeyError("invalid key")
            return response

    class FakeAsyncClient(FakeClient):
        async def search(self, query, **options):
            return FakeClient.search(self, query, **options)

    monkeypatch.setattr(tavily, "TavilyClient", FakeClient)
    monkeypatch.setattr(tavily, "AsyncTavilyClient", FakeAsyncClient)
    tool = TavilySearchTool(api_key="tvly-test", max_results=3)
    text = tool.invoke({"query": "Varnholm lighthouse"})
    assert text == (
        "[https://example.org/varnholm] Varnholm Lighthouse — "
        "Designed by the engineer Ilse Marten in 1871."
    )
    assert calls[0][1]["max_results"] == 3
    assert await tool.ainvoke({"query": "Varnholm lighthouse"}) == text
    assert "Web search failed" in tool.invoke({"query": "fail"})
    with pytest.raises(SearchUnavailable, match="API key"):
        await tool.ainvoke({"query": "bad key"})


# --------------------------------------------------------------------- open_page


def test_open_page_pages_through_a_corpus_document():
    sentences = [f"Sentence number {i} of the long report." for i in range(300)]
    document = CorpusDocument(id="report", title="Long report", text=" ".join(sentences))
    tool = OpenPageTool(corpus=Corpus([document]), page_chars=4000)
    first = tool.invoke({"target": "report"})
    assert first.startswith("[Long report] page 1 of 3\n\n")
    assert "Sentence number 0 " in first
    pages = [tool.invoke({"target": "report", "page": page}) for page in (1, 2, 3)]
    bodies = [page.split("\n\n", 1)[1] for page in pages]
    assert all(len(body) <= 4000 for body in bodies)
    assert " ".join(bodies) == document.text  # pages cut at spaces, nothing lost
    assert pages[2].startswith("[Long report] page 3 of 3")
    assert "does not exist" in tool.invoke({"target": "report", "page": 4})
    assert "does not exist" in tool.invoke({"target": "report", "page": 0})


def test_open_page_unknown_id_is_a_clear_message():
    tool = OpenPageTool(corpus=small_corpus())
    reply = tool.invoke({"target": "no-such-doc"})
    assert "Unknown document 'no-such-doc'" in reply
    assert "doc_id" in reply
    assert "full URL" in OpenPageTool().invoke({"target": "lighthouse"})


def test_open_page_accepts_a_title_for_an_id():
    tool = OpenPageTool(corpus=small_corpus())
    assert tool.invoke({"target": "Varnholm Lighthouse"}).startswith("[Varnholm Lighthouse] page 1")


def test_open_page_reads_a_url_page_by_page_and_downloads_once(web_server):
    site, base_url, requests = web_server
    paragraphs = "\n".join(
        f"<p>Paragraph {i}: the keeper of the Varnholm lighthouse logged the weather.</p>"
        for i in range(120)
    )
    (site / "keeper.html").write_text(
        f"<html><head><title>Keeper's log</title></head><body><article><h1>Keeper's log</h1>"
        f"{paragraphs}</article></body></html>",
        encoding="utf-8",
    )
    tool = OpenPageTool(page_chars=2000)
    url = f"{base_url}/keeper.html"
    first = tool.invoke({"target": url})
    header = first.splitlines()[0]
    assert header.startswith("[Keeper's log] page 1 of ")
    total = int(header.rsplit(" ", 1)[1])
    assert total >= 3
    assert "Paragraph 0:" in first
    last = tool.invoke({"target": url, "page": total})
    assert "Paragraph 119:" in last
    assert requests == ["/keeper.html"]  # paging reuses the download

    dead = tool.invoke({"target": f"{base_url}/missing.html"})
    assert dead.startswith(f"Could not open {base_url}/missing.html")
    assert "404" in dead


# --------------------------------------------------------------------- read_pdf


def test_read_pdf_reads_a_page_of_a_file_and_of_a_url(tmp_path, web_server):
    pages = ["Annual report of the Varnholm lighthouse.", "Page two: the keeper was Jonas Brekke."]
    pdf_path = tmp_path / "report.pdf"
    pdf_path.write_bytes(make_pdf(pages, title="Lighthouse Report"))
    tool = ReadPdfTool()
    second = tool.invoke({"source": str(pdf_path), "page": 2})
    assert second == "[Lighthouse Report] page 2 of 2\n\nPage two: the keeper was Jonas Brekke."
    assert "does not exist" in tool.invoke({"source": str(pdf_path), "page": 3})

    site, base_url, _ = web_server
    (site / "report.pdf").write_bytes(make_pdf(pages))
    first = tool.invoke({"source": f"{base_url}/report.pdf"})
    assert first.startswith("[")
    assert "page 1 of 2" in first
    assert "Annual report of the Varnholm lighthouse." in first


def test_read_pdf_cuts_long_pages_and_says_so(tmp_path):
    line = "The lighthouse keeper recorded the wind and the visibility every hour."
    pdf_path = tmp_path / "long.pdf"
    pdf_path.write_bytes(make_pdf(["\n".join([line] * 40)]))
    reply = ReadPdfTool(page_chars=500).invoke({"source": str(pdf_path)})
    body = reply.split("\n\n", 1)[1]
    assert body.startswith(line)
    assert "more characters on this page cut]" in body
    assert len(body) < 600


def test_read_pdf_reports_encrypted_broken_and_missing_files(tmp_path):
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["Secret page."]))))
    writer.encrypt("secret", algorithm="RC4-128")
    encrypted = tmp_path / "locked.pdf"
    with encrypted.open("wb") as out:
        writer.write(out)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\nthis is not a real pdf body")
    tool = ReadPdfTool()
    locked_reply = tool.invoke({"source": str(encrypted)})
    assert locked_reply.startswith(f"Could not read the PDF {encrypted}")
    assert "password" in locked_reply
    assert tool.invoke({"source": str(broken)}).startswith(f"Could not read the PDF {broken}")
    assert "No PDF file" in tool.invoke({"source": str(tmp_path / "absent.pdf")})


# --------------------------------------------------------------------- inspect_image


def test_inspect_image_sends_a_downscaled_standard_image_block(tmp_path):
    image_path = write_png(tmp_path / "chart.png")
    model = ScriptedChatModel(rules=[Rule("tallest bar", "The tallest bar shows 42.")])
    tool = InspectImageTool(model=model)
    reply = tool.invoke({"source": str(image_path), "question": "What does the tallest bar show?"})
    assert reply == "The tallest bar shows 42."
    prompt = model.calls[0]
    blocks = prompt[-1].content_blocks
    image_blocks = [block for block in blocks if block["type"] == "image"]
    assert len(image_blocks) == 1
    assert image_blocks[0]["mime_type"] == "image/png"
    from PIL import Image

    sent = Image.open(io.BytesIO(base64.b64decode(image_blocks[0]["base64"])))
    assert sent.size == (1024, 512)  # longer side capped by image_max_side
    assert any(b["type"] == "text" and "tallest bar" in b["text"] for b in blocks)


async def test_inspect_image_async_and_errors(tmp_path):
    image_path = write_png(tmp_path / "chart.png", size=(300, 200))
    model = ScriptedChatModel(rules=[Rule("tallest bar", "42")])
    tool = InspectImageTool(model=model)
    assert await tool.ainvoke({"source": str(image_path), "question": "the tallest bar?"}) == "42"
    text_file = tmp_path / "notes.txt"
    text_file.write_text("Just some notes, not a picture.", encoding="utf-8")
    assert "is not an image" in tool.invoke({"source": str(text_file), "question": "what?"})
    missing = tool.invoke({"source": str(tmp_path / "nope.png"), "question": "what?"})
    assert missing.startswith(f"Could not load the image {tmp_path / 'nope.png'}")
    assert len(model.calls) == 1  # no model call for images that did not load


def test_inspect_image_needs_a_model_and_builds_it_lazily(tmp_path):
    with pytest.raises(ValueError, match="model"):
        InspectImageTool()
    built: list[int] = []

    def factory():
        built.append(1)
        return IMAGE_MODEL

    tool = InspectImageTool(model_factory=factory)
    assert built == []
    image_path = write_png(tmp_path / "chart.png", size=(64, 64))
    tool.invoke({"source": str(image_path), "question": "the tallest bar?"})
    tool.invoke({"source": str(image_path), "question": "the tallest bar?"})
    assert built == [1]


# --------------------------------------------------------------------- build_tools


def records() -> list[DocumentRecord]:
    return [
        DocumentRecord(
            id=document.id,
            source=f"text:{document.id}",
            kind="text",
            identifier=document.title,
            chunks=[document.text],
        )
        for document in (LIGHTHOUSE, ORCHID)
    ]


def test_build_tools_local_over_run_documents_resolves_no_model_at_build(tmp_path):
    # An unresolvable agent model proves that nothing resolves it while building.
    context = Context(agent_model="tests.test_tools:NO_SUCH_MODEL", data_dir=str(tmp_path))
    tools = build_tools(context, records())
    assert [tool.name for tool in tools] == ["search", "open_page", "read_pdf", "inspect_image"]
    search, open_page = tools[0], tools[1]
    assert isinstance(search, LocalSearchTool)
    assert search.invoke({"query": "hawk moth"}).startswith("[orchid] Blue ghost orchid — ")
    assert open_page.invoke({"target": "orchid"}).startswith("[Blue ghost orchid] page 1 of 1")
    assert not (tmp_path / "indexes").exists()  # run documents are indexed in memory only


def test_build_tools_uses_the_context_settings(tmp_path):
    import json

    corpus_path = tmp_path / "corpus.jsonl"
    corpus_path.write_text(
        "".join(
            json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n"
            for d in (LIGHTHOUSE, ORCHID)
        ),
        encoding="utf-8",
    )
    context = Context(
        corpus_path=str(corpus_path),
        data_dir=str(tmp_path / "data"),
        search_results=1,
        page_chars=500,
        agent_model="tests.test_tools:IMAGE_MODEL",
        image_max_side=256,
    )
    search, open_page, read_pdf, inspect_image = build_tools(context, records()[:1])
    assert search.max_results == 1
    assert len(search.invoke({"query": "lighthouse orchid moth"}).splitlines()) == 1
    assert open_page.page_chars == 500 and read_pdf.page_chars == 500
    assert open_page.invoke({"target": "lighthouse"}).startswith("[Varnholm Lighthouse]")
    assert list((tmp_path / "data" / "indexes").glob("*/meta.json"))
    assert inspect_image.load_settings.image_max_side == 256
    image_path = write_png(tmp_path / "chart.png", size=(600, 300))
    answer = inspect_image.invoke({"source": str(image_path), "question": "the tallest bar?"})
    assert answer == "The tallest bar shows 42."


def test_build_tools_tavily_backend(monkeypatch):
    monkeypatch.delenv("TAVILY_API_KEY", raising=False)
    tools = build_tools(Context(search_backend="tavily", search_results=7), records())
    assert isinstance(tools[0], TavilySearchTool)
    assert tools[0].max_results == 7
    assert tools[1].corpus is None


# --------------------------------------------------------------------- in an agent


async def test_tools_round_trip_inside_create_agent():
    model = ScriptedChatModel(
        rules=[
            Rule(
                "Who designed", tool_call("search", query="Varnholm lighthouse"), after_tool=False
            ),
            Rule(r"page 1 of 1", "Ilse Marten designed the Varnholm Lighthouse.", after_tool=True),
            Rule(r"\[lighthouse\]", tool_call("open_page", target="lighthouse"), after_tool=True),
        ]
    )
    tools = build_tools(Context(agent_model="tests.test_tools:IMAGE_MODEL"), records())
    agent = create_agent(model, tools)
    result = await agent.ainvoke(
        {"messages": [HumanMessage("Who designed the Varnholm Lighthouse?")]}
    )
    tool_messages = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert [m.name for m in tool_messages] == ["search", "open_page"]
    assert tool_messages[0].text.startswith("[lighthouse] Varnholm Lighthouse — ")
    assert tool_messages[0].artifact[0]["doc_id"] == "lighthouse"
    assert tool_messages[1].text.startswith("[Varnholm Lighthouse] page 1 of 1")
    assert result["messages"][-1].text == "Ilse Marten designed the Varnholm Lighthouse."
