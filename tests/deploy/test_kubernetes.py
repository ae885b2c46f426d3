"""Kubernetes, Istio and Helm manifests, checked without a cluster.

Plain manifests and the chart as real Helm renders it are validated against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail). Istio's
kinds are CRDs the validator has no schema for; they get structural checks here, and
their pluginConfig is loaded by a real Envoy in test_envoy_configs.py. On top, the checks
a schema cannot make: names and ports that must agree between the objects.
"""

from __future__ import annotations

import asyncio
import json

import kubernetes_validate
import pytest
import yaml

from conftest import CHART, ROOT, by_kind, load_all_yaml, render_chart, wasm_filters

K8S_VERSION = "1.33.0"  # an old-enough API level, so the manifests suit clusters of today
# The plain manifests of each deployment form: the gateway, and VictoriaMetrics with the
# filter as a sidecar.
FORMS = {"gateway": ROOT / "deploy/kubernetes", "sidecar": ROOT / "deploy/kubernetes/sidecar"}


def manifest_files(form: str) -> list:
    return sorted(p for p in FORMS[form].glob("*.yaml") if p.name != "kustomization.yaml")


K8S_FILES = [path for form in FORMS for path in manifest_files(form)]


def plain_documents(form: str) -> list[dict]:
    docs = []
    for path in manifest_files(form):
        docs += load_all_yaml(path.read_text())
    return docs


HELM_VALUE_SETS = {
    "defaults": {},
    "cluster-url-no-networkpolicy": {
        "victoriametrics": {"url": "http://vmselect:8481/select/0/prometheus"},
        "networkPolicy": {"enabled": False},
        "replicaCount": 1,
    },
    "sidecar": {"mode": "sidecar"},
    "sidecar-own-writers-and-storage": {
        "mode": "sidecar",
        "sidecar": {
            "victoriametrics": {"retentionPeriod": "90d", "extraArgs": ["-dedup.minScrapeInterval=30s"],
                                "storage": {"size": "50Gi", "storageClassName": "fast-ssd"}},
            "ingest": {"port": 9429, "from": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "agents"}}}]},
        },
    },
}
SIDECAR_SETS = [name for name, values in HELM_VALUE_SETS.items() if values.get("mode") == "sidecar"]
GATEWAY_SETS = [name for name in HELM_VALUE_SETS if name not in SIDECAR_SETS]


@pytest.fixture(scope="module", params=list(HELM_VALUE_SETS))
def helm_docs(request) -> list[dict]:
    return render_chart(HELM_VALUE_SETS[request.param])


@pytest.fixture(scope="module", params=GATEWAY_SETS)
def helm_gateway_docs(request) -> list[dict]:
    return render_chart(HELM_VALUE_SETS[request.param])


@pytest.fixture(scope="module", params=SIDECAR_SETS)
def helm_sidecar_docs(request) -> tuple[dict, list[dict]]:
    return HELM_VALUE_SETS[request.param], render_chart(HELM_VALUE_SETS[request.param])


def validate(doc: dict) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.path)}")


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: str(p.relative_to(ROOT / "deploy")))
def test_plain_manifest_is_valid(path):
    for doc in load_all_yaml(path.read_text()):
        validate(doc)


@pytest.mark.parametrize("form", FORMS)
def test_kustomization_lists_every_manifest(form):
    kustomization = yaml.safe_load((FORMS[form] / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files(form))


def test_rendered_chart_is_valid(helm_docs):
    kinds = sorted(d["kind"] for d in helm_docs)
    assert {"ConfigMap", "Service"} <= set(kinds)
    assert len({"Deployment", "StatefulSet"} & set(kinds)) == 1, kinds
    for doc in helm_docs:
        validate(doc)


def test_chart_lints():
    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace="default", kubeconfig="apiVersion: v1\nkind: Config\n")
    result = asyncio.run(helm_sdkpy.Lint(config).run(str(CHART)))
    errors = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2]  # 2 warning, 3+ error
    assert not errors and not result.get("Errors"), result


def test_chart_refuses_an_unknown_mode():
    import helm_sdkpy

    with pytest.raises(helm_sdkpy.HelmError, match="mode"):
        render_chart({"mode": "daemonset"})


def check_envoy_pod(pod: dict, configmap: dict) -> dict:
    """The wiring Envoy's pod needs, in either form; returns Envoy's parsed config."""
    envoy = next(c for c in pod["containers"] if c["name"] == "envoy")
    init = pod["initContainers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    envoy_mounts = {m["mountPath"]: m["name"] for m in envoy["volumeMounts"]}
    config = yaml.safe_load(configmap["data"]["envoy.yaml"])

    # Envoy reads the ConfigMap's envoy.yaml.
    config_path = envoy["command"][envoy["command"].index("-c") + 1]
    config_dir, config_file = config_path.rsplit("/", 1)
    assert volumes[envoy_mounts[config_dir]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_file in configmap["data"]
    # The init container copies the module to where the config loads it from.
    module = wasm_filters(config)[0]["vm_config"]["code"]["local"]["filename"]
    module_dir, module_file = module.rsplit("/", 1)
    wasm_volume = envoy_mounts[module_dir]
    assert "emptyDir" in volumes[wasm_volume]
    init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert init["command"][-1] == f"{init_mounts[wasm_volume]}/{module_file}"
    # Config and module in separate mounts: a mount inside a ConfigMap volume is fragile.
    assert not module_dir.startswith(config_dir + "/") and module_dir != config_dir
    # Probes on Envoy's admin /ready, and the admin and proxy ports are the config's.
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    admin_port = config["admin"]["address"]["socket_address"]["port_value"]
    listener_port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    assert ports["admin"] == admin_port and ports["http"] == listener_port
    for probe in ("readinessProbe", "livenessProbe"):
        assert envoy[probe]["httpGet"]["path"] == "/ready", probe
        assert envoy[probe]["httpGet"]["port"] in ("admin", admin_port), probe
    # Unprivileged, read-only, with resource requests: every container.
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"] + pod["initContainers"]:
        assert container["resources"]["requests"]["cpu"], container["name"]
        assert container["resources"]["requests"]["memory"], container["name"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, container["name"]
    assert envoy["image"].startswith("envoyproxy/envoy:v1.40")
    return config


def check_services(docs: list[dict], workload: dict, allowed: set[str]) -> None:
    """The Services select the workload's pods and reach only Envoy's `allowed` ports."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    envoy = next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "envoy")
    envoy_ports = {p["name"] for p in envoy["ports"]}
    services = [d for d in docs if d["kind"] == "Service"]
    assert services
    for service in services:
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
        for port in service["spec"]["ports"]:
            # By name, and a name of Envoy's: never the admin port, never another container.
            assert port["targetPort"] in envoy_ports & allowed, (service["metadata"]["name"], port)
    exposed = {p["targetPort"] for s in services for p in s["spec"]["ports"]}
    assert exposed == allowed, exposed


def check_gateway(docs: list[dict]) -> None:
    """The wiring a gateway needs, the same for the plain manifests and the chart."""
    deployment = by_kind(docs, "Deployment")
    check_envoy_pod(deployment["spec"]["template"]["spec"], by_kind(docs, "ConfigMap"))
    check_services(docs, deployment, {"http"})


def check_sidecar(docs: list[dict]) -> None:
    """VictoriaMetrics on the pod's loopback, Envoy the only way in."""
    assert not [d for d in docs if d["kind"] == "Deployment"]
    statefulset = by_kind(docs, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 1  # single-node: one pod owns the volume
    pod = statefulset["spec"]["template"]["spec"]
    assert sorted(c["name"] for c in pod["containers"]) == ["envoy", "victoria-metrics"]
    config = check_envoy_pod(pod, by_kind(docs, "ConfigMap"))
    vm = next(c for c in pod["containers"] if c["name"] == "victoria-metrics")
    flags = dict(a.split("=", 1) for a in vm["args"])
    # VictoriaMetrics listens on the loopback only, declares no port, and is exactly
    # what Envoy's backend cluster points at.
    assert flags["-httpListenAddr"] == "127.0.0.1:8428"
    assert "ports" not in vm
    backend = next(c for c in config["static_resources"]["clusters"] if c["name"] == "backend")
    address = backend["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": 8428}
    assert backend["type"] == "STATIC"
    # Its data on the claimed volume.
    mounts = {m["name"]: m["mountPath"] for m in vm["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]]
    assert claims == ["storage"] and mounts["storage"] == flags["-storageDataPath"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    # The write port is Envoy's second listener, and VictoriaMetrics' readiness asks its
    # /health through it (the kubelet cannot reach the pod's loopback).
    envoy = next(c for c in pod["containers"] if c["name"] == "envoy")
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    listeners = {l["name"]: l["address"]["socket_address"]["port_value"]
                 for l in config["static_resources"]["listeners"]}
    assert listeners == {"promql": ports["http"], "ingest": ports["ingest"]}
    assert vm["readinessProbe"]["httpGet"] == {"path": "/health", "port": ports["ingest"]}
    check_services(docs, statefulset, {"http", "ingest"})


def check_network_policy(docs: list[dict], open_ports: dict[int, bool]) -> None:
    """Ingress to exactly `open_ports` (port -> whether any pod may come): never Envoy's
    admin port, and VictoriaMetrics' own only through Envoy."""
    policy = by_kind(docs, "NetworkPolicy")
    rules = {p["port"]: rule for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert set(rules) == set(open_ports), rules
    for port, from_anyone in open_ports.items():
        assert ("from" not in rules[port]) == from_anyone, (port, rules[port])


def test_plain_gateway_wiring():
    check_gateway(plain_documents("gateway"))
    check_network_policy(plain_documents("gateway"), {8080: True})


def test_helm_gateway_wiring(helm_gateway_docs):
    check_gateway(helm_gateway_docs)


def test_plain_sidecar_wiring():
    docs = plain_documents("sidecar")
    check_sidecar(docs)
    check_network_policy(docs, {8080: True, 8429: False})


def test_helm_sidecar_wiring(helm_sidecar_docs):
    values, docs = helm_sidecar_docs
    check_sidecar(docs)
    ingest = values.get("sidecar", {}).get("ingest", {})
    check_network_policy(docs, {8080: True, ingest.get("port", 8429): False})
    writers = by_kind(docs, "NetworkPolicy")["spec"]["ingress"][1]["from"]
    assert writers == ingest.get("from", [{"podSelector": {"matchLabels": {
        "promql-tenant-filter/writer": "true"}}}])


def test_helm_sidecar_values_reach_victoriametrics():
    values = HELM_VALUE_SETS["sidecar-own-writers-and-storage"]
    statefulset = by_kind(render_chart(values), "StatefulSet")
    vm = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert "-retentionPeriod=90d" in vm["args"] and "-dedup.minScrapeInterval=30s" in vm["args"]
    claim = statefulset["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast-ssd"
    assert claim["resources"]["requests"]["storage"] == "50Gi"


def test_helm_values_reach_the_plugin_config():
    docs = render_chart({"tenantLabel": "tenant", "identity": {
        "claim": ["app_metadata", "tenant"], "idp": {"host": "login.example.org"}}})
    config = yaml.safe_load(by_kind(docs, "ConfigMap")["data"]["envoy.yaml"])
    plugin = json.loads(wasm_filters(config)[0]["configuration"]["value"])
    assert plugin["tenant_label"] == "tenant"
    assert plugin["identity"]["claim"] == ["app_metadata", "tenant"]
    assert plugin["identity"]["authority"] == "login.example.org"
    idp = next(c for c in config["static_resources"]["clusters"] if c["name"] == plugin["identity"]["cluster"])
    assert idp["transport_socket"]["typed_config"]["sni"] == "login.example.org"


def istio() -> dict[str, dict]:
    docs = []
    for path in sorted((ROOT / "deploy/istio").glob("*.yaml")):
        docs += load_all_yaml(path.read_text())
    return {d["kind"]: d for d in docs}


def test_istio_wasmplugin():
    plugin = istio()["WasmPlugin"]
    assert plugin["apiVersion"] == "extensions.istio.io/v1alpha1"
    spec = plugin["spec"]
    assert spec["phase"] == "AUTHN"
    # Istio 1.27+ maps FAIL_RELOAD to Envoy's; FAIL_OPEN would pass requests unfiltered.
    assert spec["failStrategy"] == "FAIL_RELOAD"
    assert spec["url"].startswith("oci://")
    assert spec["selector"]["matchLabels"]
    assert isinstance(spec["pluginConfig"], dict)


def test_istio_cluster_name_matches_the_service_entry():
    kinds = istio()
    host = kinds["ServiceEntry"]["spec"]["hosts"][0]
    port = kinds["ServiceEntry"]["spec"]["ports"][0]["number"]
    identity = kinds["WasmPlugin"]["spec"]["pluginConfig"]["identity"]
    # Istio's name for the cluster of a ServiceEntry host: outbound|<port>|<subset>|<host>.
    assert identity["cluster"] == f"outbound|{port}||{host}"
    assert identity["authority"] == host
    rule = kinds["DestinationRule"]["spec"]
    assert rule["host"] == host
    assert rule["trafficPolicy"]["tls"]["mode"] == "SIMPLE"
    assert rule["trafficPolicy"]["tls"]["sni"] == host
    assert host in rule["trafficPolicy"]["tls"]["subjectAltNames"]
    assert kinds["ServiceEntry"]["spec"]["resolution"] == "DNS"
    assert kinds["ServiceEntry"]["spec"]["location"] == "MESH_EXTERNAL"


def test_oci_dockerfile_layout():
    text = (ROOT / "deploy/oci/Dockerfile").read_text()
    stages = [line.split() for line in text.splitlines() if line.startswith("FROM ")]
    # The last stage (what a plain `docker build` produces) is the scratch plugin image.
    assert stages[-1][1] == "scratch"
    last = text[text.rindex("FROM "):]
    assert "COPY target/wasm32-wasip1/release/promql_tenant_filter.wasm /plugin.wasm" in last
    assert "init" in [s[-1] for s in stages]
