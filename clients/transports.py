"""How requests travel: HTTP with binary tensors, HTTP with JSON tensors, gRPC with raw contents.

A transport reads a model's spec, pre-encodes a sample once (:meth:`Transport.prepare`), then
sends that same payload as often as the load generator asks (:meth:`Transport.infer`).
Responses are checked for success but not decoded: the client's CPU is the server's CPU on a
small machine, and perf numbers should measure the server.
"""

from __future__ import annotations

import abc
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from nereid.clients import codec
from nereid.clients.http1 import Http1Pool, encode_request
from nereid.clients.inputs import ModelSpec, Sample

PROTOCOLS = ("http", "http-json", "grpc")
HTTP_CLIENTS = ("raw", "aiohttp")
DEFAULT_PORTS = {"http": 8000, "http-json": 8000, "grpc": 8001}


class InferError(Exception):
    """The server answered, with an error (non-200 status or a gRPC status other than OK)."""


def split_target(target: str, protocol: str) -> tuple[str, int]:
    """``host:port``, ``http://host:port`` or ``grpc://host`` -> ``(host, port)``."""
    parts = urlsplit(target if "//" in target else f"//{target}")
    return parts.hostname or "localhost", parts.port or DEFAULT_PORTS[protocol]


class Transport(abc.ABC):
    protocol: str

    @abc.abstractmethod
    async def open(self, max_connections: int) -> None:
        """Get ready to carry up to ``max_connections`` requests at once."""

    @abc.abstractmethod
    async def model_spec(self, model: str, version: str = "") -> ModelSpec: ...

    @abc.abstractmethod
    def prepare(self, spec: ModelSpec, sample: Sample) -> Any:
        """Encode one request completely; :meth:`infer` sends it unchanged."""

    @abc.abstractmethod
    async def infer(self, prepared: Any) -> None:
        """Send one request; raises :class:`InferError` or a connection error on failure."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def make_transport(protocol: str, target: str, http_client: str = "raw") -> Transport:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; use one of {', '.join(PROTOCOLS)}")
    host, port = split_target(target, protocol)
    if protocol == "grpc":
        return GrpcTransport(host, port)
    if http_client not in HTTP_CLIENTS:
        raise ValueError(f"unknown HTTP client '{http_client}'; use one of {', '.join(HTTP_CLIENTS)}")
    return HttpTransport(host, port, binary=protocol == "http", client=http_client)


class HttpTransport(Transport):
    """KServe v2 over HTTP/1.1 keep-alive, through :mod:`nereid.clients.http1` or aiohttp."""

    def __init__(self, host: str, port: int, binary: bool = True, client: str = "raw") -> None:
        self.protocol = "http" if binary else "http-json"
        self.host, self.port, self.binary, self.client = host, port, binary, client
        self._authority = f"{host}:{port}"
        self._pool: Http1Pool | None = None
        self._session: Any = None

    async def open(self, max_connections: int) -> None:
        if self.client == "raw":
            self._pool = Http1Pool(self.host, self.port, max_connections)
            return
        import aiohttp

        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections)
        self._session = aiohttp.ClientSession(
            f"http://{self._authority}", connector=connector, auto_decompress=False
        )

    async def _get(self, path: str) -> Any:
        status, body = await self._send(("GET", path, b"", {}))
        if status != 200:
            raise InferError(f"GET {path}: HTTP {status}: {_text(body)}")
        return orjson.loads(body)

    async def model_spec(self, model: str, version: str = "") -> ModelSpec:
        base = _model_path(model, version)
        metadata = await self._get(base)
        try:
            config = await self._get(base + "/config")
            max_batch_size = int(config.get("max_batch_size", 0))
        except InferError:
            max_batch_size = 0  # servers without the model_configuration extension
        return ModelSpec.from_metadata(metadata, max_batch_size, version)

    def prepare(self, spec: ModelSpec, sample: Sample) -> Any:
        path = _model_path(spec.name, spec.version) + "/infer"
        if self.binary:
            body, header_length = codec.http_binary_body(sample)
            headers = {
                "Content-Type": "application/octet-stream",
                codec.HEADER_LENGTH: str(header_length),
            }
        else:
            body = codec.http_json_body(sample, [o.name for o in spec.outputs])
            headers = {"Content-Type": "application/json"}
        if self.client == "raw":
            return encode_request("POST", path, self._authority, body, headers)
        return ("POST", path, body, headers)

    async def infer(self, prepared: Any) -> None:
        status, body = await self._send(prepared)
        if status != 200:
            raise InferError(f"HTTP {status}: {_text(body)}")

    async def _send(self, prepared: Any) -> tuple[int, bytes]:
        if self._pool is not None:
            if isinstance(prepared, tuple):
                method, path, body, headers = prepared
                prepared = encode_request(method, path, self._authority, body, headers)
            return await self._pool.request(prepared)
        method, path, body, headers = prepared
        async with self._session.request(method, path, data=body or None, headers=headers) as response:
            return response.status, await response.read()

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._session is not None:
            await self._session.close()


class GrpcTransport(Transport):
    """KServe v2 over gRPC (``grpc.aio``, one HTTP/2 channel), requests serialized once."""

    protocol = "grpc"
    _INFER = "/inference.GRPCInferenceService/ModelInfer"

    def __init__(self, host: str, port: int) -> None:
        self.target = f"{host}:{port}"
        self._channel: Any = None
        self._stub: Any = None
        self._infer: Any = None
        self._rpc_error: type[Exception] = Exception

    async def open(self, max_connections: int) -> None:
        import grpc

        from nereid.proto import grpc_service_pb2_grpc

        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self._channel = grpc.aio.insecure_channel(self.target, options=options)
        self._stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        # The same RPC as the stub's ModelInfer, taking the pre-serialized bytes as they are.
        self._infer = self._channel.unary_unary(self._INFER)
        self._rpc_error = grpc.aio.AioRpcError

    async def model_spec(self, model: str, version: str = "") -> ModelSpec:
        from nereid.proto import grpc_service_pb2 as pb

        try:
            meta = await self._stub.ModelMetadata(pb.ModelMetadataRequest(name=model, version=version))
        except self._rpc_error as exc:
            raise InferError(f"ModelMetadata: {_status(exc)}") from None
        try:
            config = await self._stub.ModelConfig(pb.ModelConfigRequest(name=model, version=version))
            max_batch_size = config.config.max_batch_size
        except self._rpc_error:
            max_batch_size = 0
        metadata = {
            "name": meta.name,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
            "outputs": [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs
            ],
        }
        return ModelSpec.from_metadata(metadata, max_batch_size, version)

    def prepare(self, spec: ModelSpec, sample: Sample) -> Any:
        return codec.grpc_request(spec.name, spec.version, sample)

    async def infer(self, prepared: Any) -> None:
        try:
            await self._infer(prepared)
        except self._rpc_error as exc:
            raise InferError(_status(exc)) from None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _model_path(model: str, version: str) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    return f"{path}/versions/{quote(version, safe='')}" if version else path


def _text(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace")
    try:
        error = orjson.loads(body)
        if isinstance(error, dict) and isinstance(error.get("error"), str):
            text = error["error"][:limit]
    except orjson.JSONDecodeError:
        pass
    return text


def _status(exc: Any) -> str:
    return f"gRPC {exc.code().name}: {exc.details()}"
