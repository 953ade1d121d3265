"""The core on neutral types: the version decision, typed answers, admission and drain."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nereid.server.catalog import IndexEntry, TensorMetadata
from nereid.server.errors import InvalidArgument, NotFound, Unavailable, Unsupported
from nereid.server.types import InferRequest, Tensor

from .conftest import LoopThread, fp32_request


@pytest.fixture
def two_versions(repo, start_core):
    repo.identity("ident", versions=(1, 2), extra="version_policy: { all: {} }")
    return start_core(repo.root)


def test_route_gives_a_named_version_exactly_and_the_newest_otherwise(two_versions) -> None:
    core = two_versions
    assert core.route(InferRequest("ident", [], "1")).version == 1
    assert core.route(InferRequest("ident", [])).version == 2
    with pytest.raises(NotFound, match="version 7 is not found"):
        core.route(InferRequest("ident", [], "7"))
    with pytest.raises(NotFound, match="'nope' is not found"):
        core.route(InferRequest("nope", []))


@pytest.mark.parametrize("version", ["²", "-1", "1.0", "9" * 30])
def test_versions_are_ascii_decimal(two_versions, version: str) -> None:
    with pytest.raises(InvalidArgument, match="non-negative integer"):
        two_versions.route(InferRequest("ident", [], version))


def test_metadata_is_typed_and_lists_the_version_asked_for(two_versions) -> None:
    meta = two_versions.model_metadata("ident")
    assert meta.versions == ("1", "2") and meta.platform == "onnxruntime_onnx"
    assert meta.inputs == (TensorMetadata("INPUT0", "FP32", (-1, -1)),)
    assert meta.input("INPUT0") is meta.inputs[0] and meta.input("missing") is None
    assert not meta.decoupled
    assert two_versions.model_metadata("ident", "1").versions == ("1",)
    assert two_versions.server_metadata().name == "nereid"


def test_statistics_cover_every_version_unless_one_is_named(two_versions, loop_thread: LoopThread) -> None:
    core = two_versions
    response = loop_thread.run(core.infer(fp32_request("ident", 2)))
    assert np.array_equal(response.outputs[0].data, fp32_request("ident", 2).inputs[0].data)
    rows = {(s.version, s.inference_count, s.execution_count) for s in core.statistics("ident")}
    assert rows == {("1", 0, 0), ("2", 2, 1)}
    (only,) = core.statistics("ident", "2")
    assert only.inference_stats.success.count == 1 and only.batch_stats[0].batch_size == 2
    assert len(core.statistics()) == 2


def test_index_rows_are_typed_and_failures_name_the_model(repo, start_core) -> None:
    repo.identity("good")
    repo.config("broken", 'platform: "no_such_platform"')
    core = start_core(repo.root)
    rows = {row.name: row for row in core.repository_index()}
    assert rows["good"] == IndexEntry("good", "1", "READY", "")
    assert rows["broken"].state == "UNAVAILABLE" and "no_such_platform" in rows["broken"].reason
    assert [row.name for row in core.repository_index(ready_only=True)] == ["good"]
    assert not core.ready() and core.live()


def test_admission_validates_and_reads_priority_and_timeout(
    repo, start_core, loop_thread: LoopThread
) -> None:
    repo.identity("ident")
    core = start_core(repo.root)
    bad = InferRequest("ident", [Tensor("INPUT0", "INT32", (1, 2), np.zeros((1, 2), np.int32))])
    with pytest.raises(InvalidArgument, match="data-type is 'INT32'"):
        loop_thread.run(core.infer(bad))
    request = fp32_request("ident", 1, parameters={"priority": 3, "timeout": 60_000_000})
    loop_thread.run(core.infer(request))
    assert (request.priority, request.timeout_us) == (3, 60_000_000)
    with pytest.raises(InvalidArgument):
        loop_thread.run(core.infer(fp32_request("ident", 1, parameters={"priority": "high"})))


def test_control_needs_explicit_mode_and_drain_stops_readiness(
    repo, start_core, loop_thread: LoopThread
) -> None:
    repo.identity("ident")
    core = start_core(repo.root)
    with pytest.raises(Unsupported, match="model control is 'none'"):
        loop_thread.run(core.unload_model("ident"))
    assert core.ready()
    core.begin_drain()
    assert not core.ready() and core.live()  # liveness stays while draining
    loop_thread.run(core.infer(fp32_request("ident", 1)))  # requests still run while draining


def test_explicit_unload_makes_requests_unavailable(repo, start_core, loop_thread: LoopThread) -> None:
    repo.identity("ident")
    core = start_core(repo.root, models=["ident"], model_control_mode="explicit")
    loop_thread.run(core.unload_model("ident"))
    assert not core.model_ready("ident")
    with pytest.raises(Unavailable, match="no available versions"):
        loop_thread.run(core.infer(fp32_request("ident", 1)))
    loop_thread.run(core.load_model("ident"))
    assert core.model_ready("ident") and core.model_ready("ident", "1")


def test_the_core_is_a_core_handle_with_its_loop(two_versions, loop_thread: LoopThread) -> None:
    assert two_versions.loop is loop_thread.loop

    async def collect() -> list[bool]:
        return [r.final async for r in two_versions.stream(fp32_request("ident", 1))]

    assert loop_thread.run(collect()) == [True]
    assert isinstance(loop_thread.loop, asyncio.AbstractEventLoop)
