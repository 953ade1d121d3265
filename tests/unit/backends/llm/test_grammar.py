"""Guided decoding in the engine: a random tiny model still writes only what the grammar allows."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from nereid.backends.llm.chat import hermes_messages, render, supports_tools
from nereid.backends.llm.config import SpeculativeConfig
from nereid.backends.llm.sampling import GuidedDecodingParams, SamplingParams

pytest.importorskip("xgrammar")

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "ok": {"type": "boolean"}},
    "required": ["n", "ok"],
    "additionalProperties": False,
}
SPECS = [
    (GuidedDecodingParams(json=SCHEMA), lambda t: jsonschema.validate(json.loads(t), SCHEMA)),
    (GuidedDecodingParams(regex=r"[ab]{2,4}c"), lambda t: re.fullmatch(r"[ab]{2,4}c", t) or pytest.fail(t)),
    (GuidedDecodingParams(choice=["fox", "dog"]), lambda t: t in ("fox", "dog") or pytest.fail(t)),
    (
        GuidedDecodingParams(grammar='root ::= "x" [0-9] [0-9]'),
        lambda t: re.fullmatch(r"x\d\d", t) or pytest.fail(t),
    ),
]


def test_guided_rows_match_their_grammar_beside_a_free_one(make_engine, run):
    engine = make_engine()
    prompt = engine.tokenizer.encode("The quick brown fox")
    for seed in range(3):
        for i, (spec, _) in enumerate(SPECS):
            params = SamplingParams(
                temperature=1.0, seed=seed, max_tokens=40, min_tokens=2, guided_decoding=spec
            )
            engine.add_request(f"{seed}-{i}", prompt, params)
        engine.add_request(
            f"{seed}-free", prompt, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
        )
        outputs = run(engine)
        for i, (_, check) in enumerate(SPECS):
            outs = outputs[f"{seed}-{i}"]
            assert outs[-1].finish_reason == "stop"
            check("".join(o.new_text for o in outs))
        assert len([t for o in outputs[f"{seed}-free"] for t in o.new_token_ids]) == 8


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (GuidedDecodingParams(regex="(("), "guided regex cannot be compiled"),
        (GuidedDecodingParams(grammar="root ::= "), "guided grammar cannot be compiled"),
        (GuidedDecodingParams(json={"type": 7}), "not a valid JSON Schema"),
        (GuidedDecodingParams(json={"description": "x" * 200}), "max_grammar_bytes"),
        (GuidedDecodingParams(json={"a": {"b": {"c": {"d": 1}}}}), "max_schema_depth"),
    ],
)
def test_bad_grammars_are_rejected_at_add_request(make_engine, spec, message):
    engine = make_engine(max_grammar_bytes=128, max_schema_depth=3)
    with pytest.raises(ValueError, match=message):
        engine.add_request("bad", [1, 2, 3], SamplingParams(guided_decoding=spec))
    assert not engine.has_unfinished()


def test_params_need_exactly_one_kind():
    with pytest.raises(ValueError, match="exactly one"):
        GuidedDecodingParams()
    with pytest.raises(ValueError, match="exactly one"):
        GuidedDecodingParams(regex="a", choice=["a"])
    with pytest.raises(ValueError, match="unsupported guided decoding option 'xml'"):
        SamplingParams(guided_decoding={"xml": "<a/>"})  # type: ignore[arg-type]
    assert SamplingParams(
        guided_decoding={"json": '{"type": "object"}'}
    ).guided_decoding == GuidedDecodingParams(json={"type": "object"})


def test_tools_render_hermes_style_without_template_support(make_engine):
    tokenizer = make_engine().tokenizer
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    assert not supports_tools(tokenizer.chat_template)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "42"},
    ]
    text = render(tokenizer, messages, [tool])
    assert text.startswith("<system>You are a function calling AI model.")
    assert '<tools>\n{"name": "f", "parameters": {"type": "object"}}\n</tools>' in text
    assert '<assistant><tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>' in text
    assert "<tool><tool_response>\n42\n</tool_response>" in text
    assert hermes_messages([{"role": "system", "content": "Be brief."}], [tool])[0]["content"].startswith(
        "Be brief."
    )
    tokenizer.chat_template = "{{ tools | length }} tools{% for m in messages %}{{ m.content }}{% endfor %}"
    assert render(tokenizer, messages[:1], [tool]) == "1 toolsq"


def test_request_parameters_carry_guided_decoding_as_object_or_json_text():
    from nereid.backends.llm.requests import sampling_params
    from nereid.server.errors import InvalidArgument
    from nereid.server.types import InferRequest

    def params(**p: object) -> SamplingParams:
        return sampling_params(InferRequest(model_name="m", inputs=[], parameters=dict(p)))

    assert params(guided_decoding={"regex": "a+"}).guided_decoding == GuidedDecodingParams(regex="a+")
    assert params(structured_outputs='{"choice": ["x"]}').guided_decoding == GuidedDecodingParams(
        choice=["x"]
    )
    with pytest.raises(InvalidArgument, match="guided_decoding"):
        params(guided_decoding='{"regex": "a", "json_object": true}')


def test_greedy_guided_rows_match_their_grammar_in_a_speculating_engine(make_engine, run):
    # Greedy rows are the ones prompt lookup would draft for; a guided one must decode one masked token per step.
    engine = make_engine(speculative_config=SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_max=3))
    prompt = engine.tokenizer.encode("x1 x2 x3 x4 fox dog fox dog")
    for i, (spec, _) in enumerate(SPECS):
        engine.add_request(str(i), prompt, SamplingParams(temperature=0, max_tokens=40, guided_decoding=spec))
    engine.add_request("free", prompt, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    outputs = run(engine)
    for i, (_, check) in enumerate(SPECS):
        assert outputs[str(i)][-1].finish_reason == "stop"
        check("".join(o.new_text for o in outputs[str(i)]))
    assert len([t for o in outputs["free"] for t in o.new_token_ids]) == 16
