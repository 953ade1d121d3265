"""Check Nereid's Kubernetes and KServe manifests before a cluster sees them.

``python deploy/check_manifests.py deploy/kubernetes/overlays/hpa deploy/kserve`` renders each
Kustomize folder with ``kubectl kustomize`` (or reads plain YAML), validates built-in kinds against
the Kubernetes OpenAPI schemas (the ``kubernetes-validate`` package), then checks what a schema
cannot: the container's flags (read by Nereid's own parser, with the manifest's ``NEREID_*``
variables) agree with its ports, probes hit the v2 health routes, the grace period covers the
drain, Services, the ServiceMonitor, the PDB and the autoscalers point at things that exist, and
the ServingRuntime is what KServe expects. Exits 1 and lists the problems when there are any.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from nereid.server.serve import UNLOAD_GRACE_S
from nereid.server.settings import Settings, parse_settings

K8S_VERSION = "1.30.0"
# Kinds with no schema in kubernetes-validate (CRDs): checked by the rules below only.
CRD_KINDS = {"ServiceMonitor", "ScaledObject", "ServingRuntime", "ClusterServingRuntime", "InferenceService"}
READY, LIVE = "/v2/health/ready", "/v2/health/live"
KSERVE_FORMATS = {"onnx", "pytorch", "triton"}
Doc = dict[str, Any]


def render(path: Path) -> list[Doc]:
    if path.is_dir() and (path / "kustomization.yaml").exists():
        text = subprocess.run(
            ["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True
        ).stdout
    elif path.is_dir():
        return [doc for child in sorted(path.glob("*.yaml")) for doc in render(child)]
    else:
        text = path.read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def schema_errors(docs: list[Doc], version: str = K8S_VERSION) -> list[str]:
    import kubernetes_validate

    errors = []
    for doc in docs:
        subjects = [doc] if doc["kind"] not in CRD_KINDS else []
        if doc["kind"] in ("ServingRuntime", "ClusterServingRuntime"):  # its containers are core Containers
            spec = {"containers": doc["spec"]["containers"]}
            subjects = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec}]
        for subject in subjects:
            try:
                kubernetes_validate.validate(subject, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(map(str, exc.path))
                errors.append(f"{_name(doc)}: schema: {exc.message} at {path}")
    return errors


def _name(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("NEREID_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


def container_settings(container: Doc, extra_args: Sequence[str] = ()) -> Settings:
    """The container's flags and NEREID_* variables, read by Nereid's own parser."""
    env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    with _environment({k: v for k, v in env.items() if k.startswith("NEREID_")}):
        return parse_settings([*container.get("args", []), *extra_args])


def _probe_errors(where: str, container: Doc, settings: Settings) -> list[str]:
    errors = []
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    wanted = {"startupProbe": READY, "readinessProbe": READY, "livenessProbe": LIVE}
    for probe, path in wanted.items():
        spec = container.get(probe)
        if spec is None:
            if probe != "startupProbe" or "kserve" not in container["name"]:
                errors.append(f"{where}: no {probe}")
            continue
        get = spec.get("httpGet", {})
        if get.get("path") != path:
            errors.append(f"{where}: {probe} path is {get.get('path')!r}, not {path}")
        port = ports.get(get.get("port"), get.get("port"))
        if port != settings.http_port:
            errors.append(
                f"{where}: {probe} port {get.get('port')!r} is not the HTTP port {settings.http_port}"
            )
    return errors


def _prestop_seconds(container: Doc) -> float:
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    return float(command[1]) if len(command) == 2 and command[0].endswith("sleep") else 0.0


def _deployment_errors(doc: Doc) -> tuple[list[str], dict[str, int]]:
    pod = doc["spec"]["template"]["spec"]
    container = pod["containers"][0]
    where = f"{_name(doc)} container {container['name']}"
    try:
        settings = container_settings(container)
    except (ValueError, SystemExit) as exc:
        return [f"{where}: nereid does not accept its args: {exc}"], {}
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    errors = []
    for name, port in (
        ("http", settings.http_port),
        ("grpc", settings.grpc_port),
        ("metrics", settings.metrics_port),
    ):
        if ports.get(name) != port:
            errors.append(f"{where}: containerPort '{name}' is {ports.get(name)}, nereid listens on {port}")
    errors += _probe_errors(where, container, settings)
    prestop = _prestop_seconds(container)
    if prestop <= 0:
        errors.append(f"{where}: no preStop sleep to let endpoints update before SIGTERM")
    needed = prestop + settings.drain_delay_secs + settings.exit_timeout_secs + UNLOAD_GRACE_S + 2
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < needed:
        errors.append(f"{where}: terminationGracePeriodSeconds {grace} < drain budget {needed:g}")
    requests = container.get("resources", {}).get("requests", {})
    if not {"cpu", "memory"} <= set(requests):
        errors.append(f"{where}: resource requests need cpu and memory")
    mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
    for root in settings.model_repository:
        if not any(str(root).startswith(m) for m in mounts):
            errors.append(f"{where}: model repository {root} is not on a mounted volume")
    return errors, {**ports, **{str(v): v for v in ports.values()}}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def consistency_errors(docs: list[Doc], exported_metrics: set[str] | None = None) -> list[str]:
    """Cross-object rules for a rendered Kubernetes overlay (see the module docstring)."""
    by_kind: dict[str, list[Doc]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    errors: list[str] = []
    deployments = by_kind.get("Deployment", [])
    if not deployments:
        return ["no Deployment"]
    deployment = deployments[0]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    found, ports = _deployment_errors(deployment)
    errors += found
    grpc_port = ports.get("grpc")
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    for service in services.values():
        if not _selects(service["spec"].get("selector", {}), pod_labels):
            errors.append(f"{_name(service)}: selector does not match the pods")
        for port in service["spec"]["ports"]:
            target = str(port.get("targetPort", port["port"]))
            if target not in ports:
                errors.append(f"{_name(service)}: targetPort {target} is no container port")
            elif ports[target] == grpc_port and port.get("appProtocol") != "kubernetes.io/h2c":
                errors.append(f"{_name(service)}: the gRPC port needs appProtocol kubernetes.io/h2c")
    for monitor in by_kind.get("ServiceMonitor", []):
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in services.values() if _selects(selector, s["metadata"].get("labels", {}))]
        names = {p.get("name") for s in matched for p in s["spec"]["ports"]}
        if not matched:
            errors.append(f"{_name(monitor)}: selects no Service")
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") not in names or endpoint.get("path", "/metrics") != "/metrics":
                errors.append(f"{_name(monitor)}: endpoint {endpoint} is not a metrics port serving /metrics")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels):
            errors.append(f"{_name(pdb)}: selector does not match the pods")
    for scaler in by_kind.get("HorizontalPodAutoscaler", []) + by_kind.get("ScaledObject", []):
        ref = scaler["spec"]["scaleTargetRef"]
        if ref.get("kind", "Deployment") != "Deployment" or ref["name"] != deployment["metadata"]["name"]:
            errors.append(f"{_name(scaler)}: scaleTargetRef {ref} is not the Deployment")
        for trigger in scaler["spec"].get("triggers", []):
            query = trigger["metadata"].get("query", "")
            if exported_metrics is not None and not any(m in query for m in exported_metrics):
                errors.append(f"{_name(scaler)}: query {query!r} uses no metric nereid exports")
    for ingress in by_kind.get("Ingress", []):
        for rule in ingress["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = services.get(backend["name"])
                names = {p.get("name") for p in service["spec"]["ports"]} if service else set()
                if backend["port"].get("name") not in names:
                    errors.append(f"{_name(ingress)}: backend {backend} is no Service port")
    return errors


def kserve_errors(docs: list[Doc]) -> list[str]:
    """What KServe expects of a v2 ServingRuntime, and InferenceServices that use it."""
    errors: list[str] = []
    runtimes = {
        d["metadata"]["name"]: d for d in docs if d["kind"] in ("ServingRuntime", "ClusterServingRuntime")
    }
    for runtime in runtimes.values():
        where, spec = _name(runtime), runtime["spec"]
        container = spec["containers"][0]
        if container["name"] != "kserve-container":
            errors.append(f"{where}: the container must be named kserve-container")
        try:
            settings = container_settings(container)
        except (ValueError, SystemExit) as exc:
            errors.append(f"{where}: nereid does not accept its args: {exc}")
            continue
        if [str(p) for p in settings.model_repository] != ["/mnt/models"]:
            errors.append(f"{where}: the model repository must be /mnt/models")
        if (settings.http_port, settings.grpc_port) != (8080, 9000):
            errors.append(f"{where}: KServe expects HTTP on 8080 and gRPC on 9000")
        if 8080 not in [p["containerPort"] for p in container.get("ports", [])]:
            errors.append(f"{where}: containerPort 8080 is not declared")
        errors += [e for e in _probe_errors(where, container, settings) if "livenessProbe" not in e]
        if not {"v2", "grpc-v2"} <= set(spec.get("protocolVersions", [])):
            errors.append(f"{where}: protocolVersions must include v2 and grpc-v2")
        formats = {f["name"]: f for f in spec.get("supportedModelFormats", [])}
        for name in KSERVE_FORMATS:
            f = formats.get(name)
            if f is None or not f.get("autoSelect") or f.get("priority", 0) < 1:
                errors.append(f"{where}: model format {name} needs autoSelect and a priority > 0")
        notes = runtime["metadata"].get("annotations", {})
        if notes.get("prometheus.kserve.io/port") != str(settings.metrics_port):
            errors.append(
                f"{where}: prometheus.kserve.io/port is not the metrics port {settings.metrics_port}"
            )
        if notes.get("prometheus.kserve.io/path") != "/metrics":
            errors.append(f"{where}: prometheus.kserve.io/path must be /metrics")
    for isvc in (d for d in docs if d["kind"] == "InferenceService"):
        model = isvc["spec"]["predictor"]["model"]
        runtime = runtimes.get(model.get("runtime", ""))
        if runtime is None:
            errors.append(f"{_name(isvc)}: runtime {model.get('runtime')!r} is not defined here")
            continue
        if model["modelFormat"]["name"] not in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}:
            errors.append(f"{_name(isvc)}: model format is not one the runtime supports")
        try:
            settings = container_settings(runtime["spec"]["containers"][0], model.get("args", []))
        except (ValueError, SystemExit) as exc:
            errors.append(f"{_name(isvc)}: nereid does not accept the runtime's args with these: {exc}")
            continue
        for port in model.get("ports", []):
            if port["containerPort"] not in (settings.http_port, settings.grpc_port):
                errors.append(f"{_name(isvc)}: port {port['containerPort']} is not one nereid listens on")
    return errors


def check(path: Path, exported_metrics: set[str] | None = None) -> list[str]:
    docs = render(path)
    errors = schema_errors(docs)
    if any(d["kind"] == "Deployment" for d in docs):
        errors += consistency_errors(docs, exported_metrics)
    return errors + kserve_errors(docs)


def main(argv: list[str]) -> int:
    failed = False
    for arg in argv or ["deploy/kubernetes/base", "deploy/kserve"]:
        errors = check(Path(arg))
        failed |= bool(errors)
        print(f"{arg}: {'ok' if not errors else ''}")
        for error in errors:
            print(f"  - {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
