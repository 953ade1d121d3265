"""Finding the model file and telling TorchScript, torch.export and AOTInductor files apart."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nereid.backends.pytorch.loader import (
    AOTI,
    EXPORT,
    TORCHSCRIPT,
    detect_format,
    load_program,
    resolve_path,
)
from nereid.server.errors import InvalidArgument, Unavailable

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")

CPU = torch.device("cpu")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_formats_are_told_apart_by_content_not_name(tm, tmp_path):
    script = write(tmp_path / "a.pt2", tm.script_bytes(tm.Affine()))
    exported = write(tmp_path / "b.pt", tm.export_bytes(tm.Affine(), (torch.ones(2, 4),)))
    assert detect_format("m", script) == TORCHSCRIPT
    assert detect_format("m", exported) == EXPORT
    program = load_program("m", exported, EXPORT, "KIND_CPU", CPU)
    assert [a.name for a in program.arguments] == ["x"] and program.input_device == CPU


def test_other_zip_archives_are_refused(tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    path = write(tmp_path / "model.pt", archive.getvalue())
    with pytest.raises(InvalidArgument, match="is a zip archive but not a PyTorch model"):
        detect_format("m", path)


def test_model_pt_falls_back_to_model_pt2(tmp_path):
    version = tmp_path / "1"
    write(version / "model.pt2", b"x")
    assert resolve_path("m", version, "model.pt") == version / "model.pt2"
    assert resolve_path("m", version, "") == version / "model.pt2"
    with pytest.raises(Unavailable, match=r"model file '.*custom.pt' does not exist"):
        resolve_path("m", version, "custom.pt")


def test_kind_model_keeps_the_saved_device_and_feeds_inputs_there(tm, tmp_path):
    path = write(tmp_path / "model.pt", tm.script_bytes(tm.Affine()))
    program = load_program("m", path, TORCHSCRIPT, "KIND_MODEL", CPU)
    assert program.input_device == CPU
    assert [a.name for a in program.arguments] == ["x"]


@pytest.mark.skipif(
    os.environ.get("NEREID_SLOW_TESTS") != "1", reason="AOTInductor compiles C++ (~40 s); NEREID_SLOW_TESTS=1"
)
def test_aotinductor_package(tm, tmp_path):
    program = torch.export.export(
        tm.Mix().eval(),
        (torch.ones(2, 4), torch.ones(2, 4)),
        dynamic_shapes=({0: torch.export.Dim("b", max=64)}, {0: torch.export.Dim("b", max=64)}),
    )
    path = Path(torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "model.pt2")))
    assert detect_format("m", path) == AOTI
    loaded = load_program("m", path, AOTI, "KIND_CPU", CPU)
    assert loaded.arguments is None
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    got = loaded.fn(x, y)
    np.testing.assert_allclose(got[0].numpy(), (x - y).numpy(), rtol=1e-6)
    with pytest.raises(
        InvalidArgument, match="compiled by AOTInductor for cpu but the instance runs on cuda:0"
    ):
        load_program("m", path, AOTI, "KIND_GPU", torch.device("cuda", 0))
