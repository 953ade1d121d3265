"""The stub process as a user meets it: every datatype, big tensors, no leaked memory, is_cancelled,
and modules beside model.py -- the last two in both modes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from nereid.server.types import InferRequest, Tensor

IN_PROCESS = 'parameters { key: "NEREID_ISOLATION" value: { string_value: "none" } }'
MODES = {"in_process": IN_PROCESS, "stub": ""}

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
DATATYPES += ["FP16", "FP32", "FP64", "BF16", "BYTES"]
NUMPY = {"BOOL": np.bool_, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BF16": np.uint16}

ECHO_MODEL = """
import os
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            outputs = [pb_utils.Tensor("OUT_" + t.name()[3:], t.as_numpy()) for t in request.inputs()]
            outputs.append(pb_utils.Tensor("PID", np.array([os.getpid()], np.int64)))
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""


def _config_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _echo_config() -> str:
    inputs = ",\n".join(
        f'{{ name: "IN_{d}" data_type: {_config_type(d)} dims: [ -1 ] optional: true }}' for d in DATATYPES
    )
    outputs = ",\n".join(
        f'{{ name: "OUT_{d}" data_type: {_config_type(d)} dims: [ -1 ] }}' for d in DATATYPES
    )
    return f"""
backend: "python"
input [{inputs}]
output [{outputs},
{{ name: "PID" data_type: TYPE_INT64 dims: [ 1 ] }}]
"""


def _sample(datatype: str, count: int) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([bytes([i % 256]) * (i % 5) for i in range(count)], dtype=np.object_)
    kind = NUMPY.get(datatype) or np.dtype(datatype.lower())
    return (np.arange(count) % 2 == 1) if datatype == "BOOL" else np.arange(count).astype(kind)


def _echo(running, datatypes: list[str], count: int) -> dict[str, Tensor]:
    request = InferRequest(
        "echo", [Tensor(f"IN_{d}", d, (count,), _sample(d, count)) for d in datatypes], id="e"
    )
    response = running.call(running.core.infer(request))
    return {t.name: t for t in response.outputs}


def _arena_mappings() -> int:
    """Arena mappings and descriptors this (the server's) process holds."""
    maps = Path("/proc/self/maps").read_text().count("nereid-arena")
    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds += "nereid-arena" in os.readlink(f"/proc/self/fd/{fd}")
    return maps + fds


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def test_every_datatype_empty_and_big_tensors_cross_the_stub(py_repo, start_server):
    py_repo.model("echo", _echo_config(), ECHO_MODEL)
    running = start_server(py_repo.root)
    for count in (3, 0):
        got = _echo(running, DATATYPES, count)
        assert int(got["PID"].data[0]) != os.getpid()
        for datatype in DATATYPES:
            out = got[f"OUT_{datatype}"]
            assert out.datatype == datatype and out.shape == (count,), datatype
            np.testing.assert_array_equal(out.data, _sample(datatype, count))
    # Past the 1 MiB arenas: the first call grows the request arena and sends its outputs inline,
    # the second finds both arenas grown.
    for _ in range(2):
        got = _echo(running, ["FP32", "UINT8"], 600_000)
        np.testing.assert_array_equal(got["OUT_FP32"].data, _sample("FP32", 600_000))
        np.testing.assert_array_equal(got["OUT_UINT8"].data, _sample("UINT8", 600_000))


def test_no_shared_memory_is_left_after_a_crash_or_an_unload(py_repo, start_server):
    py_repo.model("echo", _echo_config(), ECHO_MODEL)
    py_repo.model(
        "crash",
        'backend: "python"\ninput [{ name: "X" data_type: TYPE_INT32 dims: [ 1 ] }]\n'
        'output [{ name: "X" data_type: TYPE_INT32 dims: [ 1 ] }]\n',
        "import os\n\nclass TritonPythonModel:\n    def execute(self, requests):\n        os._exit(9)\n",
    )
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    base = _arena_mappings()
    running = start_server(py_repo.root, model_control_mode="explicit", load_model=["echo", "crash"])
    pid = int(_echo(running, ["FP32"], 4)["PID"].data[0])
    loaded = _arena_mappings()
    assert loaded > base  # the two arenas of each of the two stubs

    crash = InferRequest("crash", [Tensor("X", "INT32", (1,), np.array([1], np.int32))])
    with pytest.raises(Exception, match="exit code 9"):
        running.call(running.core.infer(crash))
    with pytest.raises(Exception, match="exit code 9"):  # the restarted stub, and its arenas
        running.call(running.core.infer(crash))
    deadline = time.monotonic() + 10  # the next restart runs in the background
    while _arena_mappings() != loaded and time.monotonic() < deadline:
        assert _arena_mappings() <= loaded  # the dead stubs' arenas are gone
        time.sleep(0.05)
    assert _arena_mappings() == loaded

    for model in ("echo", "crash"):
        running.call(running.core.unload_model(model))
    deadline = time.monotonic() + 10
    while (_arena_mappings() != base or _alive(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _arena_mappings() == base and not _alive(pid)
    if os.path.isdir("/dev/shm"):
        assert set(os.listdir("/dev/shm")) <= shm_before


WATCH_MODEL = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            marker = pb_utils.get_input_tensor_by_name(request, "MARKER").as_numpy()[0].decode()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not request.is_cancelled():
                time.sleep(0.02)
            with open(marker, "w") as out:
                out.write("cancelled" if request.is_cancelled() else "not cancelled")
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OK", np.array([1], np.int32))]) for _ in requests]
"""
WATCH_CONFIG = """
backend: "python"
input [{{ name: "MARKER" data_type: TYPE_STRING dims: [ 1 ] }}]
output [{{ name: "OK" data_type: TYPE_INT32 dims: [ 1 ] }}]
{mode}
"""


@pytest.mark.parametrize("mode", list(MODES))
def test_is_cancelled_sees_a_client_that_gave_up(py_repo, start_server, tmp_path, mode):
    py_repo.model("watch", WATCH_CONFIG.format(mode=MODES[mode]), WATCH_MODEL)
    running = start_server(py_repo.root)
    marker = tmp_path / "seen"
    request = InferRequest(
        "watch", [Tensor("MARKER", "BYTES", (1,), np.array([str(marker).encode()], dtype=np.object_))]
    )
    future = asyncio.run_coroutine_threadsafe(running.core.infer(request), running.loop)
    time.sleep(0.5)
    future.cancel()
    deadline = time.monotonic() + 8
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    assert marker.read_text() == "cancelled"


SIBLING_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

import helpers
from tools.scale import factor


class TritonPythonModel:
    def execute(self, requests):
        value = np.array([helpers.OFFSET + factor()], np.int32)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", value)]) for _ in requests]
"""


@pytest.mark.parametrize("mode", list(MODES))
def test_model_py_imports_the_modules_beside_it(py_repo, start_server, mode):
    config = (
        'backend: "python"\ninput [{ name: "X" data_type: TYPE_INT32 dims: [ 1 ] }]\n'
        'output [{ name: "Y" data_type: TYPE_INT32 dims: [ 1 ] }]\n' + MODES[mode]
    )
    for name, offset, scale in (("first", 100, 2), ("second", 200, 3)):  # same module names, other code
        folder = py_repo.model(name, config, SIBLING_MODEL) / "1"
        (folder / "helpers.py").write_text(f"OFFSET = {offset}\n")
        (folder / "tools").mkdir()
        (folder / "tools" / "__init__.py").write_text("")
        (folder / "tools" / "scale.py").write_text(f"def factor():\n    return {scale}\n")
    path_before = list(sys.path)
    running = start_server(py_repo.root)
    client = httpclient.InferenceServerClient(running.http_url)
    x = httpclient.InferInput("X", [1], "INT32")
    x.set_data_from_numpy(np.zeros(1, np.int32))
    assert client.infer("first", [x]).as_numpy("Y").tolist() == [102]
    assert client.infer("second", [x]).as_numpy("Y").tolist() == [203]
    assert sys.path == path_before  # the server's own path is as it was
    assert "helpers" not in sys.modules and "tools" not in sys.modules
