"""Document loaders: every input kind, its limits and its errors (offline; local server only)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.loaders import (
    LoadError,
    LoadSettings,
    detect_language,
    encode_image,
    expand_sources,
    fetch_url,
    html_to_text,
    load_document,
    load_text,
    pdf_pages,
    split_chunks,
)
from langgraph_taskcraft.records import content_id
from tests.loader_fixtures import (
    encrypt_pdf,
    free_port,
    image_bytes,
    make_pdf,
    png_declaring,
    serve,
)

ENGLISH = (
    "The harbour town of Kelmsby was founded by fishermen in the twelfth century. Its stone "
    "lighthouse, completed in 1871, still guides boats past the sandbanks at the river mouth, "
    "and the annual herring festival draws visitors from the whole coast."
)
GERMAN = (
    "Die kleine Stadt am Fluss wurde im zwölften Jahrhundert von Fischern gegründet. Der "
    "steinerne Leuchtturm wurde im Jahr 1871 fertiggestellt und weist den Booten noch heute "
    "den Weg an den Sandbänken vorbei, während das jährliche Heringsfest viele Besucher anzieht."
)

HERON_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Blue Herons of Lake Vell | Bird Notes</title></head>
<body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/about">About us</a></li>
<li><a href="/shop">Shop our calendars</a></li></ul></nav>
<header><div class="logo">Bird Notes</div></header>
<main><article>
<h1>Blue Herons of Lake Vell</h1>
<p>The blue herons of Lake Vell nest in the reed beds on the northern shore every spring.
Volunteers counted 214 nests in the 2019 survey, the highest number since records began.</p>
<p>Their main prey is the silver minnow, which is abundant in the shallow bays of the lake.
The herons hunt mostly at dawn and dusk and rest on the old pier at midday.</p>
<p>The colony is protected by the Vell Wetland Trust, which closes the northern path to
walkers from March to July so that the birds are not disturbed while they breed.</p>
</article></main>
<footer><p>Copyright 2024 Bird Notes. All rights reserved.</p>
<p><a href="/privacy">Privacy policy</a> | <a href="/cookies">Cookie settings</a></p></footer>
</body></html>
"""


def load_error(source: str | Path, settings: LoadSettings | None = None) -> LoadError:
    with pytest.raises(LoadError) as caught:
        load_document(str(source), settings or LoadSettings())
    return caught.value


# --- settings and errors --------------------------------------------------------------------


def test_settings_from_context() -> None:
    context = Context(chunk_chars=1234, pdf_max_pages=7, image_max_side=300)
    settings = LoadSettings.from_context(context)
    assert (settings.chunk_chars, settings.pdf_max_pages, settings.image_max_side) == (1234, 7, 300)
    assert settings.image_max_pixels == LoadSettings().image_max_pixels


def test_load_error_message_names_the_source(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.txt"
    error = load_error(missing)
    assert error.error == "not_found"
    assert str(error) == error.message
    assert str(missing) in str(error)
    assert "\n" not in str(error)


# --- text and markdown ----------------------------------------------------------------------


def test_text_file_uses_first_line_as_identifier(tmp_path: Path) -> None:
    path = tmp_path / "kelmsby.txt"
    path.write_text(f"Kelmsby harbour\n\n{ENGLISH}\n", encoding="utf-8")
    document = load_document(str(path))
    assert document.kind == "text"
    assert document.identifier == "Kelmsby harbour"
    assert document.source == str(path)
    assert document.language == "en"
    assert "lighthouse, completed in 1871" in document.text
    assert document.id == content_id(document.text)


def test_text_file_in_legacy_encoding_is_decoded(tmp_path: Path) -> None:
    path = tmp_path / "legacy.txt"
    path.write_bytes(("Café Müller\n\n" + GERMAN).encode("latin-1"))
    document = load_document(str(path))
    assert document.identifier == "Café Müller"
    assert "Sandbänken" in document.text


def test_markdown_identifier_is_first_heading(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text(
        "Draft, do not circulate.\n\n## The Kelmsby Lighthouse\n\n" + ENGLISH, encoding="utf-8"
    )
    document = load_document(str(path))
    assert document.kind == "markdown"
    assert document.identifier == "The Kelmsby Lighthouse"
    assert document.metadata["identifier_source"] == "heading"


def test_markdown_front_matter_title_and_setext_heading(tmp_path: Path) -> None:
    front = tmp_path / "front.markdown"
    front.write_text('---\ntitle: "Harbour Notes"\n---\n\n# Other\n\n' + ENGLISH)
    assert load_document(str(front)).identifier == "Harbour Notes"
    assert "title:" not in load_document(str(front)).text
    setext = tmp_path / "setext.md"
    setext.write_text("Kelmsby Herring Festival\n========================\n\n" + ENGLISH)
    assert load_document(str(setext)).identifier == "Kelmsby Herring Festival"


def test_text_without_title_line_falls_back_to_file_name(tmp_path: Path) -> None:
    path = tmp_path / "one_paragraph.txt"
    path.write_text(ENGLISH * 2)  # the first line is a long paragraph, not a title
    assert load_document(str(path)).identifier == "one_paragraph.txt"


def test_load_text_identifier_and_empty_text() -> None:
    document = load_text("Kelmsby\n" + ENGLISH)
    assert document.identifier == "Kelmsby"
    assert document.source == "text:"
    assert load_text(ENGLISH, identifier="Given name").identifier == "Given name"
    long_opening = load_text(ENGLISH * 2, source="text:7")
    assert long_opening.source == "text:7"
    assert long_opening.identifier.startswith("The harbour town of Kelmsby")
    assert len(long_opening.identifier) <= 81
    with pytest.raises(LoadError) as caught:
        load_text("  \n\n ", source="text:3")
    assert caught.value.error == "empty_document"
    assert "text:3" in str(caught.value)


def test_chunks_split_at_paragraph_boundaries() -> None:
    paragraphs = [f"Paragraph {n}. " + ENGLISH for n in range(12)]
    text = "\n\n".join(paragraphs)
    chunks = split_chunks(text, 700)
    assert len(chunks) > 3
    assert all(len(chunk) <= 700 for chunk in chunks)
    for chunk in chunks:  # every chunk is made of whole paragraphs
        assert all(part in paragraphs for part in chunk.split("\n\n"))
    assert "\n\n".join(chunks) == text
    document = load_text(text, LoadSettings(chunk_chars=700))
    assert document.chunks == chunks


def test_language_detection() -> None:
    assert detect_language(ENGLISH) == "en"
    assert detect_language(GERMAN) == "de"
    assert detect_language("Short note.") is None
    assert load_text("Stadt\n" + GERMAN).language == "de"


# --- HTML -----------------------------------------------------------------------------------


def test_html_file_boilerplate_removed_and_title_found(tmp_path: Path) -> None:
    path = tmp_path / "herons.html"
    path.write_text(HERON_PAGE, encoding="utf-8")
    document = load_document(str(path))
    assert document.kind == "html"
    assert document.identifier == "Blue Herons of Lake Vell"
    assert "214 nests" in document.text
    assert "Vell Wetland Trust" in document.text
    for boilerplate in ("About us", "Shop our calendars", "Privacy policy", "All rights reserved"):
        assert boilerplate not in document.text
    assert document.language == "en"


def test_html_to_text_keeps_short_pages_and_uses_title_tag() -> None:
    text, title = html_to_text(
        "<html><head><title>Tiny &amp; Co</title></head><body></body></html>"
    )
    assert (text, title) == ("", "Tiny & Co")
    text, title = html_to_text("<p>Only a fragment about herons.</p>")
    assert "fragment about herons" in text
    assert title is None


def test_html_without_title_uses_file_name(tmp_path: Path) -> None:
    path = tmp_path / "untitled.htm"
    path.write_text("<html><body><p>" + ENGLISH + "</p></body></html>")
    document = load_document(str(path))
    assert document.identifier == "untitled.htm"
    assert "Kelmsby" in document.text


# --- URLs -----------------------------------------------------------------------------------


def test_urls_are_typed_by_content_type() -> None:
    pdf = make_pdf(["Kelmsby lighthouse report.\n" + ENGLISH[:80]], title="Lighthouse Report")
    routes = {
        "/herons": (200, "text/html; charset=utf-8", HERON_PAGE.encode(), {}),
        "/download?id=3": (200, "application/pdf", pdf, {}),
        "/untyped.pdf": (200, "application/octet-stream", pdf, {}),
        "/old": (301, "text/plain", b"", {"Location": "/herons"}),
        "/chart": (200, "image/png", image_bytes((40, 20)), {}),
    }
    with serve(routes) as base:
        page = load_document(f"{base}/herons")
        assert (page.kind, page.identifier, page.source) == (
            "html",
            "Blue Herons of Lake Vell",
            f"{base}/herons",
        )
        assert page.metadata["url"] == f"{base}/herons"
        assert "Privacy policy" not in page.text
        report = load_document(f"{base}/download?id=3")
        assert (report.kind, report.identifier) == ("pdf", "Lighthouse Report")
        assert "Kelmsby lighthouse report." in report.text
        assert load_document(f"{base}/untyped.pdf").kind == "pdf"
        assert load_document(f"{base}/old").identifier == "Blue Herons of Lake Vell"
        chart = load_document(f"{base}/chart")
        assert (chart.kind, chart.identifier, chart.images[0].width) == ("image", "chart", 40)


def test_fetch_url_errors() -> None:
    with serve({"/big": (200, "text/plain", b"x" * 5000, {})}) as base:
        content, content_type = fetch_url(f"{base}/big", LoadSettings())
        assert (len(content), content_type) == (5000, "text/plain")
        with pytest.raises(LoadError) as caught:
            fetch_url(f"{base}/gone", LoadSettings())
        assert caught.value.error == "http_error"
        assert "404" in str(caught.value) and f"{base}/gone" in str(caught.value)
        with pytest.raises(LoadError) as caught:
            fetch_url(f"{base}/big", LoadSettings(max_bytes=1000))
        assert caught.value.error == "too_large"
        assert load_error(f"{base}/gone").error == "http_error"

    refused = f"http://127.0.0.1:{free_port()}/page"
    error = load_error(refused, LoadSettings(timeout=5))
    assert error.error == "http_error"
    assert refused in str(error)


def test_url_with_unsupported_content_type() -> None:
    with serve({"/data": (200, "application/zip", b"PK\x03\x04zipzip", {})}) as base:
        error = load_error(f"{base}/data")
    assert error.error == "unsupported_type"
    assert "application/zip" in str(error)


# --- PDF ------------------------------------------------------------------------------------


def test_pdf_text_and_metadata_title(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(
        make_pdf(
            ["Annual report of the Kelmsby harbour.\n" + ENGLISH[:90], "Second page: 37 boats."],
            title="Kelmsby Harbour Annual Report",
        )
    )
    document = load_document(str(path))
    assert document.kind == "pdf"
    assert document.identifier == "Kelmsby Harbour Annual Report"
    assert document.metadata["identifier_source"] == "metadata"
    assert (document.metadata["pages"], document.metadata["pages_read"]) == (2, 2)
    assert "Annual report of the Kelmsby harbour." in document.text
    assert "Second page: 37 boats." in document.text


def test_pdf_title_from_largest_font_then_file_name(tmp_path: Path) -> None:
    headed = tmp_path / "headed.pdf"
    headed.write_bytes(make_pdf(["Body text of the study.\n" + ENGLISH[:80]], heading="Herons"))
    document = load_document(str(headed))
    assert (document.identifier, document.metadata["identifier_source"]) == (
        "Herons",
        "largest_font",
    )
    prose = tmp_path / "prose.pdf"
    prose.write_bytes(make_pdf(["The town was founded early. It grew fast.\nMore prose here."]))
    assert load_document(str(prose)).identifier == "prose.pdf"


def test_pdf_page_limit(tmp_path: Path) -> None:
    data = make_pdf([f"Content of page number {n} about the harbour." for n in range(1, 6)])
    pages, title = pdf_pages(data, LoadSettings(pdf_max_pages=2))
    assert len(pages) == 2
    assert "page number 2" in pages[1]
    assert title == "Content of page number 1 about the harbour."  # first line of page 1
    path = tmp_path / "five.pdf"
    path.write_bytes(data)
    document = load_document(str(path), LoadSettings(pdf_max_pages=3))
    assert (document.metadata["pages"], document.metadata["pages_read"]) == (5, 3)
    assert "page number 3" in document.text and "page number 4" not in document.text


def test_encrypted_pdf(tmp_path: Path) -> None:
    plain = make_pdf(["Secret harbour accounts for 1871."], title="Accounts")
    locked = tmp_path / "locked.pdf"
    locked.write_bytes(encrypt_pdf(plain, "secret"))
    error = load_error(locked)
    assert error.error == "pdf_encrypted"
    assert str(locked) in str(error)
    # Encrypted only against editing: the empty user password opens it.
    restricted = tmp_path / "restricted.pdf"
    restricted.write_bytes(encrypt_pdf(plain, ""))
    assert "harbour accounts" in load_document(str(restricted)).text


def test_empty_and_garbage_pdfs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    assert load_error(empty).error == "pdf_empty"
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(os.urandom(4096))
    assert load_error(garbage).error == "pdf_malformed"
    fake_header = tmp_path / "fake_header.pdf"
    fake_header.write_bytes(b"%PDF-1.7\n" + os.urandom(4096))
    assert load_error(fake_header).error == "pdf_malformed"


@pytest.mark.parametrize("keep", [0.2, 0.45, 0.7, 0.9, 0.99])
def test_truncated_pdf_gives_partial_text_or_a_clear_error(tmp_path: Path, keep: float) -> None:
    data = make_pdf([f"Page {n} tells of the lighthouse keepers." for n in range(1, 5)])
    path = tmp_path / "cut.pdf"
    path.write_bytes(data[: int(len(data) * keep)])
    try:
        document = load_document(str(path))
    except LoadError as error:
        assert error.error in {"pdf_malformed", "empty_document"}
        assert str(path) in str(error)
    else:
        assert "Page 1 tells of the lighthouse keepers." in document.text
        assert document.metadata["repaired"] is True


def test_truncated_pdf_recovers_pages_before_the_cut(tmp_path: Path) -> None:
    data = make_pdf([f"Page {n} tells of the lighthouse keepers." for n in range(1, 5)])
    path = tmp_path / "no_xref.pdf"
    path.write_bytes(data[: data.index(b"xref")])
    document = load_document(str(path))
    assert "Page 4 tells of the lighthouse keepers." in document.text
    assert document.metadata["repaired"] is True


def test_pdf_without_text_is_an_empty_document(tmp_path: Path) -> None:
    path = tmp_path / "blank.pdf"
    path.write_bytes(make_pdf(["", ""]))
    error = load_error(path)
    assert error.error == "empty_document"
    assert "OCR" in str(error)


# --- images ---------------------------------------------------------------------------------


def test_png_is_downscaled(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    path.write_bytes(image_bytes((3000, 1500)))
    document = load_document(str(path), LoadSettings(image_max_side=800))
    assert (document.kind, document.identifier) == ("image", "chart")
    assert document.chunks == ["Image: chart.png, 3000x1500"]
    (image,) = document.images
    assert (image.width, image.height, image.mime_type) == (800, 400, "image/png")
    decoded = Image.open(io.BytesIO(base64.b64decode(image.base64)))
    assert (decoded.format, decoded.size) == ("PNG", (800, 400))
    assert document.id == content_id(document.text, base64.b64decode(image.base64))


def test_jpeg_stays_jpeg_and_small_images_keep_their_size() -> None:
    image, _, original = encode_image(image_bytes((200, 120), "JPEG"), LoadSettings())
    assert (image.mime_type, image.width, image.height, original) == (
        "image/jpeg",
        200,
        120,
        (200, 120),
    )


def test_decompression_bombs_are_refused(tmp_path: Path) -> None:
    # A real 8000x8000 bilevel image: 64 M pixels, a few kB on disk.
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, format="PNG")
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb.getvalue())
    error = load_error(path)
    assert error.error == "image_too_large"
    assert "8000x8000" in str(error)
    # A header declaring 100000x100000 (beyond Pillow's own limit as well).
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_declaring(100_000, 100_000))
    assert load_error(huge).error == "image_too_large"
    # The limit is a setting.
    allowed = load_document(str(path), LoadSettings(image_max_pixels=10**8))
    assert (allowed.images[0].width, allowed.images[0].height) == (1024, 1024)


def test_unreadable_images(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image" * 20)
    assert load_error(garbage).error == "image_unreadable"
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(image_bytes((300, 200))[:300])
    assert load_error(truncated).error == "image_unreadable"


# --- sources --------------------------------------------------------------------------------


def test_expand_sources_folders_globs_urls_and_missing(tmp_path: Path) -> None:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / ".hidden").mkdir()
    for name in ("docs/b.md", "docs/a.TXT", "docs/sub/c.pdf", "docs/sub/d.png", "docs/e.html"):
        (tmp_path / name).write_text("x")
    for name in ("docs/script.py", "docs/.hidden/secret.md", "docs/sub/data.csv"):
        (tmp_path / name).write_text("x")
    docs = tmp_path / "docs"
    expected_folder = [
        str(docs / "a.TXT"),
        str(docs / "b.md"),
        str(docs / "e.html"),
        str(docs / "sub" / "c.pdf"),
        str(docs / "sub" / "d.png"),
    ]
    assert expand_sources([str(docs)]) == expected_folder
    assert expand_sources([str(docs / "**" / "*.md")]) == [str(docs / "b.md")]
    assert expand_sources([str(docs / "*")]) == expected_folder
    missing = str(tmp_path / "missing.pdf")
    no_match = str(tmp_path / "nothing-*.md")
    url = "https://example.org/page"
    assert expand_sources([url, missing, no_match, str(docs / "b.md"), str(docs), " "]) == [
        url,
        missing,
        no_match,
        str(docs / "b.md"),
        *[path for path in expected_folder if not path.endswith("b.md")],
    ]
    assert load_error(no_match).error == "not_found"


def test_unsupported_and_sniffed_files(tmp_path: Path) -> None:
    unknown = tmp_path / "archive.xyz"
    unknown.write_bytes(b"\x01\x02 binary payload")
    error = load_error(unknown)
    assert error.error == "unsupported_type"
    assert ".xyz" in str(error)
    assert load_error(tmp_path).error == "unsupported_type"  # a folder
    untyped_pdf = tmp_path / "REPORT"
    untyped_pdf.write_bytes(make_pdf(["Untyped file holding harbour text."], title="Untyped"))
    assert load_document(str(untyped_pdf)).kind == "pdf"


def test_file_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("word " * 1000)
    assert load_error(path, LoadSettings(max_bytes=1000)).error == "too_large"
