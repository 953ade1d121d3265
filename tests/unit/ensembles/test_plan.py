"""Load-time validation of ensemble configs: every message names the step and the tensor."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from nereid.ensembles.binding import bind_steps
from nereid.ensembles.plan import build_plan
from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import NotFound
from nereid.server.model_config import ConfigError


def cfg(text: str) -> mc.ModelConfig:
    config = text_format.Parse(text, mc.ModelConfig())
    config.name = config.name or "ens"
    return config


def io(inputs: str = "IN", outputs: str = "OUT", dtype: str = "TYPE_FP32", dims: str = "[ -1 ]") -> str:
    ins = ", ".join(f'{{ name: "{n}" data_type: {dtype} dims: {dims} }}' for n in inputs.split(","))
    outs = ", ".join(f'{{ name: "{n}" data_type: {dtype} dims: {dims} }}' for n in outputs.split(","))
    return f"input [ {ins} ] output [ {outs} ]"


def step(model: str, ins: dict[str, str], outs: dict[str, str], when: str = "") -> str:
    i = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in ins.items())
    o = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outs.items())
    return f'{{ model_name: "{model}" model_version: -1 {i} {o} {when} }}'


def ensemble(io_text: str, *steps: str) -> mc.ModelConfig:
    return cfg(f'platform: "ensemble" {io_text} ensemble_scheduling {{ step [ {", ".join(steps)} ] }}')


def model(
    dtype: str = "TYPE_FP32", dims: str = "[ -1 ]", decoupled: bool = False, mbs: int = 0
) -> mc.ModelConfig:
    text = f"""max_batch_size: {mbs}
input [ {{ name: "INPUT0" data_type: {dtype} dims: {dims} }} ]
output [ {{ name: "OUTPUT0" data_type: {dtype} dims: {dims} }} ]"""
    config = cfg(text)
    config.model_transaction_policy.decoupled = decoupled
    return config


def lookup(models: dict[str, mc.ModelConfig]):
    def find(name: str, version: str) -> mc.ModelConfig:
        if name not in models:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        return models[name]

    return find


def error(config: mc.ModelConfig, models: dict[str, mc.ModelConfig] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        plan = build_plan(config, "ens")
        bind_steps(plan, config, lookup(models or {}), "ens")
    return info.value.message


def test_chain_builds():
    config = ensemble(
        io(), step("a", {"INPUT0": "IN"}, {"OUTPUT0": "X"}), step("b", {"INPUT0": "X"}, {"OUTPUT0": "OUT"})
    )
    plan = build_plan(config, "ens")
    bind_steps(plan, config, lookup({"a": model(), "b": model()}), "ens")
    assert plan.needed_steps(frozenset({"OUT"})) == {0, 1}
    assert not config.model_transaction_policy.decoupled


def test_cycle_names_steps_and_tensors():
    config = ensemble(
        io(),
        step("a", {"INPUT0": "IN", "INPUT1": "Y"}, {"OUTPUT0": "X"}),
        step("b", {"INPUT0": "X"}, {"OUTPUT0": "Y", "OUTPUT1": "OUT"}),
    )
    message = error(config)
    assert "cycle" in message and "step 0 ('a')" in message and "'X'" in message and "'Y'" in message


def test_consumed_never_produced():
    message = error(ensemble(io(), step("a", {"INPUT0": "GHOST"}, {"OUTPUT0": "OUT"})))
    assert "step 0 ('a') reads 'GHOST'" in message


def test_output_nobody_produces():
    message = error(ensemble(io(outputs="OUT,OTHER"), step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})))
    assert "ensemble output 'OTHER' is produced by no step" in message


def test_input_nobody_consumes():
    message = error(ensemble(io(inputs="IN,UNUSED"), step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})))
    assert "ensemble input 'UNUSED' is consumed by no step" in message


def test_unknown_step_model():
    message = error(ensemble(io(), step("nope", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})))
    assert "step 0 ('nope')" in message and "unknown" in message


def test_dtype_mismatch_between_producer_and_consumer():
    config = ensemble(
        io(), step("a", {"INPUT0": "IN"}, {"OUTPUT0": "X"}), step("b", {"INPUT0": "X"}, {"OUTPUT0": "OUT"})
    )
    message = error(config, {"a": model(), "b": model("TYPE_INT32")})
    assert "tensor 'X'" in message and "step 0 ('a') output 'OUTPUT0' is FP32" in message
    assert "step 1 ('b') input 'INPUT0'" in message


def test_shape_mismatch_between_producer_and_consumer():
    config = ensemble(
        io(), step("a", {"INPUT0": "IN"}, {"OUTPUT0": "X"}), step("b", {"INPUT0": "X"}, {"OUTPUT0": "OUT"})
    )
    message = error(config, {"a": model(dims="[ 4 ]"), "b": model(dims="[ 5 ]")})
    assert "tensor 'X'" in message and "[4]" in message and "[5]" in message


def test_unmapped_and_unknown_step_tensors():
    config = ensemble(io(), step("a", {"WRONG": "IN"}, {"OUTPUT0": "OUT"}))
    assert "maps input 'WRONG'" in error(config, {"a": model()})


def test_two_producers_need_exclusive_routes():
    config = ensemble(
        io(),
        step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}),
        step("b", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}),
    )
    assert "both write 'OUT'" in error(config)


def test_routes_build_and_otherwise_learns_values():
    config = ensemble(
        io(inputs="IN,LANG"),
        step("en", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, 'when { tensor: "LANG" equals: ["en"] }'),
        step("xx", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, 'when { tensor: "LANG" otherwise: true }'),
    )
    plan = build_plan(config, "ens")
    assert plan.steps[1].when is not None and plan.steps[1].when.others == {"en"}


def test_route_values_must_not_overlap():
    config = ensemble(
        io(inputs="IN,LANG"),
        step("en", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, 'when { tensor: "LANG" equals: ["en", "fr"] }'),
        step("fr", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, 'when { tensor: "LANG" equals: ["fr"] }'),
    )
    assert "step 1 ('fr') routes on 'LANG' value(s) ['fr']" in error(config)


def test_otherwise_alone_is_an_error():
    config = ensemble(
        io(inputs="IN,LANG"),
        step("xx", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, 'when { tensor: "LANG" otherwise: true }'),
    )
    assert "routes 'otherwise' on 'LANG'" in error(config)


def test_bool_guard_needs_bool_tensor():
    config = ensemble(
        io(),
        step("a", {"INPUT0": "IN"}, {"OUTPUT0": "X"}),
        step("b", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, 'when { tensor: "X" }'),
    )
    message = error(config, {"a": model(), "b": model()})
    assert "step 1 ('b') runs when 'X' is true" in message and "not BOOL" in message


def test_condition_on_unknown_tensor():
    config = ensemble(io(), step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, 'when { tensor: "NOPE" }'))
    assert "step 0 ('a') reads 'NOPE'" in error(config)


def test_decoupled_step_marks_ensemble_decoupled():
    config = ensemble(
        io(), step("a", {"INPUT0": "IN"}, {"OUTPUT0": "X"}), step("b", {"INPUT0": "X"}, {"OUTPUT0": "OUT"})
    )
    plan = build_plan(config, "ens")
    bind_steps(plan, config, lookup({"a": model(decoupled=True), "b": model()}), "ens")
    assert config.model_transaction_policy.decoupled and plan.steps[0].decoupled


def test_batching_ensemble_needs_batching_steps():
    config = ensemble(io(), step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}))
    config.max_batch_size = 8
    assert "max_batch_size 0, below the ensemble's 8" in error(config, {"a": model()})


def test_yaml_and_pbtxt_read_the_same(tmp_path):
    from nereid.server.model_config import parse_config_file

    (tmp_path / "config.yaml").write_text(
        """
platform: ensemble
input: [{name: IN, data_type: TYPE_FP32, dims: [-1]}, {name: LANG, data_type: TYPE_STRING, dims: [1]}]
output: [{name: OUT, data_type: TYPE_FP32, dims: [-1]}]
ensemble_scheduling:
  step:
    - model_name: en
      model_version: -1
      input_map: {INPUT0: IN}
      output_map: {OUTPUT0: OUT}
      when: {tensor: LANG, equals: [en]}
    - model_name: other
      model_version: -1
      input_map: {INPUT0: IN}
      output_map: {OUTPUT0: OUT}
      when: {tensor: LANG, otherwise: true}
"""
    )
    config = parse_config_file(tmp_path / "config.yaml")
    config.name = "ens"
    plan = build_plan(config, "ens")
    assert [s.when.otherwise for s in plan.steps if s.when] == [False, True]
