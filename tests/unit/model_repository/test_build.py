"""The example model repository: regenerable from model_repository/build.py, and the models compute."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

REPO_ROOT = Path(__file__).resolve().parents[3]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
BUILD_SCRIPT = MODEL_REPOSITORY / "build.py"


def _load_build():
    spec = importlib.util.spec_from_file_location("nereid_model_repository_build", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model_repository")
    report = build.write(out)
    assert {status for _, status in report} == {"wrote"}
    return out


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# Regeneration


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p != root / "build.py"
    }


def test_committed_repository_equals_fresh_build(built):
    fresh = _tree(built)
    # Hand-written models (e.g. the Python backend's preprocess/) are not generated.
    committed = {
        rel: data for rel, data in _tree(MODEL_REPOSITORY).items() if rel.split("/")[0] in build.MODEL_NAMES
    }
    assert sorted(committed) == sorted(fresh), "rerun `python model_repository/build.py` and commit"
    for rel, data in fresh.items():
        assert committed[rel] == data, f"{rel} differs from a fresh build; rerun model_repository/build.py"


def test_build_is_deterministic_and_idempotent(built):
    assert build.build_files() == build.build_files()
    assert {status for _, status in build.write(built)} == {"unchanged"}
    assert build.stale_files(built, build.build_files()) == []


def test_files_are_small(built):
    for rel, data in _tree(built).items():
        assert len(data) < 4096, rel


def test_expected_layout(built):
    assert sorted(_tree(built)) == [
        "add_sub/1/model.onnx",
        "add_sub/config.pbtxt",
        "identity_fp32/1/model.onnx",
        "mlp_classifier/1/model.onnx",
        "mlp_classifier/2/model.onnx",
        "mlp_classifier/config.yaml",
        "mlp_classifier/labels.txt",
        "string_identity/1/model.onnx",
        "string_identity/config.pbtxt",
    ]
    assert not list((built / "identity_fp32").glob("config.*")), "identity_fp32 exists to test auto-complete"


def test_models_are_opset17_and_valid(built):
    import onnx

    for path in sorted(built.rglob("model.onnx")):
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert model.ir_version == build.IR_VERSION
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
        assert model.producer_version == ""


# ---------------------------------------------------------------------------------------------
# Configs


def test_mlp_yaml_config(built):
    cfg = yaml.safe_load((built / "mlp_classifier/config.yaml").read_text())
    assert cfg == {
        "name": "mlp_classifier",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 32,
        "version_policy": {"all": {}},
        "input": [{"name": "features", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [
            {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3], "label_filename": "labels.txt"},
            {"name": "label", "data_type": "TYPE_INT64", "dims": [1]},
        ],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "parameters": {"intra_op_thread_count": {"string_value": "1"}},
    }


def test_configs_parse_as_triton_model_config(built):
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import json_format, text_format

    add_sub = text_format.Parse((built / "add_sub/config.pbtxt").read_text(), mc.ModelConfig())
    assert add_sub.name == "add_sub" and add_sub.platform == "onnxruntime_onnx"
    assert add_sub.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in add_sub.input] == [
        ("INPUT0", mc.TYPE_FP32, [16]),
        ("INPUT1", mc.TYPE_FP32, [16]),
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in add_sub.output] == [
        ("OUTPUT0", mc.TYPE_FP32, [16]),
        ("OUTPUT1", mc.TYPE_FP32, [16]),
    ]
    assert add_sub.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, g.kind) for g in add_sub.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]
    assert add_sub.version_policy.WhichOneof("policy_choice") == "latest"
    assert add_sub.version_policy.latest.num_versions == 1

    strings = text_format.Parse((built / "string_identity/config.pbtxt").read_text(), mc.ModelConfig())
    assert strings.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in (*strings.input, *strings.output)] == [
        ("INPUT0", mc.TYPE_STRING, [1]),
        ("OUTPUT0", mc.TYPE_STRING, [1]),
    ]

    mlp = json_format.ParseDict(
        yaml.safe_load((built / "mlp_classifier/config.yaml").read_text()), mc.ModelConfig()
    )
    assert mlp.version_policy.WhichOneof("policy_choice") == "all"
    assert mlp.parameters["intra_op_thread_count"].string_value == "1"
    assert [(t.name, t.data_type) for t in mlp.output] == [
        ("probabilities", mc.TYPE_FP32),
        ("label", mc.TYPE_INT64),
    ]


def test_onnx_io_matches_configs(built):
    """With batching the ONNX shapes are the config dims behind one dynamic batch dim."""

    def io(path: Path):
        sess = _session(path)
        return [
            (t.name, t.type, [d if isinstance(d, int) else -1 for d in t.shape])
            for t in (*sess.get_inputs(), *sess.get_outputs())
        ]

    assert io(built / "add_sub/1/model.onnx") == [
        (name, "tensor(float)", [-1, 16]) for name in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")
    ]
    for version in (1, 2):
        assert io(built / f"mlp_classifier/{version}/model.onnx") == [
            ("features", "tensor(float)", [-1, 4]),
            ("probabilities", "tensor(float)", [-1, 3]),
            ("label", "tensor(int64)", [-1, 1]),
        ]
    assert io(built / "identity_fp32/1/model.onnx") == [
        ("INPUT0", "tensor(float)", [-1, -1]),
        ("OUTPUT0", "tensor(float)", [-1, -1]),
    ]
    assert io(built / "string_identity/1/model.onnx") == [
        ("INPUT0", "tensor(string)", [-1, 1]),
        ("OUTPUT0", "tensor(string)", [-1, 1]),
    ]


# ---------------------------------------------------------------------------------------------
# Numerics


def test_check_passes(built):
    build.check(built)


@pytest.mark.parametrize("batch", [1, 8])
def test_add_sub(built, batch):
    rng = np.random.default_rng(batch)
    a = rng.standard_normal((batch, 16), dtype=np.float32)
    b = rng.standard_normal((batch, 16), dtype=np.float32)
    out0, out1 = _session(built / "add_sub/1/model.onnx").run(
        ["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b}
    )
    assert out0.dtype == out1.dtype == np.float32
    np.testing.assert_array_equal(out0, a + b)
    np.testing.assert_array_equal(out1, a - b)


def test_add_sub_exact_values(built):
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.float32)
    out0, out1 = _session(built / "add_sub/1/model.onnx").run(None, {"INPUT0": a, "INPUT1": b})
    assert out0.tolist() == [[float(i + 1) for i in range(16)]]
    assert out1.tolist() == [[float(i - 1) for i in range(16)]]


@pytest.mark.parametrize("version", [1, 2])
def test_mlp_classifier(built, version):
    rng = np.random.default_rng(100 + version)
    x = (rng.standard_normal((32, 4)) * 3).astype(np.float32)
    probs, label = _session(built / f"mlp_classifier/{version}/model.onnx").run(None, {"features": x})
    assert probs.shape == (32, 3) and probs.dtype == np.float32
    assert label.shape == (32, 1) and label.dtype == np.int64
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(label[:, 0], probs.argmax(axis=1))

    w1, b1, w2, b2 = build.mlp_weights(version)
    logits = np.maximum(x.astype(np.float64) @ w1 + b1, 0) @ w2 + b2
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)


def test_mlp_versions_differ(built):
    x = np.linspace(-2, 2, 40, dtype=np.float32).reshape(10, 4)
    p1, _ = _session(built / "mlp_classifier/1/model.onnx").run(None, {"features": x})
    p2, _ = _session(built / "mlp_classifier/2/model.onnx").run(None, {"features": x})
    assert not np.allclose(p1, p2)
    for w1, w2 in zip(build.mlp_weights(1), build.mlp_weights(2), strict=True):
        assert w1.shape == w2.shape and not np.array_equal(w1, w2)


def test_mlp_predicts_every_class(built):
    """Not a trained model, but it should not be degenerate (always the same label)."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((512, 4)) * 3).astype(np.float32)
    for version in (1, 2):
        _, label = _session(built / f"mlp_classifier/{version}/model.onnx").run(None, {"features": x})
        assert set(label[:, 0].tolist()) == {0, 1, 2}, version


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (8, 0), (2, 1024)])
def test_identity_fp32(built, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x.flat[: min(x.size, 3)] = [np.nan, np.inf, -0.0][: min(x.size, 3)]
    (y,) = _session(built / "identity_fp32/1/model.onnx").run(None, {"INPUT0": x})
    assert y.dtype == np.float32 and y.shape == x.shape
    assert y.tobytes() == x.tobytes()


STRINGS = [
    "hello",
    "",
    "nul\x00inside",
    "\x00",
    "trailing nul\x00",
    "h\u00e9llo \u2603 \U0001f600",
    "a" * 1000,
]


def test_string_identity_round_trips(built):
    x = np.array([[s] for s in STRINGS], dtype=object)
    (y,) = _session(built / "string_identity/1/model.onnx").run(None, {"INPUT0": x})
    assert y.shape == x.shape and y.dtype == object
    assert y[:, 0].tolist() == STRINGS


# onnxruntime's Python binding limits for string tensors. These pin down current behaviour (1.32)
# that the ONNX backend has to work around; if one starts failing, onnxruntime changed.


def test_string_limit_non_utf8_cannot_be_fed(built):
    """Strings are encoded as UTF-8 on the way in: non-UTF-8 bytes have no representation."""
    sess = _session(built / "string_identity/1/model.onnx")
    not_utf8 = b"\xff\xfe\x80".decode("utf-8", "surrogateescape")
    with pytest.raises(UnicodeEncodeError):
        sess.run(None, {"INPUT0": np.array([[not_utf8]], dtype=object)})


def test_string_limit_non_utf8_cannot_be_fetched():
    """Strings are decoded as UTF-8 on the way out, so a non-UTF-8 output raises."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor("c", TensorProto.STRING, [2], [b"ok", b"\xff\xfe"])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["OUTPUT0"], value=value)],
        "const",
        [],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(UnicodeDecodeError):
        sess.run(None, {})


def test_string_limit_bytes_objects_are_stringified(built):
    """bytes elements in an object array are passed through str(): b"a" arrives as "b'a'".

    So a backend must decode BYTES to str before feeding onnxruntime, never hand it bytes.
    """
    sess = _session(built / "string_identity/1/model.onnx")
    (y,) = sess.run(None, {"INPUT0": np.array([[b"a"]], dtype=object)})
    assert y.tolist() == [["b'a'"]]


def test_string_limit_fixed_width_arrays_truncate_at_nul(built):
    """numpy fixed-width string arrays (dtype S/U) are cut at the first NUL; use dtype=object."""
    sess = _session(built / "string_identity/1/model.onnx")
    for arr in (np.array([["a\x00b"]], dtype=np.str_), np.array([[b"a\x00b"]], dtype=np.bytes_)):
        (y,) = sess.run(None, {"INPUT0": arr})
        assert y.tolist() == [["a"]], arr.dtype
