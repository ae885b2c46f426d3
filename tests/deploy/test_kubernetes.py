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
K8S_FILES = sorted(p for p in (ROOT / "deploy/kubernetes").glob("*.yaml")
                   if p.name != "kustomization.yaml")


def plain_documents() -> list[dict]:
    docs = []
    for path in K8S_FILES:
        docs += load_all_yaml(path.read_text())
    return docs


HELM_VALUE_SETS = {
    "defaults": {},
    "cluster-url-no-networkpolicy": {
        "victoriametrics": {"url": "http://vmselect:8481/select/0/prometheus"},
        "networkPolicy": {"enabled": False},
        "replicaCount": 1,
    },
}


@pytest.fixture(scope="module", params=list(HELM_VALUE_SETS))
def helm_docs(request) -> list[dict]:
    return render_chart(HELM_VALUE_SETS[request.param])


def validate(doc: dict) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.path)}")


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_plain_manifest_is_valid(path):
    for doc in load_all_yaml(path.read_text()):
        validate(doc)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((ROOT / "deploy/kubernetes/kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S_FILES)


def test_rendered_chart_is_valid(helm_docs):
    kinds = sorted(d["kind"] for d in helm_docs)
    assert {"ConfigMap", "Deployment", "Service"} <= set(kinds)
    for doc in helm_docs:
        validate(doc)


def test_chart_lints():
    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace="default", kubeconfig="apiVersion: v1\nkind: Config\n")
    result = asyncio.run(helm_sdkpy.Lint(config).run(str(CHART)))
    errors = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2]  # 2 warning, 3+ error
    assert not errors and not result.get("Errors"), result


def check_gateway(docs: list[dict]) -> None:
    """The wiring a gateway needs, the same for the plain manifests and the chart."""
    configmap = by_kind(docs, "ConfigMap")
    deployment = by_kind(docs, "Deployment")
    service = by_kind(docs, "Service")
    pod = deployment["spec"]["template"]["spec"]
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
    # Probes on Envoy's admin /ready, and the admin port is the config's.
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    admin_port = config["admin"]["address"]["socket_address"]["port_value"]
    listener_port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    assert ports["admin"] == admin_port and ports["http"] == listener_port
    for probe in ("readinessProbe", "livenessProbe"):
        assert envoy[probe]["httpGet"]["path"] == "/ready", probe
        assert envoy[probe]["httpGet"]["port"] in ("admin", admin_port), probe
    # Resource requests on every container.
    for container in pod["containers"] + pod["initContainers"]:
        assert container["resources"]["requests"]["cpu"], container["name"]
        assert container["resources"]["requests"]["memory"], container["name"]
    # The Service exposes the proxy, never the admin port, and selects these pods.
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert envoy["image"].startswith("envoyproxy/envoy:v1.40")


def test_plain_gateway_wiring():
    check_gateway(plain_documents())


def test_helm_gateway_wiring(helm_docs):
    check_gateway(helm_docs)


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
