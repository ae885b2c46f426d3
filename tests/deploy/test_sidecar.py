"""The sidecar's Envoy config, run: VictoriaMetrics behind it, written to and read through it.

No cluster here, so the pod's two containers run as processes on 127.0.0.1: a real
VictoriaMetrics, and Envoy with the sidecar's config (the plain ConfigMap, and the chart's
in sidecar mode) and the built module. What a pod gives is mapped to this machine and
nothing else is changed: the listeners and VictoriaMetrics move to free ports, the
identity provider's cluster points at oidc-provider-mock over plain HTTP with its claim
name. Then a writer imports both tenants' series through the write port, alice and bob
each read only their own through the filtered port, and the write port refuses to read.
"""

from __future__ import annotations

import copy
import json
import sys
import time

import pytest
import requests
import yaml

from conftest import ROOT, by_kind, load_all_yaml, render_chart, wasm_filters

sys.path.append(str(ROOT / "tests/e2e"))
import envoy_config  # noqa: E402
import seed  # noqa: E402
from procs import free_port, wait_until  # noqa: E402
from services import Envoy, OidcProvider, VictoriaMetrics  # noqa: E402

USERS = {"alice": seed.ALICE_TENANT, "bob": seed.BOB_TENANT}
SOURCES = {
    "deploy/kubernetes/sidecar": lambda: load_all_yaml(
        (ROOT / "deploy/kubernetes/sidecar/envoy-configmap.yaml").read_text()),
    "helm: sidecar": lambda: render_chart({"mode": "sidecar"}),
}
# What the pod's VictoriaMetrics listens on (its -httpListenAddr): Envoy's backend.
POD_BACKEND = {"address": "127.0.0.1", "port_value": 8428}


def on_this_machine(config: dict, wasm, oidc_port: int, vm_port: int) -> tuple[dict, dict]:
    """The pod's Envoy config with the pod's ports and names mapped to 127.0.0.1."""
    config = copy.deepcopy(config)
    ports = {"admin": free_port()}
    config["admin"]["address"]["socket_address"] = {"address": "127.0.0.1",
                                                   "port_value": ports["admin"]}
    for listener in config["static_resources"]["listeners"]:
        ports[listener["name"]] = free_port()
        listener["address"]["socket_address"] = {"address": "127.0.0.1",
                                                 "port_value": ports[listener["name"]]}
    plugin = wasm_filters(config)[0]
    plugin["vm_config"]["code"]["local"]["filename"] = str(wasm)
    identity = json.loads(plugin["configuration"]["value"])
    for cluster in config["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        if cluster["name"] == "backend":
            assert endpoint["address"]["socket_address"] == POD_BACKEND
        if cluster["name"] == identity["identity"]["cluster"]:
            cluster["type"] = "STATIC"
            cluster.pop("transport_socket", None)
    config = envoy_config.set_cluster_port(config, "backend", vm_port)
    config = envoy_config.set_cluster_port(config, identity["identity"]["cluster"], oidc_port)
    identity["identity"]["claim"] = seed.TENANT_LABEL
    wasm_filters(config)[0]["configuration"]["value"] = json.dumps(identity)
    return config, ports


@pytest.fixture(scope="module", params=list(SOURCES))
def pod(request, wasm, tmp_path_factory):
    work = tmp_path_factory.mktemp("sidecar")
    vm = VictoriaMetrics(work)
    started = [vm]
    try:
        oidc = OidcProvider(work, {user: {"client_id": tenant} for user, tenant in USERS.items()})
        started.append(oidc)
        configmap = by_kind(SOURCES[request.param](), "ConfigMap")
        config, ports = on_this_machine(yaml.safe_load(configmap["data"]["envoy.yaml"]), wasm,
                                        oidc.port, vm.port)
        proxy = Envoy(work, "envoy-sidecar", config, admin_port=ports["admin"],
                      listen_port=ports["promql"])
        started.append(proxy)
        proxy.wait_ready()
        yield {"vm": vm, "proxy": proxy, "ingest": f"http://127.0.0.1:{ports['ingest']}",
               "tokens": {user: oidc.login(user) for user in USERS}}
    finally:
        for process in reversed(started):
            process.stop()


def not_found_here(response) -> bool:
    """Envoy's own refusal on the write port: 404, in Prometheus' JSON error shape."""
    return (response.status_code == 404
            and response.headers.get("content-type") == "application/json"
            and response.json()["status"] == "error")


def test_written_through_the_write_port_read_through_the_filter(pod):
    now = int(time.time())
    r = requests.post(f"{pod['ingest']}/api/v1/import/prometheus", timeout=10,
                      data=seed.exposition(now * 1000).encode())
    assert r.status_code == 204, (r.status_code, r.text[:300])
    requests.get(f"{pod['vm'].url}/internal/force_flush", timeout=10).raise_for_status()
    for user, tenant in USERS.items():
        def confined():
            r = requests.post(f"{pod['proxy'].url}/api/v1/query", timeout=10,
                              data={"query": '{__name__=~".+"}', "time": now},
                              headers={"Authorization": f"Bearer {pod['tokens'][user]}"})
            assert r.status_code == 200, (r.status_code, r.text[:300])
            got = {seed.as_key(s["metric"]) for s in r.json()["data"]["result"]}
            assert got <= seed.keys_of(tenant), got  # never another tenant's
            return got == seed.keys_of(tenant)
        wait_until(confined, f"{user}'s series through the filter", timeout_s=20)


def test_the_filtered_port_still_refuses_without_a_token(pod):
    r = requests.get(f"{pod['proxy'].url}/api/v1/query", params={"query": "up"}, timeout=10)
    assert r.status_code == 401 and r.json()["errorType"] == "unauthorized"


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/v1/query?query=up"), ("POST", "/api/v1/query"),
    ("GET", "/api/v1/export?match[]={__name__=~\".%2B\"}"), ("POST", "/api/v1/export"),
    ("GET", "/api/v1/series?match[]=up"), ("GET", "/federate?match[]=up"),
    ("GET", "/api/v1/labels"), ("GET", "/api/v1/status/tsdb"), ("GET", "/prometheus/api/v1/query"),
    ("GET", "/api/v1/write"), ("GET", "/api/v1/import/prometheus"),
    ("POST", "/api/v1/import/../export"), ("POST", "/api/v1//import/../../api/v1/export"),
])
def test_the_write_port_does_not_read(pod, method, path):
    r = requests.request(method, pod["ingest"] + path, data={"match[]": "up"}, timeout=10)
    assert not_found_here(r), (r.status_code, r.text[:300])


def test_the_write_port_refuses_an_encoded_slash(pod):
    r = requests.post(f"{pod['ingest']}/api/v1/import%2F..%2F..%2Fapi%2Fv1%2Fexport", timeout=10)
    assert r.status_code == 400, (r.status_code, r.text[:300])


def test_the_write_port_passes_health_and_remote_write(pod):
    assert requests.get(f"{pod['ingest']}/health", timeout=10).text.strip() == "OK"
    # An empty remote-write body reaches VictoriaMetrics, which refuses it itself (Envoy's
    # router marks what came from upstream).
    r = requests.post(f"{pod['ingest']}/api/v1/write", data=b"", timeout=10)
    assert "x-envoy-upstream-service-time" in r.headers, (r.status_code, r.text[:300])
    assert r.status_code == 400 and "cannot decompress" in r.text, (r.status_code, r.text[:300])
