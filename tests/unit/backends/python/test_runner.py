"""Importing model files by path and holding execute() to its contract."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nereid.backends.python import loader, pb_utils
from nereid.backends.python.runner import (
    ExecuteError,
    UserModel,
    auto_complete,
    bytes_array,
    check_result,
    fail_open_senders,
)

COUNTER = """
import triton_python_backend_utils as pb_utils

CALLS = []


class TritonPythonModel:
    def initialize(self, args):
        CALLS.append(args["model_name"])

    def execute(self, requests):
        CALLS.append(len(requests))
        return [pb_utils.InferenceResponse([]) for _ in requests]
"""


def _write(tmp_path: Path, source: str, name: str = "model.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_model_files_import_by_path_with_their_own_globals(tmp_path):
    path = _write(tmp_path, COUNTER)
    before = list(sys.path)
    first = UserModel(path, loader.module_name("m", 1, "0"))
    second = UserModel(path, loader.module_name("m", 1, "1"))
    assert sys.path == before
    assert sys.modules["triton_python_backend_utils"] is pb_utils
    first.initialize({"model_name": "a"})
    assert len(first.execute([pb_utils.InferenceRequest()], decoupled=False)) == 1
    second.initialize({"model_name": "b"})
    assert first.model.__class__ is not second.model.__class__
    assert sys.modules[first.module_name].CALLS == ["a", 1]
    assert sys.modules[second.module_name].CALLS == ["b"]
    assert first.finalize() is None
    assert first.module_name not in sys.modules


def test_unique_module_names():
    a, b = loader.module_name("my-model.v2", 3, "0"), loader.module_name("my-model.v2", 3, "0")
    assert a != b and a.isidentifier()


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        ("def execute(self:\n", ["failed to import", "SyntaxError", "line 1"]),
        ("raise RuntimeError('no GPU')\n", ["RuntimeError: no GPU", "(at model.py:1 in <module>)"]),
        ("class Model:\n    pass\n", ["does not define a class 'TritonPythonModel'"]),
        ("class TritonPythonModel:\n    pass\n", ["has no execute(self, requests) method"]),
        (
            "class TritonPythonModel:\n    def __init__(self):\n        1 / 0\n    def execute(self, r):\n        pass\n",
            ["TritonPythonModel() failed", "ZeroDivisionError"],
        ),
    ],
)
def test_broken_files_are_described(tmp_path, source, fragments):
    path = _write(tmp_path, source)
    with pytest.raises(loader.ModelFileError) as caught:
        UserModel(path, loader.module_name("m", 1, "0"))
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert not [name for name in sys.modules if name.startswith("_nereid_python_model_m_1_0")]


def test_execute_failures_name_the_line(tmp_path):
    path = _write(
        tmp_path,
        """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def initialize(self, args):
                raise pb_utils.TritonModelException("bad args")

            def execute(self, requests):
                return {}["key"]
    """,
    )
    model = UserModel(path, loader.module_name("m", 1, "0"))
    with pytest.raises(ExecuteError, match=re.escape("initialize() failed: bad args")):
        model.initialize({})
    with pytest.raises(ExecuteError, match=re.escape("KeyError: 'key' (at model.py:9 in execute)")):
        model.execute([pb_utils.InferenceRequest()], decoupled=False)


def test_async_execute_runs_on_the_instance_loop(tmp_path):
    path = _write(
        tmp_path,
        """
        import asyncio
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            async def execute(self, requests):
                await asyncio.sleep(0)
                return [pb_utils.InferenceResponse([]) for _ in requests]

            async def finalize(self):
                await asyncio.sleep(0)
    """,
    )
    model = UserModel(path, loader.module_name("m", 1, "0"))
    assert len(model.execute([pb_utils.InferenceRequest()] * 2, decoupled=False)) == 2
    assert model.finalize() is None


def test_check_result_messages():
    ok = pb_utils.InferenceResponse([])
    assert check_result([ok], 1, False) == [ok]
    assert check_result(None, 3, True) is None
    for result, message in [
        (None, "returned None for 2 request"),
        ((ok,), "returned 1 response(s) for 2 request(s)"),
        ({"a": 1}, "returned dict"),
        ([ok, None], "returned NoneType at position 1"),
    ]:
        with pytest.raises(ExecuteError) as caught:
            check_result(result, 2, False)
        assert message in str(caught.value)
    with pytest.raises(ExecuteError, match=re.escape("decoupled, so execute() must return None")):
        check_result([ok], 1, True)


def test_fail_open_senders_ends_only_open_requests():
    sent = []

    class Target:
        def send(self, response, final):
            sent.append((response.error().message() if response else None, final))

        def cancelled(self) -> bool:
            return False

        def abandon(self) -> None:
            sent.append(("abandoned", True))

    requests = [pb_utils.InferenceRequest(), pb_utils.InferenceRequest(), pb_utils.InferenceRequest()]
    requests[0]._sender = pb_utils.InferenceResponseSender(Target())
    requests[1]._sender = pb_utils.InferenceResponseSender(Target())
    requests[1]._sender.close()
    fail_open_senders(requests, "boom")
    assert sent == [(None, True), ("boom", True)]


def test_bytes_array_encodes_text():
    out = bytes_array(np.array([["a", "é"], [b"x", 7]], dtype=np.object_))
    assert out.shape == (2, 2) and out.tolist() == [[b"a", "é".encode()], [b"x", b"7"]]
    assert bytes_array(np.array(["ab", "c"])).tolist() == [b"ab", b"c"]
    assert bytes_array(np.array([b"ab"], dtype="S2")).tolist() == [b"ab"]


def test_auto_complete_hook(tmp_path):
    path = _write(
        tmp_path,
        """
        class TritonPythonModel:
            @staticmethod
            def auto_complete_config(auto_complete_model_config):
                auto_complete_model_config.set_max_batch_size(2)

            def execute(self, requests):
                return []
    """,
    )
    config = {"name": "m", "max_batch_size": 0, "input": [], "output": []}
    assert auto_complete(path, loader.module_name("m", 1, "ac"), config)["max_batch_size"] == 2
    assert config["max_batch_size"] == 0
    plain = _write(
        tmp_path, "class TritonPythonModel:\n    def execute(self, r):\n        return []\n", "plain.py"
    )
    assert auto_complete(plain, loader.module_name("m", 1, "ac"), config) == config
