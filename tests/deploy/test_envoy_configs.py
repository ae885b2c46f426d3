"""`envoy --mode validate` on every Envoy config of the repo, with the real built module.

Envoy's validate mode builds the whole config (listeners, clusters, TLS contexts) and
loads the wasm module and runs its on_configure with the plugin JSON, so a wrong plugin
field fails here exactly as it would fail at start. Configs come from envoy/*.yaml, the
Kubernetes ConfigMap, the Helm chart as rendered by real Helm, and the Istio WasmPlugin's
pluginConfig dropped into a minimal config with Istio's cluster name.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import (ROOT, by_kind, envoy_validate, fill_placeholders, load_all_yaml,
                      render_chart, wasm_filters)

ENVOY_FILES = sorted((ROOT / "envoy").glob("*.yaml"))
# The rendered variants of the Auth0 template (git-ignored) are the user's, not the repo's;
# the Istio-shaped config is what istiod generates, not a deployment of ours (the
# end-to-end suite validates and runs it).
ENVOY_FILES = [p for p in ENVOY_FILES
               if not p.name.endswith(".local.yaml") and p.name != "envoy.istio-shaped.yaml"]


def configmap_envoy_yaml(docs: list[dict]) -> str:
    return by_kind(docs, "ConfigMap")["data"]["envoy.yaml"]


def kubernetes_config(path: str) -> str:
    return configmap_envoy_yaml(load_all_yaml((ROOT / path).read_text()))


# name -> a function giving the config text (templates still holding their placeholders).
CONFIGS = {f"envoy/{p.name}": (lambda p=p: p.read_text()) for p in ENVOY_FILES}
for manifest in ("deploy/kubernetes/envoy-configmap.yaml",
                 "deploy/kubernetes/sidecar/envoy-configmap.yaml"):
    CONFIGS[manifest] = lambda manifest=manifest: kubernetes_config(manifest)
CONFIGS["helm: default values"] = lambda: configmap_envoy_yaml(render_chart())
CONFIGS["helm: sidecar"] = lambda: configmap_envoy_yaml(render_chart({"mode": "sidecar"}))
CONFIGS["helm: VictoriaMetrics cluster over https"] = lambda: configmap_envoy_yaml(render_chart({
    "victoriametrics": {"url": "https://vmselect.monitoring:8481/select/42/prometheus"},
    "identity": {"claim": ["app_metadata", "tenant"]},
    "onConflict": "reject",
    "dialect": "metricsql",
}))


def test_every_envoy_file_is_checked():
    # The repo's own configs must not silently drop out of the list.
    names = {p.name for p in ENVOY_FILES}
    assert {"envoy.compose.yaml", "envoy.auth0.yaml"} <= names


@pytest.mark.parametrize("name", list(CONFIGS))
def test_envoy_validates(name, wasm, jwks, tmp_path):
    text = fill_placeholders(CONFIGS[name](), wasm, jwks)
    result = envoy_validate(text, tmp_path)
    assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
    assert "OK" in result.stdout + result.stderr


@pytest.mark.parametrize("name", list(CONFIGS))
def test_wasm_filter_is_safe(name, wasm, jwks):
    """What no deployment may lack, even though Envoy would accept the config without it."""
    config = yaml.safe_load(fill_placeholders(CONFIGS[name](), wasm, jwks))
    filters = wasm_filters(config)
    assert filters, f"{name}: no wasm filter"
    for f in filters:
        # A module that fails must not turn into a pass-through (FAIL_OPEN), and a VM that
        # traps must be replaced rather than leave its worker refusing everyone
        # (FAIL_CLOSED); tests/e2e/test_vm_reload.py shows both.
        assert f.get("failure_policy") == "FAIL_RELOAD", f"{name}: set `failure_policy: FAIL_RELOAD`"
        assert "fail_open" not in f, f"{name}: `fail_open` is the old, fail-open-or-closed switch"
        # `allow_on_headers_stop_iteration` is not required: the filter serves POST
        # bodies without it, as under Istio (docs/request-lifecycle.md).
        assert f["vm_config"]["runtime"] == "envoy.wasm.runtime.v8", name
        assert f["vm_config"].get("vm_id"), name
    listener = config["static_resources"]["listeners"][0]
    # The filter holds a rules or alerts answer whole (max_response_bytes, 8 MiB by
    # default); with Envoy's default 1 MiB stream buffer a larger one gets Envoy's 500.
    assert listener.get("per_connection_buffer_limit_bytes", 0) >= 8 * 1024 * 1024, (
        f"{name}: set the listener's per_connection_buffer_limit_bytes to max_response_bytes")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    # The allowlist judges the path Envoy routes: it must be the canonical one.
    assert hcm.get("normalize_path") is True and hcm.get("merge_slashes") is True, name
    # Envoy's own answers when the backend is down or slow must be in Prometheus' JSON
    # shape (tests/e2e/test_backend_failures.py shows them; the soak found them missing).
    shapes = {}
    for mapper in hcm.get("local_reply_config", {}).get("mappers", []):
        body = mapper.get("body_format_override", {}).get("json_format", {})
        for flag in mapper.get("filter", {}).get("response_flag_filter", {}).get("flags", []):
            shapes[flag] = (body.get("status"), body.get("errorType"))
    assert shapes.get("UF") == ("error", "unavailable"), f"{name}: map backend failures (UF)"
    assert shapes.get("UC") == ("error", "unavailable"), f"{name}: map backend resets (UC)"
    assert shapes.get("UT") == ("error", "timeout"), f"{name}: map backend timeouts (UT)"
    # A stream whose Wasm VM failed (trapped, or waiting for FAIL_RELOAD) gets Envoy's own
    # empty 503 unless a mapper gives it the shape too (tests/e2e/test_vm_reload.py).
    failed_vm = [
        mapper["body_format_override"]["json_format"]
        for mapper in hcm.get("local_reply_config", {}).get("mappers", [])
        if "wasm_fail_stream" in json.dumps(mapper.get("filter", {}))
    ]
    assert [(b.get("status"), b.get("errorType")) for b in failed_vm] == [
        ("error", "unavailable")], f"{name}: map a failed Wasm VM's 503 (wasm_fail_stream)"


# The write endpoints a write-only listener may route (VictoriaMetrics' remote write and
# imports), and paths that read, which it must not.
WRITE_PATHS = ["/api/v1/write", "/api/v1/import", "/api/v1/import/prometheus",
               "/api/v1/import/native", "/api/v1/import/csv"]
READ_PATHS = ["/api/v1/query", "/api/v1/query_range", "/api/v1/series", "/api/v1/labels",
              "/api/v1/label/client_id/values", "/api/v1/export", "/api/v1/export/native",
              "/api/v1/export/csv", "/federate", "/api/v1/status/tsdb", "/api/v1/import/../export",
              "/prometheus/api/v1/query", "/api/v1/writex", "/api/v1/import/prometheus/x", "/"]


def route_paths(match: dict, paths: list[str]) -> list[str]:
    """Which of `paths` a route's match takes (exact, prefix or RE2 full match)."""
    if "path" in match:
        return [p for p in paths if p == match["path"]]
    if "prefix" in match:
        return [p for p in paths if p.startswith(match["prefix"])]
    if "safe_regex" in match:
        return [p for p in paths if re.fullmatch(match["safe_regex"]["regex"], p)]
    raise AssertionError(f"a route match this check does not know: {match}")


def check_write_only(name: str, listener: dict) -> None:
    """A listener without the filter may only take writes (and VictoriaMetrics' /health):
    no read path reaches the backend around the filter, in any spelling."""
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm.get("normalize_path") is True and hcm.get("merge_slashes") is True, name
    assert hcm.get("path_with_escaped_slashes_action") == "REJECT_REQUEST", name
    taken = []
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            if "route" not in route:
                assert route["direct_response"]["status"] >= 400, (name, route)
                continue
            methods = [h["string_match"]["exact"] for h in route["match"].get("headers", [])
                       if h["name"] == ":method"]
            assert methods, f"{name}: a route without a method match: {route['match']}"
            read = route_paths(route["match"], READ_PATHS)
            assert not read, f"{name}: the write-only listener routes {read}"
            taken += route_paths(route["match"], WRITE_PATHS + ["/health"])
    assert set(taken) == set(WRITE_PATHS + ["/health"]), f"{name}: routes {taken}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_listener_reaches_the_backend_around_the_filter(name, wasm, jwks):
    config = yaml.safe_load(fill_placeholders(CONFIGS[name](), wasm, jwks))
    for listener in config["static_resources"]["listeners"]:
        if not wasm_filters({"static_resources": {"listeners": [listener]}}):
            check_write_only(f"{name}: {listener['name']}", listener)


def test_helm_cluster_url_rewrites_the_prefix(wasm):
    docs = render_chart({"victoriametrics": {"url": "http://vmselect:8481/select/0/prometheus"}})
    config = yaml.safe_load(configmap_envoy_yaml(docs))
    route = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    # The filter judges /api/v1/...; vmselect is asked /select/0/prometheus/api/v1/...
    assert route["prefix_rewrite"] == "/select/0/prometheus/"
    backend = next(c for c in config["static_resources"]["clusters"] if c["name"] == "backend")
    address = backend["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "vmselect", "port_value": 8481}
    assert "transport_socket" not in backend


def test_helm_single_node_url_has_no_rewrite():
    config = yaml.safe_load(configmap_envoy_yaml(render_chart()))
    route = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert "prefix_rewrite" not in route


def test_helm_refuses_a_backend_url_without_scheme():
    import helm_sdkpy

    with pytest.raises(helm_sdkpy.HelmError, match="victoriametrics.url"):
        render_chart({"victoriametrics": {"url": "victoria-metrics:8428"}})


def test_validation_reaches_the_plugin_config(wasm, jwks, tmp_path):
    """Control: a wrong plugin field must fail validation, or the checks above prove little."""
    text = fill_placeholders(CONFIGS["envoy/envoy.compose.yaml"](), wasm, jwks)
    bad = text.replace('"on_conflict": "and"', '"on_conflict": "merge"')
    assert bad != text
    result = envoy_validate(bad, tmp_path)
    assert result.returncode != 0
    assert "on_conflict" in result.stdout + result.stderr


def istio_documents() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "deploy/istio").glob("*.yaml")):
        docs += load_all_yaml(path.read_text())
    return docs


def test_istio_plugin_config_loads_under_istios_cluster_name(wasm, jwks, tmp_path):
    """The WasmPlugin's pluginConfig, as Istio hands it to the module, in a real Envoy
    whose IdP cluster carries the name Istio gives a ServiceEntry host."""
    plugin = by_kind(istio_documents(), "WasmPlugin")["spec"]["pluginConfig"]
    cluster = plugin["identity"]["cluster"]
    config = yaml.safe_load(
        fill_placeholders((ROOT / "envoy/envoy.auth0.yaml").read_text(), wasm, jwks))
    wasm_filters(config)[0]["configuration"]["value"] = json.dumps(plugin)
    for c in config["static_resources"]["clusters"]:
        if c["name"] == "auth0":
            c["name"] = c["load_assignment"]["cluster_name"] = cluster
    result = envoy_validate(yaml.safe_dump(config), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
