"""What a run costs: a price table, the cost of a usage table, and an estimate before a run.

Usage tables (`records.Usage`) are keyed `role:stage` (`generator:extract`,
`judge:agent_judgement`); the role picks the model from `models_by_role` (the run's
`generator_model`, `agent_model`, `judge_model`) and the model picks its price.

Prices are USD per one million tokens, input and output. `DEFAULT_PRICES` lists list prices of
common models as published by their providers (`PRICES_AS_OF`); they change, and contracts,
batch discounts and cached input differ, so pass your own with `load_prices(path_or_dict)`.
Models served by a local provider (`ollama:`) cost nothing unless a price is given.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from langgraph_taskcraft.context import Context
from langgraph_taskcraft.records import Usage

PRICES_AS_OF = "2025-10"


@dataclass(frozen=True)
class ModelPrice:
    """USD per one million input and output tokens."""

    input: float
    output: float

    def cost(self, input_tokens: int | float, output_tokens: int | float) -> float:
        """USD for this many tokens."""
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


PriceTable = dict[str, ModelPrice]
"""Model name (bare, e.g. `gpt-4.1-mini`, or a full spec, e.g. `openai:gpt-4.1-mini`) → price."""

DEFAULT_PRICES: PriceTable = {
    # OpenAI
    "gpt-5": ModelPrice(1.25, 10.00),
    "gpt-5-mini": ModelPrice(0.25, 2.00),
    "gpt-5-nano": ModelPrice(0.05, 0.40),
    "gpt-4.1": ModelPrice(2.00, 8.00),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40),
    "gpt-4o": ModelPrice(2.50, 10.00),
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "o3": ModelPrice(2.00, 8.00),
    "o3-mini": ModelPrice(1.10, 4.40),
    "o4-mini": ModelPrice(1.10, 4.40),
    # Anthropic
    "claude-opus-4-1": ModelPrice(15.00, 75.00),
    "claude-opus-4": ModelPrice(15.00, 75.00),
    "claude-sonnet-4-5": ModelPrice(3.00, 15.00),
    "claude-sonnet-4": ModelPrice(3.00, 15.00),
    "claude-3-7-sonnet": ModelPrice(3.00, 15.00),
    "claude-haiku-4-5": ModelPrice(1.00, 5.00),
    "claude-3-5-haiku": ModelPrice(0.80, 4.00),
    # Google (prompts up to 200k tokens)
    "gemini-2.5-pro": ModelPrice(1.25, 10.00),
    "gemini-2.5-flash": ModelPrice(0.30, 2.50),
    "gemini-2.5-flash-lite": ModelPrice(0.10, 0.40),
    # DeepSeek (cache-miss input)
    "deepseek-chat": ModelPrice(0.28, 0.42),
    "deepseek-reasoner": ModelPrice(0.28, 0.42),
}

FREE_PROVIDERS = frozenset({"ollama"})
"""Providers that run models locally: priced at zero unless the table names the model."""


class PriceNotFound(KeyError):
    """No price is known for a model (add it with `load_prices`)."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model

    def __str__(self) -> str:
        return (
            f"no price for model {self.model!r}; give one with load_prices("
            f'{{"{self.model}": {{"input": USD_PER_1M, "output": USD_PER_1M}}}})'
        )


def _parse_price(name: str, value: Any) -> ModelPrice:
    if isinstance(value, ModelPrice):
        return value
    if isinstance(value, Mapping):
        return ModelPrice(float(value["input"]), float(value["output"]))
    if isinstance(value, list | tuple) and len(value) == 2:
        return ModelPrice(float(value[0]), float(value[1]))
    raise ValueError(
        f"price of {name!r}: expected {{input, output}} or [input, output], got {value!r}"
    )


def load_prices(
    overrides: str | Path | Mapping[str, Any] | None = None,
    *,
    base: Mapping[str, Any] | None = None,
) -> PriceTable:
    """The default price table (or `base`) with `overrides` on top.

    `overrides` is a mapping or a `.json`/`.toml` file of `model: {input, output}` (USD per
    million tokens), optionally under a top-level `prices` or `models` key, e.g. in TOML::

        [prices."gpt-4.1-mini"]
        input = 0.40
        output = 1.60

    Keys may be bare model names or full specs (`openai:gpt-4.1-mini`).
    """
    table = {
        name: _parse_price(name, price)
        for name, price in (DEFAULT_PRICES if base is None else base).items()
    }
    if overrides is None:
        return table
    data: Any = overrides
    if isinstance(overrides, str | Path):
        path = Path(overrides)
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    if not isinstance(data, Mapping):
        raise ValueError(f"prices: expected a mapping of model to price, got {type(data).__name__}")
    for key in ("prices", "models"):
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    for name, price in data.items():
        table[str(name)] = _parse_price(str(name), price)
    return table


def _bare_model(spec: str) -> tuple[str, str]:
    """`openai:gpt-4.1` → (`openai`, `gpt-4.1`); a bare name has no provider."""
    provider, sep, name = spec.partition(":")
    if not sep or "." in provider:  # `package.module:attr` is not a provider spec
        return "", spec
    return provider, name


def price_of(model: str, prices: Mapping[str, ModelPrice] | None = None) -> ModelPrice:
    """The price of a model spec or name.

    Looks up the full spec, then the bare name, then the longest table name that the bare name
    extends with a `-` suffix (dated snapshots such as `gpt-4.1-mini-2025-04-14` or
    `claude-sonnet-4-5-20250929`). Local providers (`FREE_PROVIDERS`) cost nothing.

    Raises:
        PriceNotFound: when nothing matches.
    """
    table = DEFAULT_PRICES if prices is None else prices
    if model in table:
        return table[model]
    provider, name = _bare_model(model)
    if name in table:
        return table[name]
    prefixes = [key for key in table if name.startswith(key + "-")]
    if prefixes:
        return table[max(prefixes, key=len)]
    if provider in FREE_PROVIDERS:
        return ModelPrice(0.0, 0.0)
    raise PriceNotFound(model)


@dataclass(frozen=True)
class CostRow:
    """Usage and cost of one `role:stage` key."""

    role: str
    stage: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost: float | None
    """USD, or None when the model has no price."""


@dataclass
class CostSummary:
    """Cost per role and stage, per role, and in total."""

    rows: list[CostRow] = field(default_factory=list)
    unpriced_models: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """USD over every priced row."""
        return sum(row.cost or 0.0 for row in self.rows)

    def by_role(self) -> dict[str, CostRow]:
        """One row per role, summing its stages (`stage` is `*`)."""
        roles: dict[str, CostRow] = {}
        for row in self.rows:
            current = roles.get(row.role)
            if current is None:
                roles[row.role] = replace(row, stage="*")
                continue
            cost = None if current.cost is None or row.cost is None else current.cost + row.cost
            roles[row.role] = CostRow(
                row.role,
                "*",
                current.model,
                current.calls + row.calls,
                current.input_tokens + row.input_tokens,
                current.output_tokens + row.output_tokens,
                cost,
            )
        return roles

    def format_table(self) -> str:
        """A plain-text table: one line per role:stage, a subtotal per role, the total."""
        header = ("role:stage", "model", "calls", "input tok", "output tok", "USD")
        lines: list[tuple[str, ...]] = [header]

        def line(row: CostRow, label: str) -> tuple[str, ...]:
            usd = "n/a" if row.cost is None else f"{row.cost:.4f}"
            tokens = (str(row.calls), str(row.input_tokens), str(row.output_tokens))
            return (label, row.model, *tokens, usd)

        for role, subtotal in self.by_role().items():
            for row in self.rows:
                if row.role == role:
                    lines.append(line(row, f"{row.role}:{row.stage}"))
            lines.append(line(subtotal, f"{role} (all stages)"))
        calls = sum(row.calls for row in self.rows)
        input_tokens = sum(row.input_tokens for row in self.rows)
        output_tokens = sum(row.output_tokens for row in self.rows)
        total = f"{self.total:.4f}" + (" + unpriced" if self.unpriced_models else "")
        lines.append(("total", "", str(calls), str(input_tokens), str(output_tokens), total))
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        rendered = [
            "  ".join(
                cell.ljust(width) if i < 2 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in lines
        ]
        return "\n".join(rendered)


def summarize(
    usage: Usage,
    models_by_role: Mapping[str, str],
    prices: Mapping[str, ModelPrice] | None = None,
) -> CostSummary:
    """Cost of each `role:stage` usage key; models without a price get `cost=None`.

    A key without a `:` counts as role and stage at once; a role missing from
    `models_by_role` is shown with model `?` and no price.
    """
    summary = CostSummary()
    for key in sorted(usage):
        entry = usage[key]
        role, _, stage = key.partition(":")
        model = models_by_role.get(role, "?")
        try:
            cost: float | None = price_of(model, prices).cost(
                entry.input_tokens, entry.output_tokens
            )
        except PriceNotFound:
            cost = None
            if model not in summary.unpriced_models:
                summary.unpriced_models.append(model)
        row = CostRow(
            role=role,
            stage=stage or role,
            model=model,
            calls=entry.calls,
            input_tokens=entry.input_tokens,
            output_tokens=entry.output_tokens,
            cost=cost,
        )
        summary.rows.append(row)
    return summary


def cost(
    usage: Usage,
    models_by_role: Mapping[str, str],
    prices: Mapping[str, ModelPrice] | None = None,
) -> float:
    """USD spent by a usage table, given each role's model.

    Raises:
        PriceNotFound: when a role with usage has no model or its model has no price.
    """
    summary = summarize(usage, models_by_role, prices)
    if summary.unpriced_models:
        raise PriceNotFound(summary.unpriced_models[0])
    return summary.total


def models_by_role_of(config: Any) -> dict[str, str]:
    """`{"generator": ..., "agent": ..., "judge": ...}` from a `Context` or a config mapping."""
    values = _config_values(config)
    return {
        name.removesuffix("_model"): str(value)
        for name, value in values.items()
        if name.endswith("_model") and isinstance(value, str)
    }


def _config_values(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if is_dataclass(config) and not isinstance(config, type):
        return {f.name: getattr(config, f.name) for f in fields(config)}
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config: expected a Context or a mapping, got {type(config).__name__}")


@dataclass(frozen=True)
class StageFactors:
    """Average calls and tokens of one stage, per unit that triggers it."""

    calls: float
    input_tokens: float
    output_tokens: float


@dataclass(frozen=True)
class EstimateFactors:
    """Average factors of the cost model of `estimate` (override any of them).

    Token counts are per call. Rates are shares of items that go on to the next stage.
    """

    candidates_per_chunk: float = 3.0
    """Conclusions extracted from one chunk (before the per-document cap)."""
    extract_prompt_tokens: float = 700.0
    """Extraction prompt without the chunk (the chunk adds `chunk_chars / chars_per_token`)."""
    chars_per_token: float = 4.0
    extract_output_tokens: float = 400.0
    question: StageFactors = StageFactors(1.0, 900.0, 80.0)
    """Forming one question from a conclusion."""
    llm_only: StageFactors = StageFactors(1.0, 150.0, 60.0)
    """The agent model answering without tools."""
    judge: StageFactors = StageFactors(1.0, 400.0, 80.0)
    """One judge verdict (there are `judge_samples` per judged answer)."""
    llm_only_pass_rate: float = 0.7
    """Share of candidates the model alone fails, which go on to the agent."""
    agent_steps: float = 4.0
    """Model calls of the verifier agent (capped by `agent_max_steps`)."""
    agent_base_tokens: float = 600.0
    """System prompt, tool schemas and question: the input of the agent's first call."""
    agent_tool_result_tokens: float = 900.0
    """Tokens each tool result adds to the agent's later calls (grows the context)."""
    agent_output_tokens: float = 90.0
    agent_accept_rate: float = 0.5
    """Share of agent runs that the judge accepts."""
    hop_attempts: float = 1.6
    """Attempts per depth hop (capped by `max_hop_attempts`)."""
    superset_search: StageFactors = StageFactors(3.0, 2500.0, 120.0)
    """The tool-using backward search for a superset (agent role)."""
    superset_check: StageFactors = StageFactors(1.0, 700.0, 120.0)
    intermediate_question: StageFactors = StageFactors(1.0, 500.0, 80.0)
    depth_merge: StageFactors = StageFactors(1.0, 700.0, 100.0)
    depth_merge_check: StageFactors = StageFactors(1.0, 800.0, 120.0)
    superset_valid_rate: float = 0.6
    """Share of hop attempts whose superset passes the validity check."""
    hop_success_rate: float = 0.5
    """Share of tasks whose hop (over all its attempts) yields a deeper task."""
    width_attempts: float = 1.3
    """Attempts per width merge (capped by `max_width_attempts`)."""
    width_merge: StageFactors = StageFactors(1.0, 500.0, 100.0)
    width_check: StageFactors = StageFactors(1.0, 600.0, 100.0)


@dataclass
class Estimate:
    """Expected LLM calls, tokens and cost of a run, with the same figures per `role:stage`."""

    calls: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cost: float | None = 0.0
    """USD, or None when a model has no price."""
    by_key: dict[str, StageFactors] = field(default_factory=dict)
    """Total calls and tokens expected under each `role:stage` key."""
    tasks: float = 0.0
    """Expected accepted atomic tasks."""

    def add(self, key: str, units: float, factors: StageFactors) -> None:
        """Count `units` runs of a stage (each `factors.calls` calls of its size)."""
        calls = units * factors.calls
        current = self.by_key.get(key, StageFactors(0.0, 0.0, 0.0))
        self.by_key[key] = StageFactors(
            current.calls + calls,
            current.input_tokens + calls * factors.input_tokens,
            current.output_tokens + calls * factors.output_tokens,
        )
        self.calls += calls
        self.input_tokens += calls * factors.input_tokens
        self.output_tokens += calls * factors.output_tokens


def _judge_samples(settings: Mapping[str, Any]) -> int:
    """Judge verdicts per judged answer."""
    return max(1, int(settings.get("judge_samples", 1)))


def _verification_cost(
    estimate: Estimate, units: float, settings: Mapping[str, Any], f: EstimateFactors
) -> float:
    """Add one verifier run per unit; return how many units the agent accepts."""
    judge_samples = _judge_samples(settings)
    estimate.add("agent:llm_only_answer", units, f.llm_only)
    estimate.add("judge:llm_only_judgement", units * judge_samples, f.judge)
    to_agent = units * f.llm_only_pass_rate
    steps = min(f.agent_steps, float(settings.get("agent_max_steps", f.agent_steps)))
    # Call i (0-based) carries the base prompt and the i tool results before it.
    mean_input = f.agent_base_tokens + f.agent_tool_result_tokens * (steps - 1) / 2
    agent_run = StageFactors(steps, mean_input, f.agent_output_tokens)
    estimate.add("agent:agent_run", to_agent, agent_run)
    estimate.add("judge:agent_judgement", to_agent * judge_samples, f.judge)
    return to_agent * f.agent_accept_rate


def estimate(
    documents_count: int,
    chunks_per_document: float,
    config: Any = None,
    *,
    prices: Mapping[str, ModelPrice] | None = None,
    factors: EstimateFactors | None = None,
) -> Estimate:
    """Expected calls, tokens and USD of a run over `documents_count` documents.

    The model, per document (all averages come from `factors`):

    1. extraction: one generator call per chunk used, `min(chunks_per_document,
       max_chunks_per_document)`, each sending the chunk (`chunk_chars / chars_per_token`
       tokens) plus the prompt;
    2. candidates: `candidates_per_chunk` per chunk used, at most
       `max_candidates_per_document`; one generator call forms each question;
    3. verification of each candidate: the agent model answers without tools and
       `judge_samples` judge calls grade it; a `llm_only_pass_rate` share goes on to the
       tool-using agent, whose `agent_steps` calls (at most `agent_max_steps`) carry a growing
       context (base prompt plus one tool result per earlier step), then is judged again;
       `agent_accept_rate` of those become tasks;
    4. depth (strategy `depth`/`both`, `target_hops` > 1): each task tries `target_hops - 1`
       hops, stopping at the first failed hop; a hop takes `hop_attempts` attempts of superset
       search and validity check; the `superset_valid_rate` share that passes gets an
       intermediate question and its verification, and the verified ones a merge and a merge
       check; `hop_success_rate` of the tasks reaching a hop get one hop deeper;
    5. width (strategy `width`/`both`, `target_width` > 1): one merge per group of
       `target_width` tasks, `width_attempts` attempts of merge, decomposition check and a
       tool-less answer with its judgement;
    6. `verify_final_task`: one more verification per extended task.

    `config` is a `Context` or a mapping with its field names (defaults as in `Context`);
    the cost uses its `*_model` fields and `prices` (None: `DEFAULT_PRICES`). Treat the result
    as an order of magnitude: calibrate `factors` from a small run's usage table.
    """
    f = factors or EstimateFactors()
    # Fields the mapping leaves out take the defaults a run would use.
    settings = {**_config_values(Context()), **_config_values(config)}
    result = Estimate()
    documents = max(0, documents_count)
    chunks = min(max(0.0, chunks_per_document), float(settings["max_chunks_per_document"]))
    chunk_tokens = float(settings["chunk_chars"]) / f.chars_per_token
    result.add(
        "generator:extract",
        documents * chunks,
        StageFactors(1.0, f.extract_prompt_tokens + chunk_tokens, f.extract_output_tokens),
    )
    candidates = documents * min(
        f.candidates_per_chunk * chunks, float(settings["max_candidates_per_document"])
    )
    result.add("generator:form_question", candidates, f.question)
    tasks = _verification_cost(result, candidates, settings, f)
    result.tasks = tasks

    strategy = str(settings["extension_strategy"])
    extended = 0.0
    if strategy in ("depth", "both") and int(settings["target_hops"]) > 1:
        attempts = min(f.hop_attempts, float(settings["max_hop_attempts"]))
        reaching = tasks  # tasks that reach the current hop
        for _ in range(int(settings["target_hops"]) - 1):
            tries = reaching * attempts
            result.add("agent:depth_superset_search", tries, f.superset_search)
            result.add("judge:depth_superset_check", tries, f.superset_check)
            valid = tries * f.superset_valid_rate
            result.add("generator:depth_intermediate_question", valid, f.intermediate_question)
            verified = _verification_cost(result, valid, settings, f)
            result.add("generator:depth_merge", verified, f.depth_merge)
            result.add("judge:depth_merge_check", verified, f.depth_merge_check)
            reaching *= f.hop_success_rate
        extended += tasks * f.hop_success_rate  # tasks at least one hop deep
    if strategy in ("width", "both") and int(settings["target_width"]) > 1:
        groups = math.floor(tasks / int(settings["target_width"]))
        tries = groups * min(f.width_attempts, float(settings["max_width_attempts"]))
        judge_samples = _judge_samples(settings)
        result.add("generator:width_merge", tries, f.width_merge)
        result.add("judge:width_decompose_check", tries, f.width_check)
        result.add("agent:width_llm_only_answer", tries, f.llm_only)
        result.add("judge:width_llm_only_judgement", tries * judge_samples, f.judge)
        extended += groups
    if settings["verify_final_task"] and extended:
        _verification_cost(result, extended, settings, f)

    models = models_by_role_of(settings)
    try:
        total = 0.0
        for key, entry in result.by_key.items():
            model = models.get(key.partition(":")[0], "?")
            total += price_of(model, prices).cost(entry.input_tokens, entry.output_tokens)
        result.cost = total
    except PriceNotFound:
        result.cost = None
    return result
