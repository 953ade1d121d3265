"""The llm backend over Triton's generate extension (HTTP): whole answers, SSE streams, sampling, errors."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from nereid.backends.llm import EngineConfig, LLMEngine, SamplingParams

PROMPT = "The quick brown fox"


def text_of(events):
    return "".join(e["text_output"] for e in events)


def test_generate_returns_the_whole_answer(llm, greedy_params):
    body = llm.generate("tiny", {"id": "r1", "text_input": PROMPT, "parameters": greedy_params(8)})
    assert body["model_name"] == "tiny" and body["model_version"] == "1" and body["id"] == "r1"
    assert body["finish_reason"] == "length" and body["completion_tokens"] == 8
    assert len(json.loads(body["token_ids"])) == 8 and body["prompt_tokens"] > 0
    assert isinstance(body["text_output"], str) and body["text_output"]
    assert "logprobs" not in body


def test_generate_stream_sends_one_event_per_token(llm, greedy_params):
    events = llm.events("tiny", {"text_input": PROMPT, "parameters": greedy_params(8)})
    assert len(events) == 8
    assert [e.get("finish_reason") for e in events] == [None] * 7 + ["length"]
    assert [e["completion_tokens"] for e in events] == list(range(1, 9))
    whole = llm.generate("tiny", {"text_input": PROMPT, "parameters": greedy_params(8)})
    assert PROMPT + text_of(events) == whole["text_output"]  # generate prepends the prompt (Triton's vLLM)
    assert [t for e in events for t in json.loads(e["token_ids"])] == json.loads(whole["token_ids"])
    # stream=false in the body: a single final event holding everything
    (single,) = llm.events("tiny", {"text_input": PROMPT, "stream": False, "parameters": greedy_params(8)})
    assert single["text_output"] == whole["text_output"] and single["finish_reason"] == "length"


def test_greedy_output_equals_the_engine_run_directly(llm, tiny_llama, engine_settings, greedy_params):
    served = llm.generate("tiny", {"text_input": PROMPT, "parameters": greedy_params(24)})
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), **engine_settings))
    engine.add_request("direct", PROMPT, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))
    tokens, text = [], ""
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.new_token_ids
            text += out.new_text
    assert json.loads(served["token_ids"]) == tokens and served["text_output"] == PROMPT + text


def test_sampling_parameters_from_the_input_win_over_request_parameters(llm):
    sampled = {"temperature": "0.9", "top_k": "20", "seed": 7, "max_tokens": 6, "ignore_eos": "true"}
    body = {"text_input": PROMPT, "sampling_parameters": json.dumps(sampled), "parameters": {"max_tokens": 2}}
    first, second = llm.generate("tiny", body), llm.generate("tiny", body)
    assert first["completion_tokens"] == 6 and first["token_ids"] == second["token_ids"]
    via_params = llm.generate("tiny", {"text_input": PROMPT, "parameters": {**sampled, "top_k": 20}})
    assert via_params["token_ids"] == first["token_ids"]


def test_stop_strings_and_stop_token_ids(llm, greedy_params):
    ref = llm.generate(
        "tiny", {"text_input": PROMPT, "exclude_input_in_output": True, "parameters": greedy_params(16)}
    )
    text, ids = ref["text_output"], json.loads(ref["token_ids"])
    stop = text[len(text) // 3 : len(text) // 3 + 2]
    body = llm.generate(
        "tiny",
        {"text_input": PROMPT, "exclude_input_in_output": True, "parameters": greedy_params(16, stop=[stop])},
    )
    assert body["text_output"] == text[: text.index(stop)]
    assert body["finish_reason"] == "stop" and body["stop_reason"] == stop
    at = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    params = greedy_params(16, stop_token_ids=json.dumps([ids[at]]))  # a JSON string, as gRPC must send it
    body = llm.generate("tiny", {"text_input": PROMPT, "parameters": params})
    assert json.loads(body["token_ids"]) == ids[: at + 1] and body["finish_reason"] == "stop"


def test_generate_prepends_the_prompt_unless_streamed_or_excluded(llm, greedy_params):
    """Triton's vLLM backend: without ``exclude_input_in_output`` only a non-streamed answer has the prompt."""
    whole = llm.generate("tiny", {"text_input": PROMPT, "parameters": greedy_params(4)})["text_output"]
    bare = llm.generate(
        "tiny", {"text_input": PROMPT, "exclude_input_in_output": True, "parameters": greedy_params(4)}
    )["text_output"]
    streamed = text_of(llm.events("tiny", {"text_input": PROMPT, "parameters": greedy_params(4)}))
    assert whole == PROMPT + bare and streamed == bare


def test_logprobs_and_exclude_input_in_output(llm, greedy_params):
    body = llm.generate(
        "tiny",
        {"text_input": PROMPT, "exclude_input_in_output": False, "parameters": greedy_params(3, logprobs=2)},
    )
    assert body["text_output"].startswith(PROMPT)
    logprobs = json.loads(body["logprobs"])
    assert [lp["token_id"] for lp in logprobs] == json.loads(body["token_ids"])
    for lp in logprobs:
        assert len(lp["top_logprobs"]) == 2 and lp["logprob"] <= 0 and isinstance(lp["token"], str)
        assert lp["top_logprobs"][0]["logprob"] >= lp["top_logprobs"][1]["logprob"]


def test_chat_messages_and_input_ids(llm, greedy_params):
    messages = [{"role": "user", "content": "Hello world"}]
    chat = llm.generate("tiny", {"messages": json.dumps(messages), "parameters": greedy_params(4)})
    rendered = "<|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n"
    ids = llm.instance("tiny").tokenizer.encode(rendered, add_special_tokens=False)
    assert chat["prompt_tokens"] == len(ids)
    by_ids = llm.generate("tiny", {"input_ids": ids, "parameters": greedy_params(4)})
    assert by_ids["token_ids"] == chat["token_ids"] and by_ids["cached_tokens"] > 0  # prefix cache hit


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text_input": PROMPT, "parameters": {"temperature": -1}}, "temperature must be >= 0"),
        ({"text_input": PROMPT, "parameters": {"top_p": "abc"}}, "'top_p'"),
        ({"text_input": PROMPT, "sampling_parameters": '{"bogus": 1}'}, "unknown sampling parameter 'bogus'"),
        ({"text_input": PROMPT, "sampling_parameters": "[1]"}, "must be a JSON object"),
        ({"text_input": "fox " * 600}, "context length is 512"),
        ({"text_input": PROMPT, "parameters": {"max_tokens": 600}}, "context length is 512"),
        ({"text_input": PROMPT, "input_ids": [1, 2]}, "exactly one of"),
        ({"parameters": {"max_tokens": 2}}, "exactly one of"),
        ({"messages": "not json"}, "input 'messages' is not valid JSON"),
        ({"input_ids": [10**6]}, "prompt token ids must be ints"),
        ({"text_input": PROMPT, "parameters": {"logprobs": 99}}, "logprobs=99 exceeds"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_requests_are_400_before_anything_streams(llm, body, message, stream):
    response = llm.post("tiny", body, stream=stream)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


def test_a_bad_request_leaves_other_sequences_alone(llm, greedy_params):
    ref = llm.generate("tiny", {"text_input": PROMPT, "parameters": greedy_params(200)})
    body = {"text_input": PROMPT, "parameters": greedy_params(200)}
    with (
        httpx.Client(base_url=str(llm.http.base_url), timeout=60) as client,
        client.stream("POST", "/v2/models/tiny/generate_stream", json=body) as response,
    ):
        lines = response.iter_lines()
        first = next(lines)
        for _ in range(3):  # while the good request is mid-stream
            assert llm.post("tiny", {"text_input": PROMPT, "parameters": {"top_k": -5}}).status_code == 400
            assert llm.post("tiny", {"text_input": "fox " * 600}, stream=True).status_code == 400
        events = [json.loads(line[len("data: ") :]) for line in [first, *lines] if line]
    assert PROMPT + text_of(events) == ref["text_output"] and events[-1]["finish_reason"] == "length"
    assert len(events) == 200


def test_concurrent_requests_match_their_solo_runs(llm, greedy_params):
    prompts = [PROMPT, "Hello world", "Paris is", "def f(x):", "Stop here"]
    solo = [
        llm.generate("tiny", {"text_input": p, "parameters": greedy_params(12)})["token_ids"] for p in prompts
    ]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        with httpx.Client(base_url=str(llm.http.base_url), timeout=60) as client:
            body = {"text_input": prompts[i], "parameters": greedy_params(12)}
            results[i] = client.post("/v2/models/tiny/generate", json=body).json()["token_ids"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [results[i] for i in range(len(prompts))] == solo


def test_client_disconnect_mid_stream_aborts_the_sequence(llm, greedy_params):
    before = llm.engine_call("tiny", lambda e: e.stats().num_finished.get("abort", 0))
    body = {"text_input": PROMPT, "parameters": greedy_params(480)}
    with (
        httpx.Client(base_url=str(llm.http.base_url), timeout=60) as client,
        client.stream("POST", "/v2/models/tiny/generate_stream", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    state = llm.wait_idle("tiny")
    assert state["stats"].num_finished.get("abort", 0) == before + 1
    assert state["stats"].num_running == state["stats"].num_waiting == 0


def test_auto_completed_model_and_metadata(llm, greedy_params):
    meta = llm.http.get("/v2/models/tiny_auto").json()
    assert {i["name"] for i in meta["inputs"]} >= {
        "text_input",
        "messages",
        "input_ids",
        "sampling_parameters",
    }
    config = llm.http.get("/v2/models/tiny_auto/config").json()
    assert config["model_transaction_policy"]["decoupled"] is True
    body = llm.generate("tiny_auto", {"text_input": PROMPT, "parameters": greedy_params(4)})
    assert body["completion_tokens"] == 4


def test_infer_endpoint_refuses_the_decoupled_model(llm):
    inputs = [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [PROMPT]}]
    response = llm.http.post("/v2/models/tiny/infer", json={"inputs": inputs})
    assert response.status_code == 501 and "generate_stream" in response.json()["error"]
