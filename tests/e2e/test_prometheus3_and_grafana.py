"""Prometheus 3's endpoints, and Grafana's probes, on both backends.

Prometheus 3 is not packaged here: these run against Prometheus 2.42 and
VictoriaMetrics 1.79. For each endpoint Prometheus 3 added they show the filter's
decision for real (refused with 403 before anything reaches the backend, or forwarded)
and what the backend here answers to what was forwarded; they cannot show what
Prometheus 3 itself would answer. The request each forwarded endpoint becomes (the
tenant's match[] on search/*, include_metadata stripped) is pinned by the unit tests of
src/api.rs.
"""

from __future__ import annotations

import pytest
from adversary import backend_requests
from conftest import assert_prometheus_error, call

# Prometheus 3's new endpoints that are about the server, not a tenant: refused on both.
REFUSED = [
    "/api/v1/notifications",
    "/api/v1/notifications/live",
    "/api/v1/status/tsdb/blocks",
    "/api/v1/status/self_metrics",
    "/api/v1/targets/relabel_steps?scrapePool=x&labels=%7B%7D",
]
# Forwarded on Prometheus (no tenant data, or confined like /api/v1/labels), refused on
# VictoriaMetrics, which has none of them.
PROMETHEUS_ONLY = [
    "/api/v1/format_query?query=up",
    "/api/v1/parse_query?query=up",
    "/api/v1/features",
    "/api/v1/search/metric_names?search%5B%5D=http",
    "/api/v1/search/label_names?search%5B%5D=client",
    "/api/v1/search/label_values?label=client_id",
]
# What Prometheus 2.42 answers to the forwarded ones: it has format_query only.
ON_PROMETHEUS_2_42 = {"/api/v1/format_query": 200}


@pytest.fixture
def rewrite_only(request, backend, envoy_mode):
    """The rewrite-only Envoy of `backend`."""
    name = "envoy_prometheus" if backend == "prometheus" else "envoy_without_vm_label"
    return request.getfixturevalue(name)


@pytest.mark.parametrize("path", REFUSED)
def test_server_endpoints_are_refused_on_both_backends(rewrite_only, tokens, path):
    before = backend_requests(rewrite_only)
    assert_prometheus_error(call(rewrite_only, "GET", path, tokens["alice"]), 403, "forbidden")
    assert backend_requests(rewrite_only) == before


@pytest.mark.parametrize("path", PROMETHEUS_ONLY)
def test_prometheus_3_endpoints_pass_only_to_prometheus(rewrite_only, backend, tokens, path):
    before = backend_requests(rewrite_only)
    response = call(rewrite_only, "GET", path, tokens["alice"])
    if backend == "victoriametrics":
        assert_prometheus_error(response, 403, "forbidden")
        assert backend_requests(rewrite_only) == before
        return
    # Forwarded: Envoy's upstream timing header says the backend answered.
    assert "x-envoy-upstream-service-time" in response.headers, response.headers
    assert backend_requests(rewrite_only) == before + 1
    want = ON_PROMETHEUS_2_42.get(path.split("?")[0], 404)
    assert response.status_code == want, (response.status_code, response.text[:300])
    if want == 200:
        assert response.json() == {"status": "success", "data": "up"}


def test_format_query_needs_a_tenant_like_any_request(envoy_prometheus, tokens):
    for token, status in ((None, 401), (tokens["carol"], 403)):
        before = backend_requests(envoy_prometheus)
        response = call(envoy_prometheus, "GET", "/api/v1/format_query", token, {"query": "up"})
        assert response.status_code == status
        assert backend_requests(envoy_prometheus) == before


def test_grafana_exemplars_probe_and_health_check(proxy, store, tokens):
    # Grafana's data source probes exemplar support with `query_exemplars?query=test`
    # and checks its health with the instant query `1+1`; both must pass on both
    # backends (no exemplars are stored here: the probe answers an empty list).
    probe = call(proxy, "GET", "/api/v1/query_exemplars", tokens["alice"],
                 {"query": "test", "start": store.start_s, "end": store.seed_s})
    assert probe.status_code == 200, probe.text[:300]
    assert probe.json() == {"status": "success", "data": []}
    for method in ("GET", "POST"):
        health = call(proxy, method, "/api/v1/query", tokens["alice"],
                      {"query": "1+1", "time": store.seed_s})
        assert health.status_code == 200, health.text[:300]
        data = health.json()["data"]
        # Prometheus answers a scalar; VictoriaMetrics a one-sample vector.
        if data["resultType"] == "scalar":
            assert data["result"][1] == "2", data
        else:
            assert [s["value"][1] for s in data["result"]] == ["2"], data
