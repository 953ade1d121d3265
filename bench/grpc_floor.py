"""The floor of a Python gRPC server: ModelInfer answered with a canned reply, no model, no queue.

    python bench/grpc_floor.py aio|grpclib PORT

then drive it with ``nereid bench -m identity -i grpc -u 127.0.0.1:PORT --shape INPUT0:16`` and read
the server's CPU time from /proc (see "Issue 5, session 3" in bench/RESULTS.md). ``grpclib`` is
not a dependency: install it (and ``h2``) into a scratch directory on ``PYTHONPATH`` to compare.
"""

from __future__ import annotations

import sys
from typing import Any

import uvloop

from nereid.proto import grpc_service_pb2 as pb


def reply(req: Any) -> Any:
    r = pb.ModelInferResponse(model_name=req.model_name, id=req.id)
    r.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 16])
    r.raw_output_contents.append(req.raw_input_contents[0] if req.raw_input_contents else b"\0" * 64)
    return r


def metadata(req: Any) -> Any:
    T = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name="identity",
        versions=["1"],
        platform="python",
        inputs=[T(name="INPUT0", datatype="FP32", shape=[-1, 16])],
        outputs=[T(name="OUTPUT0", datatype="FP32", shape=[-1, 16])],
    )


async def main_aio(port: int) -> None:
    import grpc

    async def infer(request: Any, context: Any) -> Any:
        return reply(request)

    async def meta(request: Any, context: Any) -> Any:
        return metadata(request)

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                infer,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=pb.ModelInferResponse.SerializeToString,
            ),
            "ModelMetadata": grpc.unary_unary_rpc_method_handler(
                meta,
                request_deserializer=pb.ModelMetadataRequest.FromString,
                response_serializer=pb.ModelMetadataResponse.SerializeToString,
            ),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def main_grpclib(port: int) -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    class Svc:
        async def infer(self, stream: Any) -> None:
            req = await stream.recv_message()
            await stream.send_message(reply(req))

        async def meta(self, stream: Any) -> None:
            req = await stream.recv_message()
            await stream.send_message(metadata(req))

        def __mapping__(self) -> dict[str, Any]:
            return {
                "/inference.GRPCInferenceService/ModelMetadata": Handler(
                    self.meta, Cardinality.UNARY_UNARY, pb.ModelMetadataRequest, pb.ModelMetadataResponse
                ),
                "/inference.GRPCInferenceService/ModelInfer": Handler(
                    self.infer, Cardinality.UNARY_UNARY, pb.ModelInferRequest, pb.ModelInferResponse
                ),
            }

    server = Server([Svc()])
    await server.start("127.0.0.1", port)
    await server.wait_closed()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    uvloop.run(main_aio(port) if kind == "aio" else main_grpclib(port))
