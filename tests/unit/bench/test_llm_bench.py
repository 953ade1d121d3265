"""bench/llm.py's bookkeeping: KV-waste arithmetic, the replay through the engine's scheduler, the workload,
the sequential baseline's closed loop, and the summary. No timing is asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

_PATH = Path(__file__).resolve().parents[3] / "bench" / "llm.py"
_spec = importlib.util.spec_from_file_location("nereid_bench_llm", _PATH)
assert _spec is not None and _spec.loader is not None
llm = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = llm
_spec.loader.exec_module(llm)

import llm_hf  # noqa: E402  (on sys.path once bench/llm.py is loaded)
import llm_nereid  # noqa: E402  (on sys.path once bench/llm.py is loaded)
import llm_workload  # noqa: E402  (on sys.path once bench/llm.py is loaded)


def test_kv_waste_counts_unused_slots_of_allocated_blocks() -> None:
    # 17 tokens in 2 blocks of 16 (15 unused), 32 tokens in 2 blocks (0 unused): 15 of 64 slots.
    waste, bound = llm_workload.kv_waste([17, 32], allocated_blocks=4, block_size=16)
    assert waste == pytest.approx(15 / 64)
    assert bound == pytest.approx(2 * 15 / 64)
    assert llm_workload.kv_waste([], 0, 16) == (0.0, 0.0)


def test_waste_samples_weight_every_slot() -> None:
    samples = llm_workload.WasteSamples(block_size=16)
    samples.add([1], 1)  # 15 of 16 unused
    samples.add([16, 16, 16], 3)  # none unused
    s = samples.summary()
    assert s["samples"] == 2
    assert s["waste"] == pytest.approx(15 / 64, abs=1e-4)
    assert s["waste_max"] == pytest.approx(15 / 16, abs=1e-4)
    assert s["bound"] == pytest.approx(4 * 15 / 64, abs=1e-4)


@pytest.mark.parametrize("num_blocks", [40, 400])
def test_replay_stays_within_the_paged_bound(num_blocks: int) -> None:
    lengths = [(20, 10), (33, 5), (64, 16), (7, 30), (100, 3), (16, 16)]
    rep = llm_workload.replay_kv(lengths, concurrency=4, num_blocks=num_blocks, block_size=16, max_num_seqs=4,
                        max_num_batched_tokens=64)  # fmt: skip
    assert 0 <= rep["waste"] <= rep["bound"]
    assert rep["waste_max"] < 1
    assert rep["blocks_to_hold_first_wave"] == 2 + 3 + 5 + 3
    if num_blocks == 400:
        assert rep["preemptions"] == 0


def test_replay_single_sequence_matches_arithmetic() -> None:
    # One sequence, prompt 16 (one full block), 3 tokens: after the steps it holds 16, 17, 18 computed tokens
    # (the sampled token of the last step finishes it and frees its blocks before the sample is taken).
    rep = llm_workload.replay_kv(
        [(16, 3)], concurrency=1, num_blocks=8, block_size=16, max_num_batched_tokens=64
    )
    assert rep["steps"] == 3
    assert rep["samples"] == 2  # none once nothing runs
    assert rep["waste"] == pytest.approx(1 - (16 + 17) / (16 + 32), abs=1e-4)


def test_workload_is_fixed_nested_and_fresh_per_level() -> None:
    w = llm_workload.Workload(prompt_range=(16, 256), output_range=(16, 64), seed=3)
    assert [w.requests_at(c) for c in (1, 8, 32, 64)] == [8, 16, 32, 64]
    one, eight = w.level(1), w.level(8)
    assert [(len(r.prompt), r.max_tokens) for r in one] == [(len(r.prompt), r.max_tokens) for r in eight[:8]]
    assert one[0].prompt != eight[0].prompt  # no prefix-cache reuse across levels
    assert w.level(8) == eight
    assert all(16 <= len(r.prompt) <= 256 and 16 <= r.max_tokens <= 64 for r in eight)


def test_sequential_closed_loop_queues_behind_the_server() -> None:
    reqs = [llm_workload.Request([1] * 4, 2)] * 3
    services = [llm_hf.Service([1.0, 2.0], 2.0)] * 3
    traces, seconds = llm_hf.sequential_level(services, reqs, concurrency=2)
    assert seconds == 6.0
    assert [t.ttft for t in traces] == [
        1.0,
        3.0,
        3.0,
    ]  # the 2nd waits 2 s; the 3rd is sent at 2 and starts at 4
    assert [t.token_times for t in traces] == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    row = llm_workload.summarize("sequential", 2, traces, seconds)
    assert row["tokens"] == 6 and row["tokens_per_s"] == 1.0
    assert row["itl_p50_ms"] == 1000.0 and row["ttft_p99_ms"] == 3000.0


def test_parse_metrics_reads_the_model_series() -> None:
    text = (
        "# TYPE nereid_llm_kv_cache_usage_perc gauge\n"
        'nereid_llm_kv_cache_usage_perc{model="smollm2",version="1"} 0.5\n'
        'nereid_llm_generation_tokens_total{model="smollm2",version="1"} 12.0\n'
        'nereid_llm_generation_tokens_total{model="other",version="1"} 99.0\n'
    )
    assert llm_nereid.parse_metrics(text) == {
        "nereid_llm_kv_cache_usage_perc": 0.5,
        "nereid_llm_generation_tokens_total": 12.0,
    }


def test_continuous_ceiling_from_static_costs() -> None:
    # Two full batches of 2: 100 padded prompt tokens prefilled in 1 s each, decode steps of 0.5 s.
    reqs = [
        llm_workload.Request([1] * 30, 4),
        llm_workload.Request([1] * 50, 2),
        llm_workload.Request([1] * 20, 4),
        llm_workload.Request([1] * 50, 2),
    ]
    batches = [{"size": 2, "padded_prompt_tokens": 100, "ttft": 1.0, "steps": [0.5, 0.5, 0.5]}] * 2
    ceiling = llm_hf.continuous_ceiling(reqs, 2, batches)
    assert ceiling["prefill_tokens_per_s"] == 100.0
    assert ceiling["decode_step_ms"] == 500.0
    # 150 real prompt tokens at 100/s, then 12 tokens in 6 full steps of 0.5 s.
    assert ceiling["seconds"] == 4.5
    assert ceiling["prefill_share"] == pytest.approx(1.5 / 4.5, abs=1e-3)


def test_sharegpt_workload_is_heavy_tailed_and_nested() -> None:
    w = llm_workload.WORKLOADS["sharegpt"]
    assert [w.requests_at(c) for c in (1, 8, 32)] == [8, 16, 64]
    lengths = w.lengths(64)
    assert lengths[:16] == w.lengths(16)
    assert all(4 <= p <= 512 and 4 <= m <= 512 for p, m in lengths)
    stats = w.describe(64)
    assert stats["output"]["max"] >= 4 * stats["output"]["median"]  # a long tail, unlike the short workload
    assert stats["output"]["mean"] > stats["output"]["median"]
    assert llm_workload.WORKLOADS["short"] == llm_workload.Workload(
        prompt_range=(16, 256), output_range=(16, 64)
    )


def test_repository_overrides_copy_the_example_config(tmp_path) -> None:
    repo, tmp = llm_nereid.repository({"block_size": "4", "seed": "7"})
    try:
        text = (repo / llm_workload.MODEL / "config.pbtxt").read_text()
        assert 'key: "block_size" value: { string_value: "4" }' in text
        assert 'key: "seed" value: { string_value: "7" }' in text  # absent from the example: appended
    finally:
        assert tmp is not None
        tmp.cleanup()
    assert llm_nereid.repository({}) == (llm_workload.ROOT / "model_repository", None)
