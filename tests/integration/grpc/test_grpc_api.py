"""Health, metadata, config, statistics and repository RPCs through NVIDIA's tritonclient.grpc."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.utils import InferenceServerException

from nereid.proto import grpc_service_pb2 as pb
from nereid.proto import grpc_service_pb2_grpc
from nereid.server.core import EXTENSIONS


def _status(exc: InferenceServerException) -> str:
    return str(exc.status())


def _infer_add_sub(client: grpcclient.InferenceServerClient, model: str = "add_sub") -> None:
    a = np.ones((1, 16), dtype=np.float32)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "FP32"),
        grpcclient.InferInput("INPUT1", [1, 16], "FP32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    client.infer(model, inputs)


def test_health_metadata_config_and_stats(repo, start_server):
    repo.add_sub(versions=(1, 2), extra="version_policy: { all { } }")
    running = start_server(repo.root)
    client = grpcclient.InferenceServerClient(running.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("add_sub") and client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "9") and not client.is_model_ready("nope")

    server = client.get_server_metadata()
    assert server.name == "nereid" and list(server.extensions) == list(EXTENSIONS)

    meta = client.get_model_metadata("add_sub")
    assert meta.name == "add_sub" and list(meta.versions) == ["1", "2"]
    assert list(client.get_model_metadata("add_sub", "1").versions) == ["1"]  # as Triton: the one asked for
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "FP32", [-1, 16]),
        ("INPUT1", "FP32", [-1, 16]),
    ]
    assert [t.name for t in meta.outputs] == ["OUTPUT0", "OUTPUT1"]

    config = client.get_model_config("add_sub").config
    assert config.name == "add_sub" and config.max_batch_size == 8
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    as_json = client.get_model_config("add_sub", as_json=True)
    assert as_json["config"]["input"][0]["data_type"] == "TYPE_FP32"

    _infer_add_sub(client)
    _infer_add_sub(client)
    # As Triton: a model's statistics without a version cover every loaded version.
    stats = client.get_inference_statistics("add_sub").model_stats
    assert [(s.name, s.version) for s in stats] == [("add_sub", "1"), ("add_sub", "2")]
    assert stats[0].inference_count == 0
    stats = client.get_inference_statistics("add_sub", "2").model_stats
    assert [(s.name, s.version) for s in stats] == [("add_sub", "2")]
    assert stats[0].inference_count == 2 and stats[0].execution_count == 2
    assert stats[0].inference_stats.success.count == 2 and stats[0].inference_stats.success.ns > 0
    assert stats[0].batch_stats[0].batch_size == 1 and stats[0].batch_stats[0].compute_infer.count == 2
    assert stats[0].last_inference > 0
    every = client.get_inference_statistics().model_stats
    assert sorted((s.name, s.version) for s in every) == [("add_sub", "1"), ("add_sub", "2")]

    for call in (
        lambda: client.get_model_metadata("nope"),
        lambda: client.get_model_config("nope"),
        lambda: client.get_model_metadata("add_sub", "9"),
    ):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert _status(info.value) == "StatusCode.NOT_FOUND"


def test_repository_index_and_load_unload(repo, start_server):
    repo.add_sub()
    repo.identity("identity")
    running = start_server(repo.root, model_control_mode="explicit", load_model=["add_sub"])
    client = grpcclient.InferenceServerClient(running.grpc_url)
    index = client.get_model_repository_index().models
    assert [(m.name, m.version, m.state) for m in index] == [("add_sub", "1", "READY")]

    client.load_model("identity")
    assert client.is_model_ready("identity")
    client.unload_model("add_sub")
    assert not client.is_model_ready("add_sub")
    rows = {(m.name, m.state, m.reason) for m in client.get_model_repository_index().models}
    assert rows == {("add_sub", "UNAVAILABLE", "unloaded"), ("identity", "READY", "")}

    with pytest.raises(InferenceServerException) as info:
        client.load_model("missing")
    assert _status(info.value) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        client.load_model("identity", config="{not json")
    assert _status(info.value) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as info:
        client.load_model("identity", files={"file:1/model.onnx": b"x"}, config="{}")
    assert _status(info.value) == "StatusCode.INVALID_ARGUMENT"


def test_repository_ready_filter_and_load_needs_explicit_mode(repo, start_server):
    repo.add_sub()
    running = start_server(repo.root)
    with grpc.insecure_channel(running.grpc_url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        ready = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
        assert [m.name for m in ready.models] == ["add_sub"]
    client = grpcclient.InferenceServerClient(running.grpc_url)
    for call in (lambda: client.load_model("add_sub"), lambda: client.unload_model("add_sub")):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert _status(info.value) == "StatusCode.UNIMPLEMENTED"
    assert client.is_model_ready("add_sub")


def test_unsupported_extensions_answer_unimplemented(repo, start_server):
    repo.add_sub()
    running = start_server(repo.root)
    client = grpcclient.InferenceServerClient(running.grpc_url)
    calls = {
        # Shared memory is off unless --allow-client-shm (tests/integration/shared_memory).
        "Client shared memory is disabled": client.get_system_shared_memory_status,
        "Client shared memory is disabled ": client.get_cuda_shared_memory_status,
    }
    for message, call in calls.items():
        with pytest.raises(InferenceServerException) as info:
            call()
        assert _status(info.value) == "StatusCode.UNIMPLEMENTED"
        assert message.strip() in info.value.message()
    assert client.is_server_ready()


def test_standard_health_service_and_reflection(repo, start_server):
    repo.add_sub()
    running = start_server(repo.root)
    with grpc.insecure_channel(running.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="other"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()

        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) >= {"inference.GRPCInferenceService", "grpc.health.v1.Health"}
        from google.protobuf import descriptor_pool

        client_pool = descriptor_pool.DescriptorPool(database)
        service = client_pool.FindServiceByName("inference.GRPCInferenceService")
        assert "ModelStreamInfer" in [m.name for m in service.methods]
        assert client_pool.FindServiceByName("grpc.health.v1.Health").methods_by_name["Check"]
        stats = client_pool.FindMessageTypeByName("inference.ModelStatistics")
        assert stats.fields_by_name["response_stats"].number == 9


def test_not_ready_while_a_model_failed(repo, start_server):
    repo.add_sub()
    repo.config("broken", 'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n')
    (repo.root / "broken" / "1").mkdir(exist_ok=True)
    running = start_server(repo.root, exit_on_error=False)
    client = grpcclient.InferenceServerClient(running.grpc_url)
    assert client.is_server_live() and not client.is_server_ready()
    with grpc.insecure_channel(running.grpc_url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
