"""Refusals: every request the filter must not let through, each in Prometheus' JSON shape.

Missing, malformed, unknown and revoked tokens get 401; a user without a usable tenant
claim gets 403; a path outside the allowlist gets 403 and never reaches VictoriaMetrics;
a query that does not parse gets 400. Also the other refusals of the request handling:
405, 413, 415 and non-canonical paths.
"""

from __future__ import annotations

import pytest
from conftest import assert_prometheus_error, bearer, call, send

QUERY = {"query": "up"}


def test_missing_token_is_401_with_bearer_challenge(envoy):
    response = call(envoy, "GET", "/api/v1/query", None, QUERY)
    assert_prometheus_error(response, 401, "unauthorized")
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


@pytest.mark.parametrize("authorization", [
    "Basic YWxpY2U6c2VjcmV0",
    "Bearer",
    "Bearer ",
    "Token abc",
    b"Bearer \xff\xfe\xfd",  # not UTF-8
])
def test_malformed_authorization_is_401(envoy, authorization):
    response = call(envoy, "GET", "/api/v1/query", None, QUERY,
                    headers={"Authorization": authorization})
    assert_prometheus_error(response, 401, "unauthorized")
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_unknown_token_is_401_and_not_echoed(envoy):
    token = "no-such-token-0123456789abcdef"
    response = call(envoy, "GET", "/api/v1/query", token, QUERY)
    assert_prometheus_error(response, 401, "unauthorized", secret=token)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_bearer_scheme_is_case_insensitive(envoy, vm, tokens, scheme):
    response = call(envoy, "GET", "/api/v1/query", None, {"query": "up", "time": vm.seed_s},
                    headers={"Authorization": f"{scheme} {tokens['alice']}"})
    assert response.status_code == 200, response.text[:300]


def test_revoked_token_is_401(envoy, oidc):
    # A user of its own: revoking a user's tokens revokes them all.
    oidc.set_user("dave", {"client_id": "1999"})
    token = oidc.login("dave")
    oidc.revoke_tokens("dave")
    response = call(envoy, "GET", "/api/v1/query", token, QUERY)
    assert_prometheus_error(response, 401, "unauthorized", secret=token)


def test_user_without_tenant_claim_is_403(envoy, tokens):
    response = call(envoy, "GET", "/api/v1/query", tokens["carol"], QUERY)
    assert_prometheus_error(response, 403, "forbidden", secret=tokens["carol"])


@pytest.mark.parametrize("claim", ["", [], {"tenant": "1999"}, True, 19.99, None, ["1999", None]],
                         ids=["empty", "empty-list", "object", "bool", "float", "null", "bad-item"])
def test_unusable_tenant_claim_is_403(envoy, oidc, claim):
    sub = f"odd-claim-{abs(hash(repr(claim)))}"
    oidc.set_user(sub, {"client_id": claim})
    token = oidc.login(sub)
    response = call(envoy, "GET", "/api/v1/query", token, QUERY)
    assert_prometheus_error(response, 403, "forbidden", secret=token)


NOT_ALLOWED = [
    ("POST", "/api/v1/write"),
    ("POST", "/api/v1/import/prometheus"),
    ("GET", "/api/v1/export/native"),
    ("POST", "/api/v1/admin/tsdb/delete_series"),
    ("GET", "/api/v1/status/config"),
    ("GET", "/api/v1/status/active_queries"),
    ("GET", "/api/v1/targets"),
    ("GET", "/metrics"),
    ("GET", "/internal/force_flush"),
    ("GET", "/vmui"),
    ("GET", "/"),
    ("GET", "/api/v1/query_rangex"),
    ("GET", "/prometheus/api/v1/write"),
]


def test_paths_outside_the_allowlist_are_403_and_never_reach_the_backend(envoy, vm, tokens):
    before = vm.total_requests()
    for method, path in NOT_ALLOWED:
        response = call(envoy, method, path, tokens["alice"], {"match[]": "up"})
        assert_prometheus_error(response, 403, "forbidden")
    assert vm.total_requests() == before


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path,params", [
    ("/api/v1/query", {"query": "sum(rate(http_requests_total[5m]"}),
    ("/api/v1/query_range", {"query": "up{", "start": "1", "end": "2", "step": "1"}),
    ("/api/v1/series", {"match[]": "{job=}"}),
    ("/api/v1/labels", {"match[]": "1 +"}),
    # Prometheus ends a comment at a lone carriage return, VictoriaMetrics does not.
    ("/api/v1/query", {"query": "up # c\r/ http_requests_total"}),
])
def test_bad_query_is_400_bad_data(envoy, tokens, method, path, params):
    response = call(envoy, method, path, tokens["alice"], params)
    assert_prometheus_error(response, 400, "bad_data", secret=tokens["alice"])


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_405(envoy, tokens, method):
    response = call(envoy, method, "/api/v1/query", tokens["alice"], QUERY)
    assert response.status_code == 405, response.text[:300]
    assert response.json()["status"] == "error"


def test_buildinfo_by_post_is_405(envoy, tokens):
    response = call(envoy, "POST", "/api/v1/status/buildinfo", tokens["alice"], {})
    assert response.status_code == 405, response.text[:300]


@pytest.mark.parametrize("content_type,body", [
    ("application/json", b'{"query": "up"}'),
    ("multipart/form-data; boundary=x",
     b'--x\r\nContent-Disposition: form-data; name="query"\r\n\r\nup\r\n--x--\r\n'),
    ("text/plain", b"query=up"),
])
def test_body_of_another_content_type_is_415(envoy, tokens, content_type, body):
    response = send("POST", f"{envoy.url}/api/v1/query", data=body,
                    headers={"Content-Type": content_type, **bearer(tokens["alice"])})
    assert response.status_code == 415, response.text[:300]
    assert response.json()["status"] == "error"


def test_body_larger_than_max_body_bytes_is_413(envoy, tokens):
    # envoy/envoy.yaml sets max_body_bytes to 1 MiB.
    padding = "x" * (1024 * 1024 + 1)
    response = call(envoy, "POST", "/api/v1/query", tokens["alice"],
                    {"query": "up", "padding": padding})
    assert response.status_code == 413, response.text[:300]


@pytest.mark.parametrize("path", ["/api/v1%2Fquery", "/api/v1/query;x=1", "/api%2fv1/series"])
def test_non_canonical_path_is_400(envoy, tokens, path):
    response = call(envoy, "GET", path, tokens["alice"], QUERY)
    assert_prometheus_error(response, 400, "bad_data")


def test_client_supplied_extra_filters_and_labels_are_stripped(envoy_without_vm_label, vm, tokens):
    # Were `extra_filters[]` passed on, VictoriaMetrics would AND it in and alice's own
    # series would vanish; stripped, she sees them all.
    params = {"query": "http_requests_total", "time": vm.seed_s,
              "extra_filters[]": '{client_id="2000"}', "extra_label": "client_id=2000"}
    for method in ("GET", "POST"):
        response = call(envoy_without_vm_label, method, "/api/v1/query", tokens["alice"], params)
        assert response.status_code == 200, response.text[:300]
        tenants = [s["metric"]["client_id"] for s in response.json()["data"]["result"]]
        assert tenants == ["1999", "1999"], tenants


@pytest.mark.parametrize("path", ["/api/v1/label/client_id/values", "/api/v1/labels"])
def test_get_with_a_form_body_is_400(envoy_without_vm_label, vm, tokens, path):
    # Found by the request_decision fuzz target. VictoriaMetrics (Go's ParseForm) reads
    # no GET body, so a `match[]` there used to stop the filter from adding the tenant's
    # own selector, and these endpoints answered with every tenant's labels and values.
    response = send("GET", f"{envoy_without_vm_label.url}{path}",
                    params={"start": vm.start_s, "end": vm.seed_s + 60},
                    data=b"match[]=http_requests_total",
                    headers={"Content-Type": "application/x-www-form-urlencoded",
                             **bearer(tokens["alice"])})
    assert_prometheus_error(response, 400, "bad_data", secret=tokens["alice"])
