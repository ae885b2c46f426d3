"""Rules and alerts per tenant, through the real filter, from the real rule engines.

Per backend, a rule engine of its own, evaluating `tests/e2e/rules/*.yml` over the
seeded series until every rule that can fire has fired:
- VictoriaMetrics with vmalert: the filter asks VictoriaMetrics, which proxies the rules
  API to vmalert (`-vmalert.proxyURL`), as Grafana's VictoriaMetrics data source does;
- Prometheus with its own rule engine.
These servers are apart from the session's: what the rules record (and their ALERTS
series) would change what the isolation suite expects to see.

alice sees exactly her rules and her alerts, bob exactly his; rules without a tenant
label, rules labelled for alice that read other tenants, and the 19999 trap's are
nobody's (docs/security.md, "Rules and alerts").
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
import seed
from adversary import backend_requests
from conftest import (BACKENDS, EnvoyFactory, assert_prometheus_error, call, filter_config,
                      launch, with_plugin)
from procs import free_port, wait_until
from services import AlertSink, Prometheus, VictoriaMetrics, VmAlert

RULES = tuple(sorted((Path(__file__).parent / "rules").glob("*.rules.yml")))
# Alerts the engines fire for these rules: 5 from shared rules, 2 per tenant, 2 from
# the one group with both tenants' rules, 1 from the prefix trap.
ALL_ALERTS = 10
USER_TENANT = {"alice": seed.ALICE_TENANT, "bob": seed.BOB_TENANT}
# (group, rule) of each tenant's own rules, as the rule files define them.
OWN_RULES = {
    tenant: {(group, name) for name in ("ServerErrors", "client:http_requests:last1h",
                                        "MemoryHuge")} | {("own-metrics", "OwnMetricSeen")}
    for tenant, group in ((seed.ALICE_TENANT, "alice"), (seed.BOB_TENANT, "bob"))
}
OWN_ALERTS = {"ServerErrors", "OwnMetricSeen"}
NOBODYS = ("AnyServerErrors", "job:http_requests:last1h", "AllTenantsRequests",
           "OtherTenantsErrors", "shared", "prefix-trap", "19999")


def firing(url: str) -> int:
    alerts = requests.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"] or []
    return sum(a["state"] == "firing" for a in alerts)


@pytest.fixture(scope="module")
def engines(workdir):
    """Both backends with their rule engines, every alert firing."""
    started = []
    sink = AlertSink()
    try:
        end_ms = int(time.time() * 1000)
        prom = Prometheus(workdir, seed.openmetrics(end_ms), RULES, label="prometheus-rules")
        started.append(prom)
        vmalert_port = free_port()
        vm = VictoriaMetrics(workdir, vmalert_url=f"http://127.0.0.1:{vmalert_port}",
                             label="vm-rules")
        started.append(vm)
        vm.import_prometheus(seed.exposition(end_ms))
        vm.force_flush()
        vmalert = VmAlert(workdir, vm.url, sink.url, RULES, port=vmalert_port)
        started.append(vmalert)
        for engine in (prom, vmalert):
            wait_until(lambda: firing(engine.url) == ALL_ALERTS,
                       f"{ALL_ALERTS} alerts firing at {engine.url}", timeout_s=60,
                       proc=engine.proc)
        yield {"prometheus": prom, "victoriametrics": vm}
    finally:
        for server in reversed(started):
            server.stop()
        sink.stop()


def rules_config(store, backend: str, oidc_port: int, wasm: Path,
                 mode: str = "stop_iteration", **plugin: object) -> dict:
    config = filter_config(store, oidc_port, wasm, mode=mode)
    if backend == "prometheus":
        plugin = {"backend": "prometheus", "victoriametrics_extra_label": False, **plugin}
    return with_plugin(config, **plugin) if plugin else config


@pytest.fixture(scope="module", params=BACKENDS)
def rules_proxy(request, workdir, engines, oidc, wasm, envoy_mode):
    """Envoy with the committed config in front of each backend's rules in turn, in the
    session's mode: the answer is filtered with and without
    `allow_on_headers_stop_iteration` (docs/request-lifecycle.md)."""
    store = engines[request.param]
    proxy = launch(workdir, f"envoy-rules-{request.param}-{envoy_mode}",
                   rules_config(store, request.param, oidc.port, wasm, envoy_mode))
    try:
        proxy.wait_ready()
        proxy.backend, proxy.store = request.param, store
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(params=sorted(USER_TENANT))
def user(request) -> str:
    return request.param


def data(response) -> dict:
    assert response.status_code == 200, (response.status_code, response.text[:500])
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def rules_of(answer: dict) -> set[tuple[str, str]]:
    return {(g["name"], r["name"]) for g in answer["groups"] for r in g["rules"]}


def test_the_engines_hold_every_tenants_rules(rules_proxy):
    # Self-check: asked directly, the engine shows every rule and alert, bob's and the
    # shared ones included, so what the filter hides below is really there.
    direct = requests.get(f"{rules_proxy.store.url}/api/v1/rules", timeout=5).json()["data"]
    names = {r["name"] for g in direct["groups"] for r in g["rules"]}
    assert {"AnyServerErrors", "AllTenantsRequests", "OtherTenantsErrors"} <= names
    assert len(rules_of(direct)) == 12
    alerts = [a for g in direct["groups"] for r in g["rules"] for a in r.get("alerts") or []]
    assert len(alerts) == ALL_ALERTS


def test_each_tenant_sees_exactly_its_rules(rules_proxy, tokens, user):
    tenant = USER_TENANT[user]
    answer = data(call(rules_proxy, "GET", "/api/v1/rules", tokens[user]))
    assert rules_of(answer) == OWN_RULES[tenant]
    for group in answer["groups"]:
        assert set(group) <= {"name", "file", "rules", "interval", "limit", "evaluationTime",
                              "lastEvaluation"}, group
        for rule in group["rules"]:
            assert rule["labels"][seed.TENANT_LABEL] == tenant
            assert f'client_id="{tenant}"' in rule["query"]
            for alert in rule.get("alerts", []):
                assert alert["labels"][seed.TENANT_LABEL] == tenant
                assert alert["state"] == "firing"
            if rule["type"] == "alerting":
                firing_rule = rule["name"] != "MemoryHuge"
                assert len(rule["alerts"]) == int(firing_rule), rule
                assert rule["state"] == ("firing" if firing_rule else "inactive")
    text = str(answer)
    for hidden in NOBODYS:
        assert hidden not in text, hidden


def test_each_tenant_sees_exactly_its_alerts(rules_proxy, tokens, user):
    tenant = USER_TENANT[user]
    alerts = data(call(rules_proxy, "GET", "/api/v1/alerts", tokens[user]))["alerts"]
    assert sorted(a["labels"]["alertname"] for a in alerts) == sorted(OWN_ALERTS)
    for alert in alerts:
        assert alert["labels"][seed.TENANT_LABEL] == tenant
        assert alert["state"] == "firing"
        assert set(alert) <= {"labels", "annotations", "state", "activeAt", "keepFiringSince",
                              "value"}, alert


def test_a_caller_with_two_tenants_sees_both(rules_proxy, oidc):
    oidc.set_user("ops-rules", {"client_id": [seed.ALICE_TENANT, int(seed.BOB_TENANT)]})
    answer = data(call(rules_proxy, "GET", "/api/v1/rules", oidc.login("ops-rules")))
    assert rules_of(answer) == OWN_RULES[seed.ALICE_TENANT] | OWN_RULES[seed.BOB_TENANT]
    assert "19999" not in str(answer)


def test_the_callers_parameters_narrow_and_never_widen(rules_proxy, tokens):
    token = tokens["alice"]

    def ask(params):
        return data(call(rules_proxy, "GET", "/api/v1/rules", token, params))

    assert rules_of(ask({"type": "record"})) == {("alice", "client:http_requests:last1h")}
    assert len(rules_of(ask({"type": "alert"}))) == 3
    assert rules_of(ask([("rule_name[]", "OwnMetricSeen"), ("rule_name[]", "AnyServerErrors")])) \
        == {("own-metrics", "OwnMetricSeen")}
    assert rules_of(ask([("rule_group[]", "bob"), ("rule_group[]", "shared"),
                         ("rule_group[]", "own-metrics")])) == {("own-metrics", "OwnMetricSeen")}
    tenants_file = next(g["file"] for g in ask({})["groups"] if g["name"] == "alice")
    assert rules_of(ask({"file[]": tenants_file})) == OWN_RULES[seed.ALICE_TENANT]
    excluded = ask({"exclude_alerts": "true"})
    assert all(r.get("alerts", []) == [] for g in excluded["groups"] for r in g["rules"])
    # A page of one group: the whole filtered answer, and no token for a next page.
    paged = ask({"group_limit": "1", "group_next_token": "x"})
    assert rules_of(paged) == OWN_RULES[seed.ALICE_TENANT] and "groupNextToken" not in paged
    # A match[] naming bob is ANDed with alice's own matcher. Prometheus 2.42 and
    # vmalert 1.79 ignore match[] on rules (Prometheus 3 would answer none): the answer
    # is alice's rules, filtered by the filter, never bob's.
    assert rules_of(ask({"match[]": '{client_id="2000"}'})) == OWN_RULES[seed.ALICE_TENANT]
    assert_prometheus_error(call(rules_proxy, "GET", "/api/v1/rules", token, {"type": "all"}),
                            400, "bad_data")
    assert_prometheus_error(call(rules_proxy, "POST", "/api/v1/rules", token, {}), 405,
                            "bad_data")


def test_compressed_answers_are_never_asked_for(rules_proxy, tokens):
    # Grafana asks for gzip; the filter takes the header off, so the engine answers
    # plain JSON it can read (and which the client gets uncompressed).
    response = call(rules_proxy, "GET", "/api/v1/rules", tokens["alice"],
                    headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in response.headers
    assert rules_of(data(response)) == OWN_RULES[seed.ALICE_TENANT]


def test_callers_without_a_tenant_are_refused_before_the_engine(rules_proxy, tokens):
    before = backend_requests(rules_proxy)
    for path in ("/api/v1/rules", "/api/v1/alerts"):
        assert_prometheus_error(call(rules_proxy, "GET", path, tokens["carol"]), 403, "forbidden")
        assert_prometheus_error(call(rules_proxy, "GET", path, None), 401, "unauthorized")
    assert backend_requests(rules_proxy) == before


def test_an_answer_over_max_response_bytes_is_refused(workdir, engines, oidc, wasm, tokens,
                                                      envoy_mode):
    for backend, store in engines.items():
        factory = EnvoyFactory(workdir, store, oidc, wasm, envoy_mode)
        try:
            proxy = factory.start(
                rules_config(store, backend, oidc.port, wasm, envoy_mode, max_response_bytes=1000),
                f"envoy-rules-small-{backend}").wait_ready()
            for path in ("/api/v1/rules", "/api/v1/alerts"):
                response = call(proxy, "GET", path, tokens["alice"])
                # 502 when the body is over the bound while the answer's headers are
                # held; the engines here send their headers ahead of a chunked body, so
                # the headers may have gone on (after their turn, docs/
                # request-lifecycle.md) with the engine's 200 before the body grew past
                # the bound. Either way the body is the error, and nothing of the rules.
                status = response.status_code if response.status_code in (200, 502) else 502
                body = assert_prometheus_error(response, status, "internal")
                assert "max_response_bytes (1000 bytes)" in body["error"]
                assert "ServerErrors" not in response.text
        finally:
            factory.stop()


def test_what_the_rules_record_is_confined_too(rules_proxy, tokens, user):
    # The rules' own output (recorded series, ALERTS) lands in the backend with each
    # tenant's label; queries see only the caller's.
    tenant = USER_TENANT[user]
    for query in ("client:http_requests:last1h", "ALERTS"):
        wait_until(lambda: data(call(rules_proxy, "GET", "/api/v1/query", tokens[user],
                                     {"query": query}))["result"],
                   f"{query} recorded", timeout_s=30)
        result = data(call(rules_proxy, "GET", "/api/v1/query", tokens[user],
                           {"query": query}))["result"]
        assert {s["metric"][seed.TENANT_LABEL] for s in result} == {tenant}, result


def test_an_answer_over_envoys_default_buffer_is_filtered_whole(workdir, oidc, wasm, tokens,
                                                               envoy_mode):
    # 3 MB of rules: past Envoy's default stream buffer of 1 MiB, within the filter's
    # max_response_bytes (8 MiB). The committed config's listener buffer holds it, so the
    # filter gets the whole answer and filters it (Envoy alone would answer 500).
    big = workdir / "big.rules.yml"
    big.write_text(
        "groups:\n- name: big\n  interval: 1s\n  rules:\n"
        f"  - alert: Big\n    expr: vector(1) > 0\n    labels: {{client_id: '{seed.BOB_TENANT}'}}\n"
        f"    annotations: {{summary: '{'x' * 1_500_000}'}}\n"
        f"  - alert: Small\n    expr: vector(1) > 0\n    labels: {{client_id: '{seed.ALICE_TENANT}'}}\n")
    prom = Prometheus(workdir, seed.openmetrics(int(time.time() * 1000)), (big,),
                      label="prometheus-big-rules")
    factory = EnvoyFactory(workdir, prom, oidc, wasm, envoy_mode)
    try:
        wait_until(lambda: firing(prom.url) == 2, "both big rules firing", proc=prom.proc)
        assert len(requests.get(f"{prom.url}/api/v1/rules", timeout=10).content) > 2_000_000
        proxy = factory.start(rules_config(prom, "prometheus", oidc.port, wasm, envoy_mode),
                              "envoy-big-rules").wait_ready()
        if envoy_mode == "istio":
            # Istio leaves the listener's buffer at Envoy's default 1 MiB (docs/
            # kubernetes.md): past it Envoy resets the answer the filter holds, whose
            # headers went on. The caller gets an error, and no part of the rules.
            try:
                response = call(proxy, "GET", "/api/v1/rules", tokens["alice"])
            except requests.exceptions.ChunkedEncodingError:
                return
            assert response.status_code >= 500 or response.text == "", response.text[:300]
            assert "Big" not in response.text
            return
        answer = data(call(proxy, "GET", "/api/v1/rules", tokens["alice"]))
        assert rules_of(answer) == {("big", "Small")}
        answer = data(call(proxy, "GET", "/api/v1/rules", tokens["bob"]))
        assert rules_of(answer) == {("big", "Big")}
    finally:
        factory.stop()
        prom.stop()
