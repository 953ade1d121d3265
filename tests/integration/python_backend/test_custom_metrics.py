"""``pb_utils.MetricFamily`` custom metrics, in-process and from a stub process, on the metrics port.

Requests come over HTTP and gRPC; wrong names, kinds, labels and operations are Python exceptions
in the model (it answers with their message) and the server keeps serving.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

IN_PROCESS = 'parameters { key: "NEREID_ISOLATION" value: { string_value: "none" } }'
CONFIG = """
backend: "python"
input [{ name: "ACTION" data_type: TYPE_STRING dims: [ 1 ] }]
output [{ name: "RESULT" data_type: TYPE_STRING dims: [ 1 ] }]
"""

MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

Family = pb_utils.MetricFamily

BAD = {
    "name": lambda m: Family("bad name!", "x", Family.COUNTER),
    "kind": lambda m: Family("custom_other", "x", 7),
    "kind_clash": lambda m: Family("custom_requests", "x", Family.GAUGE),
    "label_name": lambda m: m.requests_family.Metric(labels={"bad-label": "x"}),
    "label_value": lambda m: m.requests_family.Metric(labels={"model": 3}),
    "negative": lambda m: m.requests.increment(-1),
    "set_counter": lambda m: m.requests.set(5),
    "observe_gauge": lambda m: m.batch.observe(1.0),
    "histogram_value": lambda m: m.latency.value(),
    "no_buckets": lambda m: m.latency_family.Metric(labels={"model": "x"}),
    "descending_buckets": lambda m: m.latency_family.Metric(labels={"k": "v"}, buckets=[2.0, 1.0]),
}


class TritonPythonModel:
    def initialize(self, args):
        labels = {"model": args["model_name"]}
        self.requests_family = Family("custom_requests", "Requests the model saw", Family.COUNTER)
        self.requests = self.requests_family.Metric(labels=labels)
        self.batch = Family("custom_batch", "Requests in the last execute", Family.GAUGE).Metric(labels=labels)
        self.latency_family = Family("custom_latency_seconds", "Made-up latency", Family.HISTOGRAM)
        self.latency = self.latency_family.Metric(labels=labels, buckets=[0.1, 1.0, 2.5])

    def execute(self, requests):
        responses = []
        self.batch.set(len(requests))
        for request in requests:
            action = pb_utils.get_input_tensor_by_name(request, "ACTION").as_numpy().reshape(-1)[0].decode()
            if action == "count":
                self.requests.increment(1)
                self.latency.observe(0.5)
                self.latency.observe(2.0)
                again = self.requests_family.Metric(labels={"model": self.requests._labels["model"]})
                text = f"{again.value():g}"
            else:
                try:
                    BAD[action](self)
                    text = "no error"
                except pb_utils.TritonModelException as exc:
                    text = "TritonModelException: " + exc.message()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("RESULT", np.array([text.encode()], dtype=object))]))
        return responses
"""

MODELS = {"custom_stub": "", "custom_inprocess": IN_PROCESS}


@pytest.fixture(scope="module")
def server(module_repo: Any, start_module_server: Any) -> Any:
    for name, extra in MODELS.items():
        folder = module_repo.root / name
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.py").write_text(MODEL)
        (folder / "config.pbtxt").write_text(CONFIG + extra)
    return start_module_server(module_repo.root)


def _ask(server: Any, protocol: str, model: str, action: str) -> str:
    module = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    with module.InferenceServerClient(url) as client:
        tensor = module.InferInput("ACTION", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([action.encode()], dtype=object))
        return client.infer(model, [tensor]).as_numpy("RESULT")[0].decode()


def test_metrics_from_both_modes_are_exported_with_the_servers(server):
    for model in MODELS:
        assert [_ask(server, p, model, "count") for p in ("http", "grpc")] == ["1", "2"]
    text = httpx.get(server.metrics_url).text
    assert "nv_inference_count" in text  # the server's own families are still there
    assert "# HELP custom_batch Requests in the last execute" in text
    for model in MODELS:
        assert f'custom_requests{{model="{model}"}} 2.0' in text
        assert f'custom_batch{{model="{model}"}} 1.0' in text
        assert f'custom_latency_seconds_bucket{{le="0.1",model="{model}"}} 0.0' in text
        assert f'custom_latency_seconds_bucket{{le="1",model="{model}"}} 2.0' in text
        assert f'custom_latency_seconds_bucket{{le="2.5",model="{model}"}} 4.0' in text
        assert f'custom_latency_seconds_bucket{{le="+Inf",model="{model}"}} 4.0' in text
        assert f'custom_latency_seconds_count{{model="{model}"}} 4.0' in text
        assert f'custom_latency_seconds_sum{{model="{model}"}} 5.0' in text


WRONG = {
    "name": "invalid metric family name 'bad name!'",
    "kind": "kind must be MetricFamily.COUNTER, GAUGE or HISTOGRAM",
    "kind_clash": "already exists as a counter, not a gauge",
    "label_name": "invalid label name 'bad-label'",
    "label_value": "label 'model' must have a string value",
    "negative": "a counter cannot be incremented by -1",
    "set_counter": "a counter does not support set",
    "observe_gauge": "a gauge does not support observe",
    "histogram_value": "a histogram has no single value",
    "no_buckets": "a histogram metric needs buckets",
    "descending_buckets": "buckets must be strictly ascending",
}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_wrong_metric_calls_are_exceptions_in_the_model(server, protocol, model):
    for action, needle in WRONG.items():
        answer = _ask(server, protocol, model, action)
        assert answer.startswith("TritonModelException: ") and needle in answer, (action, answer)
    assert httpx.get(server.metrics_url).status_code == 200
    assert "bad name" not in httpx.get(server.metrics_url).text
