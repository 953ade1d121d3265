from __future__ import annotations

import json
import shutil

import pytest

from nereid.backends.llm import SamplingParams

PROMPT = [5, 17, 42, 99, 7, 3, 250, 11, 64]


def greedy_tokens(make_engine, run, collect_tokens, n=16, **config):
    engine = make_engine(**config)
    engine.add_request("ref", PROMPT, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
    return collect_tokens(run(engine)["ref"])


def test_step_outputs_and_stats(make_engine, run, greedy):
    engine = make_engine()
    engine.add_request("a", "Hello world", greedy(5))
    engine.add_request("b", PROMPT, greedy(3))
    outputs = run(engine)
    a, b = outputs["a"], outputs["b"]
    assert [len(o.new_token_ids) for o in a] == [1] * 5 and [o.finished for o in b] == [False, False, True]
    assert a[-1].finish_reason == "length" and a[-1].num_generation_tokens == 5
    assert a[-1].num_prompt_tokens == len(engine.tokenizer.encode("Hello world"))
    text = "".join(o.new_text for o in a)
    assert text == engine.tokenizer.decode([t for o in a for t in o.new_token_ids])
    stats = engine.stats()
    assert stats.generation_tokens == 8 and stats.prompt_tokens == a[-1].num_prompt_tokens + len(PROMPT)
    assert stats.num_finished == {"length": 2} and stats.num_running == stats.num_waiting == 0


def test_abort_frees_blocks_immediately(make_engine, run, greedy):
    engine = make_engine()
    for rid in "abc":
        engine.add_request(rid, PROMPT, greedy(20))
    engine.step()
    engine.step()
    used = engine.stats().num_kv_blocks - engine.stats().num_free_kv_blocks
    assert engine.abort("b")
    assert engine.stats().num_kv_blocks - engine.stats().num_free_kv_blocks < used
    engine.block_manager.check_no_leaks(engine.scheduler.running)
    assert not engine.abort("b") and not engine.abort("unknown")
    engine.add_request("d", PROMPT, greedy(5))
    assert engine.abort("d")  # still waiting: never held blocks
    first = engine.step()
    aborted = [o for o in first if o.finish_reason == "abort"]
    assert {o.request_id for o in aborted} == {"b", "d"} and all(o.finished for o in aborted)
    rest = run(engine)
    assert set(rest) == {"a", "c"}
    assert engine.stats().num_finished == {"abort": 2, "length": 2}


def test_bad_requests_raise_and_do_not_disturb_others(make_engine, run, collect_tokens):
    expected = greedy_tokens(make_engine, run, collect_tokens, max_model_len=64)
    engine = make_engine(max_model_len=64)
    engine.add_request("ok", PROMPT, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    first = engine.step()
    bad = [
        (dict(prompt=list(range(3, 67))), "context length is 64"),
        (dict(prompt=PROMPT, params=SamplingParams(max_tokens=60)), "9 in the prompt, 60 for the output"),
        (dict(prompt=[]), "empty"),
        (dict(prompt=[10**6]), r"prompt token ids must be ints in \[0, "),
        (dict(prompt=PROMPT, params=SamplingParams(n=2)), "n=2 exceeds the limit of 1"),
        (dict(prompt=PROMPT, params=SamplingParams(logprobs=21)), "logprobs=21 exceeds the limit of 20"),
        (dict(request_id="ok", prompt=PROMPT), "already in use"),
    ]
    for kwargs, message in bad:
        kwargs.setdefault("request_id", "bad")
        with pytest.raises(ValueError, match=message):
            engine.add_request(**kwargs)
    with pytest.raises(ValueError, match="top_p"):
        engine.add_request("bad", PROMPT, SamplingParams(top_p=0))
    assert collect_tokens(first) + collect_tokens(run(engine)["ok"]) == expected


def test_n_above_one_is_refused_even_within_the_limit(make_engine):
    with pytest.raises(ValueError, match="not supported"):
        make_engine(max_n=4).add_request("a", PROMPT, SamplingParams(n=2))


def test_context_full_finishes_with_length(make_engine, run):
    engine = make_engine(max_model_len=16)
    engine.add_request("a", PROMPT, SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True))
    out = run(engine)["a"]
    assert out[-1].finish_reason == "length" and out[-1].num_generation_tokens == 16 - len(PROMPT)


def test_stop_token_ids_and_min_tokens(make_engine, run, collect_tokens):
    ref = greedy_tokens(make_engine, run, collect_tokens)
    stop_at = next(i for i in range(2, len(ref)) if ref[i] not in ref[:i])
    engine = make_engine()
    params = dict(temperature=0.0, max_tokens=16, ignore_eos=True)
    engine.add_request("stop", PROMPT, SamplingParams(stop_token_ids=[ref[stop_at]], **params))
    engine.add_request("late", PROMPT, SamplingParams(stop_token_ids=[ref[stop_at]], min_tokens=16, **params))
    outputs = run(engine)
    stop = outputs["stop"]
    assert collect_tokens(stop) == ref[: stop_at + 1]  # the stop token is returned, its text is not
    assert stop[-1].finish_reason == "stop" and stop[-1].stop_reason == ref[stop_at]
    assert outputs["late"][-1].finish_reason == "length"


def test_stop_string_in_engine(make_engine, run, collect_tokens):
    engine = make_engine()
    engine.add_request("ref", PROMPT, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    ref_out = run(engine)["ref"]
    text = "".join(o.new_text for o in ref_out)
    stop = text[len(text) // 3 : len(text) // 3 + 3]
    assert len(stop) == 3
    engine.add_request(
        "s", PROMPT, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, stop=[stop])
    )
    out = run(engine)["s"]
    assert "".join(o.new_text for o in out) == text[: text.index(stop)]
    assert out[-1].finish_reason == "stop" and out[-1].stop_reason == stop


def test_eos_from_generation_config(make_engine, run, collect_tokens, llama_dir, tmp_path):
    ref = greedy_tokens(make_engine, run, collect_tokens)
    eos_at = next(i for i in range(2, len(ref)) if ref[i] not in ref[:i])
    model_dir = tmp_path / "model"
    shutil.copytree(llama_dir, model_dir)
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [ref[eos_at]]}))
    engine = make_engine(model=str(model_dir))
    assert ref[eos_at] in engine.checkpoint_config.eos_token_ids
    engine.add_request("eos", PROMPT, SamplingParams(temperature=0.0, max_tokens=16))
    engine.add_request("ignore", PROMPT, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    engine.add_request("min", PROMPT, SamplingParams(temperature=0.0, max_tokens=16, min_tokens=eos_at + 2))
    outputs = run(engine)
    assert collect_tokens(outputs["eos"]) == ref[: eos_at + 1] and outputs["eos"][-1].finish_reason == "stop"
    assert outputs["eos"][-1].stop_reason is None
    assert collect_tokens(outputs["ignore"]) == ref
    min_tokens = collect_tokens(outputs["min"])
    assert min_tokens[eos_at] != ref[eos_at] and ref[eos_at] not in min_tokens[: eos_at + 2]


def test_logprobs(make_engine, run):
    engine = make_engine()
    engine.add_request("a", PROMPT, SamplingParams(temperature=0.0, max_tokens=4, logprobs=3))
    engine.add_request("b", PROMPT, SamplingParams(temperature=0.0, max_tokens=4))
    outputs = run(engine)
    for out in outputs["a"]:
        (lp,) = out.new_logprobs
        assert lp.token_id == out.new_token_ids[0] == lp.top_token_ids[0]
        assert lp.logprob == pytest.approx(lp.top_logprobs[0]) and len(lp.top_logprobs) == 3
        assert lp.top_logprobs == sorted(lp.top_logprobs, reverse=True) and lp.logprob <= 0
    assert all(out.new_logprobs == [] for out in outputs["b"])


def test_seeded_requests_reproduce_in_any_batch(make_engine, run, collect_tokens):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True)
    alone = make_engine()
    alone.add_request("s", PROMPT, params)
    expected = collect_tokens(run(alone)["s"])
    crowded = make_engine(max_num_batched_tokens=8)
    for i in range(4):
        crowded.add_request(f"other{i}", PROMPT[i:], SamplingParams(temperature=1.0, max_tokens=12))
    crowded.add_request("s", PROMPT, params)
    assert collect_tokens(run(crowded)["s"]) == expected


def test_priority_order_and_fcfs(make_engine, run):
    engine = make_engine(max_num_seqs=1, max_num_batched_tokens=64)
    for rid, prio in [("low", 2), ("high", 0), ("mid", 1), ("high2", 0)]:
        engine.add_request(rid, PROMPT, SamplingParams(temperature=0.0, max_tokens=2), priority=prio)
    finished = []
    while engine.has_unfinished():
        finished += [o.request_id for o in engine.step() if o.finished]
    assert finished == ["high", "high2", "mid", "low"]


def test_num_threads_sets_torchs_threads_and_keeps_the_answer(make_engine, run, collect_tokens):
    import torch

    before = torch.get_num_threads()
    try:
        default = greedy_tokens(make_engine, run, collect_tokens)
        one = greedy_tokens(make_engine, run, collect_tokens, num_threads=1)
        assert torch.get_num_threads() == 1
        assert one == default
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        make_engine(num_threads=0)


def test_native_and_torch_kernels_give_the_same_tokens(make_engine, run, collect_tokens):
    from nereid.backends.llm import native

    if not native.load():
        pytest.skip("the native kernels did not build here")
    engine = make_engine(kernels="native")
    assert engine.model_runner.native_decode and engine.model_runner.model.fused
    torch_engine = make_engine(kernels="torch")
    assert not torch_engine.model_runner.native_decode and not torch_engine.model_runner.model.fused
    assert greedy_tokens(make_engine, run, collect_tokens, n=24, kernels="native") == greedy_tokens(
        make_engine, run, collect_tokens, n=24, kernels="torch"
    )
    with pytest.raises(ValueError, match="kernels must be one of auto, native, torch"):
        make_engine(kernels="fast")
