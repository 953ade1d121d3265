"""Tensor data that does not fit its shape is refused with Triton's words, naming the input, both transports."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

CLIENTS = {"http": httpclient, "grpc": grpcclient}
STATUS = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}


@pytest.fixture(scope="module")
def server(module_repo: Any, start_module_server: Any) -> Any:
    module_repo.identity("identity_fp32")
    module_repo.identity("identity_bytes", datatype="BYTES")
    return start_module_server(module_repo.root)


def _refused(server: Any, protocol: str, model: str, tensor: Any) -> str:
    module = CLIENTS[protocol]
    url = server.http_url if protocol == "http" else server.grpc_url
    with module.InferenceServerClient(url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, [tensor])
        assert info.value.status() == STATUS[protocol]
        assert client.is_server_ready()
    return info.value.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_fixed_size_data_of_the_wrong_size(server, protocol):
    module = CLIENTS[protocol]
    tensor = module.InferInput("INPUT0", [1, 4], "FP32")
    if protocol == "http":
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32), binary_data=True)
    else:
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    tensor.set_shape([1, 5])  # 16 bytes sent for 20
    message = _refused(server, protocol, "identity_fp32", tensor)
    assert (
        "input byte size mismatch for input 'INPUT0' for model 'identity_fp32'. Expected 20, got 16"
        in message
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bytes_holding_too_few_elements(server, protocol):
    module = CLIENTS[protocol]
    tensor = module.InferInput("INPUT0", [1, 3], "BYTES")
    data = np.array([[b"a", b"bb", b"ccc"]], dtype=object)
    if protocol == "http":
        tensor.set_data_from_numpy(data, binary_data=True)
    else:
        tensor.set_data_from_numpy(data)
    tensor.set_shape([1, 4])
    message = _refused(server, protocol, "identity_bytes", tensor)
    assert (
        "expected 4 string elements for inference input 'INPUT0' for model 'identity_bytes', got 3" in message
    )
