from __future__ import annotations

import json
from pathlib import Path

import pytest

from langgraph_taskcraft.accounting import (
    DEFAULT_PRICES,
    EstimateFactors,
    ModelPrice,
    PriceNotFound,
    cost,
    estimate,
    load_prices,
    models_by_role_of,
    price_of,
    summarize,
)
from langgraph_taskcraft.context import Context
from langgraph_taskcraft.records import TokenUsage

MODELS = {
    "generator": "openai:gpt-4.1-mini",
    "agent": "openai:gpt-4.1",
    "judge": "anthropic:claude-haiku-4-5-20251001",
}

USAGE = {
    "generator:extract": TokenUsage(calls=2, input_tokens=1_000_000, output_tokens=100_000),
    "agent:agent_run": TokenUsage(calls=5, input_tokens=500_000, output_tokens=50_000),
    "judge:agent_judgement": TokenUsage(calls=3, input_tokens=200_000, output_tokens=10_000),
}


def test_price_lookup_by_spec_bare_name_and_snapshot() -> None:
    assert price_of("openai:gpt-4.1-mini") == ModelPrice(0.40, 1.60)
    assert price_of("gpt-4.1-mini") == ModelPrice(0.40, 1.60)
    # Dated snapshots take the longest matching family, not a shorter prefix.
    assert price_of("openai:gpt-4.1-mini-2025-04-14") == DEFAULT_PRICES["gpt-4.1-mini"]
    assert price_of("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert price_of("anthropic:claude-sonnet-4-5-20250929") == DEFAULT_PRICES["claude-sonnet-4-5"]
    assert price_of("ollama:qwen3") == ModelPrice(0.0, 0.0)
    with pytest.raises(PriceNotFound, match="load_prices"):
        price_of("openai:gpt-4.1minimal")  # not a `-` suffix of a known family
    with pytest.raises(PriceNotFound):
        price_of("tests.scenario:GENERATOR")


def test_cost_uses_each_roles_model() -> None:
    expected = (
        (1_000_000 * 0.40 + 100_000 * 1.60) / 1e6
        + (500_000 * 2.00 + 50_000 * 8.00) / 1e6
        + (200_000 * 1.00 + 10_000 * 5.00) / 1e6
    )
    assert cost(USAGE, MODELS) == pytest.approx(expected)
    assert cost({}, MODELS) == 0.0


def test_cost_refuses_to_guess_unknown_prices() -> None:
    with pytest.raises(PriceNotFound) as raised:
        cost(USAGE, {**MODELS, "judge": "mystery:model-x"})
    assert raised.value.model == "mystery:model-x"
    with pytest.raises(PriceNotFound):
        cost(USAGE, {"generator": "openai:gpt-4.1-mini"})  # no model for agent/judge


def test_summary_per_role_and_stage() -> None:
    usage = {
        **USAGE,
        "judge:llm_only_judgement": TokenUsage(calls=1, input_tokens=100_000, output_tokens=0),
        "agent:llm_only_answer": TokenUsage(calls=1, input_tokens=0, output_tokens=0),
    }
    summary = summarize(usage, {**MODELS, "agent": "local:thing"})
    keys = [(row.role, row.stage) for row in summary.rows]
    assert keys == sorted(keys)
    roles = summary.by_role()
    assert roles["judge"].calls == 4
    assert roles["judge"].cost == pytest.approx((300_000 * 1.00 + 10_000 * 5.00) / 1e6)
    assert roles["agent"].cost is None
    assert summary.unpriced_models == ["local:thing"]
    judge_cost, generator_cost = roles["judge"].cost, roles["generator"].cost
    assert judge_cost is not None and generator_cost is not None
    assert summary.total == pytest.approx(judge_cost + generator_cost)
    table = summary.format_table()
    assert "judge:agent_judgement" in table and "judge (all stages)" in table
    assert "n/a" in table and "+ unpriced" in table
    assert table.splitlines()[-1].startswith("total")


def test_load_prices_from_dict_json_and_toml(tmp_path: Path) -> None:
    table = load_prices({"gpt-4.1-mini": [0.2, 0.8], "my-local": {"input": 0, "output": 0}})
    assert table["gpt-4.1-mini"] == ModelPrice(0.2, 0.8)
    assert table["gpt-4.1"] == DEFAULT_PRICES["gpt-4.1"]  # defaults kept
    assert cost(USAGE, {**MODELS, "agent": "openai:my-local"}, table) > 0

    json_file = tmp_path / "prices.json"
    json_file.write_text(json.dumps({"prices": {"vllm:qwen": {"input": 0.1, "output": 0.3}}}))
    assert price_of("vllm:qwen", load_prices(json_file)) == ModelPrice(0.1, 0.3)

    toml_file = tmp_path / "prices.toml"
    toml_file.write_text('[models."gpt-4.1"]\ninput = 1.0\noutput = 4.0\n')
    assert load_prices(toml_file)["gpt-4.1"] == ModelPrice(1.0, 4.0)
    only = load_prices({"x": [1, 2]}, base={})
    assert only == {"x": ModelPrice(1.0, 2.0)}
    with pytest.raises(ValueError, match="expected"):
        load_prices({"bad": "cheap"})


def test_models_by_role_from_context_or_mapping() -> None:
    context = Context(generator_model="openai:gpt-4.1", judge_model="openai:o3")
    assert models_by_role_of(context) == {
        "generator": "openai:gpt-4.1",
        "agent": context.agent_model,
        "judge": "openai:o3",
    }
    assert models_by_role_of({"agent_model": "a:b", "other": 1}) == {"agent": "a:b"}


def test_estimate_atomic_run_follows_the_documented_model() -> None:
    factors = EstimateFactors()
    config = {"max_chunks_per_document": 4, "max_candidates_per_document": 5, "chunk_chars": 4000}
    result = estimate(10, 2, config)
    # 10 documents x 2 chunks; 3 candidates per chunk capped at 5 per document.
    assert result.by_key["generator:extract"].calls == 20
    assert result.by_key["generator:form_question"].calls == 50
    assert result.by_key["agent:llm_only_answer"].calls == 50
    to_agent = 50 * factors.llm_only_pass_rate
    assert result.by_key["agent:agent_run"].calls == pytest.approx(to_agent * factors.agent_steps)
    assert result.tasks == pytest.approx(to_agent * factors.agent_accept_rate)
    assert not any(key.startswith(("agent:depth", "generator:width")) for key in result.by_key)
    assert result.calls == pytest.approx(sum(v.calls for v in result.by_key.values()))
    assert result.input_tokens == pytest.approx(sum(v.input_tokens for v in result.by_key.values()))
    extract_input = 20 * (factors.extract_prompt_tokens + 4000 / factors.chars_per_token)
    assert result.by_key["generator:extract"].input_tokens == pytest.approx(extract_input)
    # Default models are the Context's (gpt-4.1-mini for every role).
    price = DEFAULT_PRICES["gpt-4.1-mini"]
    assert result.cost == pytest.approx(price.cost(result.input_tokens, result.output_tokens))


def test_estimate_grows_with_extensions_and_limits() -> None:
    base = estimate(100, 3)
    deeper = estimate(100, 3, {"target_hops": 3})
    both = estimate(100, 3, {"target_hops": 3, "target_width": 2, "extension_strategy": "both"})
    final = estimate(
        100,
        3,
        {
            "target_hops": 3,
            "target_width": 2,
            "extension_strategy": "both",
            "verify_final_task": True,
        },
    )
    assert base.calls < deeper.calls < both.calls < final.calls
    assert "agent:depth_superset_search" in deeper.by_key
    assert "generator:width_merge" in both.by_key
    # One agent step allowed: the agent calls shrink.
    capped = estimate(100, 3, Context(agent_max_steps=1))
    assert capped.by_key["agent:agent_run"].calls < base.by_key["agent:agent_run"].calls
    # Chunks beyond max_chunks_per_document are not read.
    assert estimate(100, 50).by_key["generator:extract"].calls == 100 * 4
    assert estimate(0, 3).calls == 0
    unpriced = estimate(10, 1, {"generator_model": "tests.x:MODEL"})
    assert unpriced.cost is None and unpriced.calls > 0
    cheap = estimate(10, 1, {"generator_model": "openai:gpt-4.1-mini"}, prices=load_prices({}))
    assert cheap.cost is not None and cheap.cost > 0
