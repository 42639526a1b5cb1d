"""Run configuration: the context schema that Studio renders as a form.

Every field has a description (Studio shows it) and falls back to an environment variable
``TASKCRAFT_<FIELD_NAME>`` when it is left at its default, as in langchain-ai/react-agent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

ENV_PREFIX = "TASKCRAFT_"

_MODEL_HELP = (
    " Either `provider:model` (any provider LangChain's `init_chat_model` knows, e.g. "
    "`openai:gpt-4.1-mini`, `anthropic:claude-sonnet-4-5`, `ollama:qwen3`) or "
    "`package.module:attribute` naming a BaseChatModel instance or a factory returning one."
)

Role = Literal["generator", "agent", "judge"]


@dataclass(kw_only=True)
class Context:
    """Configuration of a TaskCraft run (models, search, limits and acceptance rules)."""

    generator_model: Annotated[str, {"__template_metadata__": {"kind": "llm"}}] = field(
        default="openai:gpt-4.1-mini",
        metadata={
            "description": "Model that extracts conclusions and writes questions." + _MODEL_HELP
        },
    )
    agent_model: Annotated[str, {"__template_metadata__": {"kind": "llm"}}] = field(
        default="openai:gpt-4.1-mini",
        metadata={
            "description": "Model that answers questions, alone and as the tool-using verifier "
            "agent." + _MODEL_HELP
        },
    )
    judge_model: Annotated[str, {"__template_metadata__": {"kind": "llm"}}] = field(
        default="openai:gpt-4.1-mini",
        metadata={
            "description": "Model that judges answers against the golden answer and checks "
            "extensions." + _MODEL_HELP
        },
    )
    base_url: str = field(
        default="",
        metadata={
            "description": "OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp, a proxy) used "
            "for every `openai:` model, e.g. `http://localhost:8000/v1`. Empty: the provider's "
            "own endpoint."
        },
    )
    temperature: float = field(
        default=0.2,
        metadata={"description": "Sampling temperature for all roles."},
    )
    seed: int | None = field(
        default=None,
        metadata={
            "description": "Sampling seed sent with every request to `openai:` models (OpenAI, "
            "and OpenAI-compatible servers such as vLLM, which then sample reproducibly); "
            "empty: none. Recorded in the run info and every dataset manifest."
        },
    )
    structured_output_method: Literal["function_calling", "json_schema", "json_mode"] = field(
        default="function_calling",
        metadata={
            "description": "How structured replies are requested. `function_calling` works with "
            "most providers and local servers; `json_schema` uses constrained decoding where "
            "the server supports it."
        },
    )
    max_retries: int = field(
        default=4,
        metadata={
            "description": "Retries with exponential backoff for provider errors (429, 5xx, "
            "timeouts, dropped connections) before the item fails."
        },
    )
    request_timeout: float = field(
        default=120.0,
        metadata={"description": "Seconds before one LLM request times out."},
    )
    requests_per_minute: float = field(
        default=0.0,
        metadata={
            "description": "Requests per minute allowed across all roles (shared rate limiter); "
            "0 means unlimited."
        },
    )
    tokens_per_minute: float = field(
        default=0.0,
        metadata={
            "description": "Tokens per minute (input and output) allowed across all roles in a "
            "batch run: each request waits for its estimated prompt size in a shared token "
            "bucket, corrected with the reported usage; 0 means unlimited."
        },
    )
    max_llm_calls: int = field(
        default=0,
        metadata={
            "description": "LLM requests in flight at once across all documents and roles in a "
            "batch run (per process); 0 means unlimited."
        },
    )
    structured_output_retries: int = field(
        default=2,
        metadata={
            "description": "Extra attempts when a structured reply does not parse; after them "
            "the item is rejected with reason `llm_output_invalid`."
        },
    )
    search_backend: Literal["local", "tavily"] = field(
        default="local",
        metadata={
            "description": "`local`: BM25 over `corpus_path` (or over the run's own documents "
            "when it is empty). `tavily`: web search (needs TAVILY_API_KEY)."
        },
    )
    corpus_path: str = field(
        default="",
        metadata={
            "description": "Folder of documents or JSONL of {id, title, text} that the local "
            "search tool indexes. Empty: the run's own input documents."
        },
    )
    search_results: int = field(
        default=5,
        metadata={"description": "Results returned by one search call."},
    )
    page_chars: int = field(
        default=4000,
        metadata={"description": "Characters returned by one page of `open_page`/`read_pdf`."},
    )
    chunk_chars: int = field(
        default=4000,
        metadata={"description": "Characters per document chunk sent to the generator."},
    )
    max_chunks_per_document: int = field(
        default=4,
        metadata={"description": "Chunks of one document used for candidate extraction."},
    )
    max_candidates_per_document: int = field(
        default=5,
        metadata={"description": "Atomic candidates kept per document before verification."},
    )
    pdf_max_pages: int = field(
        default=50,
        metadata={"description": "Pages read from one PDF."},
    )
    image_max_side: int = field(
        default=1024,
        metadata={
            "description": "Images are downscaled so that their longer side is at most this many "
            "pixels before being sent to a multimodal model."
        },
    )
    judge_samples: int = field(
        default=1,
        metadata={
            "description": "Judge verdicts sampled per answer; the score is the share of "
            "verdicts that find the answer correct."
        },
    )
    agent_max_steps: int = field(
        default=8,
        metadata={"description": "Model calls the verifier agent may make for one question."},
    )
    llm_only_max_score: float = field(
        default=0.5,
        metadata={
            "description": "A task is rejected when the model WITHOUT tools scores at least this "
            "(it does not need tools)."
        },
    )
    agent_min_score: float = field(
        default=0.5,
        metadata={
            "description": "A task is accepted only when the tool-using agent scores at least "
            "this (it is solvable)."
        },
    )
    target_hops: int = field(
        default=1,
        metadata={
            "description": "Depth target: hops of the final task (1 = atomic only). Each depth "
            "hop adds one search step before the atomic fact."
        },
    )
    target_width: int = field(
        default=1,
        metadata={
            "description": "Width target: verified tasks merged into one question (1 = none)."
        },
    )
    extension_strategy: Literal["depth", "width", "both"] = field(
        default="depth",
        metadata={
            "description": "Which extensions run after atomic verification: `depth` hops, "
            "`width` merges, or `both` (depth first, then width over the deepened tasks)."
        },
    )
    width_scope: Literal["run", "document"] = field(
        default="run",
        metadata={
            "description": "Which tasks a batch run (`taskcraft generate`) merges in width: "
            "`run` groups accepted tasks across documents once the documents are done; "
            "`document` merges only tasks of the same document. A graph run always merges "
            "across its own input documents."
        },
    )
    max_hop_attempts: int = field(
        default=3,
        metadata={
            "description": "Attempts (superset searches) allowed for each depth hop before the "
            "task leaves the loop at the depth it reached."
        },
    )
    max_width_attempts: int = field(
        default=3,
        metadata={"description": "Attempts allowed for each width merge."},
    )
    verify_final_task: bool = field(
        default=False,
        metadata={
            "description": "Also run the final extended question through the verifier agent and "
            "record its whole trajectory (off by default, as in the paper)."
        },
    )
    max_concurrency: int = field(
        default=8,
        metadata={"description": "Candidates verified (and extended) at the same time."},
    )
    data_dir: str = field(
        default=".taskcraft",
        metadata={"description": "Folder for SQLite state, caches and search indexes."},
    )

    def __post_init__(self) -> None:
        """Take `TASKCRAFT_<NAME>` from the environment for fields left at their default."""
        hints = get_type_hints(type(self), include_extras=True)
        for f in fields(self):
            if not f.init or getattr(self, f.name) != f.default:
                continue
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                setattr(self, f.name, parse_field_value(raw, hints[f.name], f.name))

    def model_spec(self, role: Role) -> str:
        """Return the model spec configured for a role."""
        return str(getattr(self, f"{role}_model"))


def parse_field_value(raw: str, annotation: Any, name: str) -> Any:
    """Turn a string (environment, command line) into the field's type."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    options = get_args(annotation)
    if type(None) in options and get_origin(annotation) in (Union, UnionType):  # `T | None`
        if raw.strip().lower() in {"", "none", "null"}:
            return None
        (annotation,) = (option for option in options if option is not type(None))
    if annotation is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if annotation is int:
        return int(raw)
    if annotation is float:
        return float(raw)
    if get_origin(annotation) is Literal and raw not in get_args(annotation):
        raise ValueError(
            f"{ENV_PREFIX}{name.upper()}={raw!r}: expected one of {get_args(annotation)}"
        )
    return raw
