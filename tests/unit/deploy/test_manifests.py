"""The Kubernetes and KServe manifests render, pass the Kubernetes schemas and the cross-checks;
a wrong port, probe path or grace period makes the check fail."""

from __future__ import annotations

import copy

import pytest

OVERLAYS = ["base", "overlays/hpa", "overlays/keda", "overlays/gpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_and_passes(checker, root, overlay):
    docs = checker.render(root / "deploy" / "kubernetes" / overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"} <= kinds
    assert checker.schema_errors(docs) == []
    assert checker.consistency_errors(docs) == []


def test_autoscalers_in_their_overlays(checker, root):
    hpa = checker.render(root / "deploy/kubernetes/overlays/hpa")
    keda = checker.render(root / "deploy/kubernetes/overlays/keda")
    assert [d["kind"] for d in hpa if d["kind"] == "HorizontalPodAutoscaler"] == ["HorizontalPodAutoscaler"]
    assert [d["kind"] for d in keda if d["kind"] == "ScaledObject"] == ["ScaledObject"]


def test_kserve_runtime_and_inference_services(checker, root):
    docs = checker.render(root / "deploy" / "kserve")
    assert {d["kind"] for d in docs} == {"ServingRuntime", "InferenceService"}
    assert checker.schema_errors(docs) == [] and checker.kserve_errors(docs) == []


def test_session_affinity_example_points_at_the_http_service(checker, root):
    docs = checker.render(root / "deploy/kubernetes/base") + checker.render(
        root / "deploy/kubernetes/examples/session-affinity.yaml"
    )
    assert checker.schema_errors(docs) == [] and checker.consistency_errors(docs) == []


def _container(docs):
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _wrong_http_port(docs):
    _container(docs)["ports"][0]["containerPort"] = 8080


def _wrong_probe_path(docs):
    _container(docs)["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _probe_on_metrics_port(docs):
    _container(docs)["livenessProbe"]["httpGet"]["port"] = "metrics"


def _service_target(docs):
    next(d for d in docs if d["kind"] == "Service")["spec"]["ports"][0]["targetPort"] = "htp"


def _short_grace(docs):
    next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ] = 30


def _no_prestop(docs):
    del _container(docs)["lifecycle"]


def _monitor_port(docs):
    next(d for d in docs if d["kind"] == "ServiceMonitor")["spec"]["endpoints"][0]["port"] = "http-metrics"


def _unknown_flag(docs):
    _container(docs)["args"].append("--http-prot=9000")


def _schema(docs):
    _container(docs)["ports"][0]["containerPort"] = "eight-thousand"


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (_wrong_http_port, "containerPort 'http' is 8080"),
        (_wrong_probe_path, "readinessProbe path is '/healthz'"),
        (_probe_on_metrics_port, "livenessProbe port 'metrics'"),
        (_service_target, "targetPort htp is no container port"),
        (_short_grace, "terminationGracePeriodSeconds 30 < drain budget"),
        (_no_prestop, "no preStop sleep"),
        (_monitor_port, "not a metrics port"),
        (_unknown_flag, "does not accept its args"),
        (_schema, "schema: 'eight-thousand' is not of type 'integer'"),
    ],
)
def test_a_broken_manifest_fails_the_check(checker, root, breakage, expected):
    docs = copy.deepcopy(checker.render(root / "deploy/kubernetes/base"))
    breakage(docs)
    errors = checker.schema_errors(docs) + checker.consistency_errors(docs)
    assert any(expected in e for e in errors), errors


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c["args"].__setitem__(2, "--grpc-port=8001"), "gRPC on 9000"),
        (lambda c: c["args"].__setitem__(0, "--model-repository=/models"), "/mnt/models"),
        (lambda c: c.__setitem__("name", "nereid"), "kserve-container"),
        (lambda c: c["readinessProbe"]["httpGet"].__setitem__("path", "/v2/ready"), "readinessProbe path"),
    ],
)
def test_a_broken_serving_runtime_fails_the_check(checker, root, edit, expected):
    docs = copy.deepcopy(checker.render(root / "deploy/kserve"))
    edit(next(d for d in docs if d["kind"] == "ServingRuntime")["spec"]["containers"][0])
    assert any(expected in e for e in checker.kserve_errors(docs))


def test_the_command_line_entry_point(checker, root, capsys):
    assert checker.main([str(root / "deploy/kubernetes/overlays/hpa"), str(root / "deploy/kserve")]) == 0
    assert "ok" in capsys.readouterr().out
