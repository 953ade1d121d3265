"""model_repository/torch_linear: regenerable by build_torch.py, computes W x + b, loads in Nereid."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from nereid.proto import model_config_pb2 as mc

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")

REPOSITORY = Path(__file__).resolve().parents[4] / "model_repository"
COMMITTED = REPOSITORY / "torch_linear"


def _load_build():
    spec = importlib.util.spec_from_file_location(
        "nereid_model_repository_build_torch", REPOSITORY / "build_torch.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repo")
    assert {status for _, status in build.write(out)} == {"wrote"}
    return out


def run(path: Path, x: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(path))
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


def test_layout_and_config():
    assert sorted(p.relative_to(COMMITTED).as_posix() for p in COMMITTED.rglob("*") if p.is_file()) == [
        "1/model.pt",
        "config.pbtxt",
    ]
    config = text_format.Parse((COMMITTED / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (
        config.name == "torch_linear" and config.platform == "pytorch_libtorch" and config.max_batch_size == 8
    )
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("INPUT__0", mc.TYPE_FP32, [4])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("OUTPUT__0", mc.TYPE_FP32, [2])]
    assert (COMMITTED / "config.pbtxt").read_bytes() == build.CONFIG.encode()


def test_committed_model_behaves_like_a_fresh_build(built):
    # Bytes depend on the torch version (see build_torch.py), so compare what the models compute.
    x = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    fresh, committed = run(built / "torch_linear/1/model.pt", x), run(COMMITTED / "1/model.pt", x)
    assert committed.dtype == np.float32 and committed.shape == (8, 2)
    np.testing.assert_array_equal(committed, fresh)
    w, b = build.weights()
    np.testing.assert_allclose(committed, x.astype(np.float64) @ w.T + b, rtol=1e-5, atol=1e-6)


def test_build_is_byte_stable_for_one_torch_version(built):
    again = build.build_files()  # a second child process, with its own hash seed for everything else
    assert {status for _, status in build.write(built, again)} == {"unchanged"}


def test_archive_has_no_machine_specific_paths(built):
    data = (built / "torch_linear/1/model.pt").read_bytes()
    assert b"site-packages" not in data and b".debug_pkl" not in data


def test_check_passes(built):
    build.check(built)
