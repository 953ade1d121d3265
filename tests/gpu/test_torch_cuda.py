"""PyTorch models on cuda:0 against the same models on CPU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")


def test_torchscript_and_export_on_gpu_match_cpu(gpu, repo, start_server):
    tm = gpu.torch_helpers()
    io = ([("INPUT__0", "FP32", [4])], [("OUTPUT__0", "FP32", [3])])
    script = tm.script_bytes(tm.Affine())
    exported = tm.export_bytes(tm.Affine(), (torch.ones(2, 4),))
    for kind in ("KIND_CPU", "KIND_GPU"):
        group = f"instance_group [ {{ count: 1 kind: {kind} }} ]"
        tm.write_model(repo.root, f"script_{kind}", script, tm.config_text(*io, extra=group))
        tm.write_model(
            repo.root,
            f"export_{kind}",
            exported,
            tm.config_text(*io, platform="torch_aoti", extra=group),
            filename="model.pt2",
        )
    running = start_server(repo.root)
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    for fmt in ("script", "export"):
        on_cpu = gpu.infer_http(running.http_url, f"{fmt}_KIND_CPU", x, "OUTPUT__0", "INPUT__0")
        on_gpu = gpu.infer_http(running.http_url, f"{fmt}_KIND_GPU", x, "OUTPUT__0", "INPUT__0")
        np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)


def test_direct_instance_lives_on_cuda(gpu, tmp_path):
    from nereid.backends.base import InstanceContext, ModelContext
    from nereid.backends.pytorch.backend import PyTorchBackend
    from nereid.server.repository import prepare_config

    tm = gpu.torch_helpers()
    folder = tm.write_model(
        tmp_path,
        "affine",
        tm.script_bytes(tm.Affine()),
        tm.config_text([("INPUT__0", "FP32", [4])], [("OUTPUT__0", "FP32", [3])]),
    )
    config = prepare_config(folder)
    model = PyTorchBackend().load_model(ModelContext("affine", 1, config, folder, folder / "1"))
    instance = model.create_instance(InstanceContext("g", 0, "KIND_GPU", 0))
    assert instance.program.input_device == torch.device("cuda", 0)
    assert next(instance.program.fn.parameters()).device.type == "cuda"
    instance.finalize()
