"""Tenant-scoped writes with real clients: envoy/envoy.writes.yaml in front of its own
VictoriaMetrics.

vmagent and Prometheus scrape a customer's exporter (`ScrapeTarget`) and push what they
scraped through Envoy with a machine's JWT (alice's or bob's), verified by jwt_authn;
each tenant then reads back, with its user's token through the read route, exactly its
own series, those whose exporter wrote the other tenant's `client_id` included. The
JWTs are signed by a key the test makes (tests/e2e/jwt_keys.py): the OIDC provider here
issues no client-credentials tokens, which is what an IdP such as Auth0 gives machines.

Writes go to a VictoriaMetrics of their own, so that the seeded one of the other suites
keeps exactly its series. It runs with `-maxLabelsPerTimeseries` raised, as docs/writes.md
requires of VictoriaMetrics before v1.108; a second one with the default shows why.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import envoy_config
import jwt_keys
import pytest
import requests
import seed
from conftest import EnvoyFactory, assert_prometheus_error, bearer, call, send, with_plugin
from procs import wait_until
from services import PrometheusAgent, ScrapeTarget, VictoriaMetrics, VmAgent

ALICE, BOB = seed.ALICE_TENANT, seed.BOB_TENANT
TENANT_OF = {"alice": ALICE, "bob": BOB}
OTHER = {"alice": BOB, "bob": ALICE}
# Above what one request can carry (docs/writes.md): VictoriaMetrics 1.79 then never drops
# the `extra_label` it appends after a series' own labels.
LABEL_LIMIT_FLAG = "-maxLabelsPerTimeseries=100000000"
WRITE_PATHS = [
    "/api/v1/write", "/api/v1/import", "/api/v1/import/prometheus", "/api/v1/import/csv",
    "/prometheus/api/v1/write", "/prometheus/api/v1/import",
    "/prometheus/api/v1/import/prometheus", "/prometheus/api/v1/import/csv", "/influx/write",
]
# Ingestion endpoints VictoriaMetrics serves that `writes` never allows.
OTHER_INGESTION = ["/api/v1/import/native", "/influx/api/v2/write", "/write", "/api/v2/write",
                   "/datadog/api/v1/series", "/prometheus/influx/write"]
WAIT_S = 30


@pytest.fixture(scope="module")
def signing_key():
    return jwt_keys.SigningKey("e2e-writes")


@pytest.fixture(scope="module")
def machine_tokens(signing_key) -> dict[str, str]:
    """The machines' client-credentials tokens: alice's agent writes 1999, bob's 2000."""
    return {"alice": signing_key.token({"sub": "alice-agent", "client_id": ALICE}, 3600),
            "bob": signing_key.token({"sub": "bob-agent", "client_id": int(BOB)}, 3600)}


def _start_writes_envoy(request, workdir, backend_vm, oidc, wasm, signing_key, name):
    jwks = workdir / f"{name}-jwks.json"
    jwks.write_text(signing_key.jwks())
    # envoy.writes.yaml as committed: the Istio shape is checked on the userinfo route
    # (test_user_tokens_write_through_userinfo_in_both_envoy_modes).
    factory = EnvoyFactory(workdir, backend_vm, oidc, wasm, "stop_iteration")
    request.addfinalizer(factory.stop)
    config = factory.config("envoy.writes.yaml", JWT_ISSUER=jwt_keys.ISSUER, JWKS_PATH=jwks)
    return factory.start(config, name).wait_ready()


@pytest.fixture(scope="module")
def writes_vm(workdir):
    server = VictoriaMetrics(workdir, label="vm-writes", flags=(LABEL_LIMIT_FLAG,))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def writes_proxy(request, workdir, writes_vm, oidc, wasm, signing_key):
    return _start_writes_envoy(request, workdir, writes_vm, oidc, wasm, signing_key,
                               "envoy-writes")


def stored(store: VictoriaMetrics, metric: str) -> list[dict]:
    """The series of `metric` as VictoriaMetrics holds them, asked directly (the Influx
    line protocol's too, which VictoriaMetrics names `<measurement>_<field>`)."""
    store.force_flush()
    now = int(time.time())
    return store.series(f'{{__name__=~"{metric}(_v)?"}}', now - 86400, now + 60)


def wait_stored(store: VictoriaMetrics, metric: str, count: int) -> list[dict]:
    wait_until(lambda: len(stored(store, metric)) >= count,
               f"{count} series of {metric} in VictoriaMetrics", timeout_s=WAIT_S)
    return stored(store, metric)


def read_back(proxy, token: str, metric: str) -> list[dict]:
    """What the tenant of `token` (a user's, checked at /userinfo) reads of `metric`."""
    now = int(time.time())
    r = call(proxy, "GET", "/api/v1/series", token,
             {"match[]": f'{{__name__=~"{metric}"}}', "start": now - 86400, "end": now + 60})
    assert r.status_code == 200, r.text[:300]
    return r.json()["data"]


def exporter_text(metric: str, writer: str, who: str) -> str:
    """An exporter page: one plain series, one that claims the other tenant's label."""
    return (f'{metric}{{writer="{writer}",who="{who}"}} 1\n'
            f'{metric}{{writer="{writer}",who="{who}",spoof="yes",client_id="{OTHER[who]}"}} 2\n')


def test_vmagent_and_prometheus_push_each_tenant_into_its_own(
        workdir, writes_vm, writes_proxy, machine_tokens, tokens):
    metric = f"e2e_pushed_{time.monotonic_ns()}"
    started = []
    try:
        for who in ("alice", "bob"):
            # bob's vmagent uses the /prometheus form of the endpoint.
            prefix = "/prometheus" if who == "bob" else ""
            for writer, client in (("vmagent", VmAgent), ("prometheus", PrometheusAgent)):
                target = ScrapeTarget(exporter_text(metric, writer, who))
                started.append(target)
                started.append(client(workdir, f"{writer}-{who}-{metric}", target,
                                      f"{writes_proxy.url}{prefix}/api/v1/write",
                                      machine_tokens[who]))
        series = wait_stored(writes_vm, metric, 8)
    finally:
        for thing in reversed(started):
            thing.stop()
    assert len(series) == 8, series
    for s in series:
        # Whatever the exporter wrote, the writer's tenant is what VictoriaMetrics stored.
        assert s["client_id"] == TENANT_OF[s["who"]], s
    for who in ("alice", "bob"):
        got = read_back(writes_proxy, tokens[who], metric)
        assert sorted((s["writer"], s["who"], s.get("spoof", ""), s["client_id"]) for s in got) == [
            (writer, who, spoof, TENANT_OF[who])
            for writer in ("prometheus", "vmagent") for spoof in ("", "yes")], got
    assert writes_proxy.filter_counter("writes_allowed") > 0
    assert writes_proxy.filter_counter("write_bytes") > 0


def refused_push(workdir, writes_vm, writes_proxy, client: str, case: str, token: str,
                 expected: list[str]) -> None:
    """`client` scrapes and pushes with `token` until its own log holds every line of
    `expected`; nothing of it reaches VictoriaMetrics."""
    metric = f"e2e_{case}_{client}_{time.monotonic_ns()}"
    target = ScrapeTarget(exporter_text(metric, client, "alice"))
    agent = (VmAgent if client == "vmagent" else PrometheusAgent)(
        workdir, f"{client}-{case}-{metric}", target, f"{writes_proxy.url}/api/v1/write", token)
    try:
        wait_until(lambda: all(word in agent.proc.log() for word in expected),
                   f"{client}'s log to say why its writes are refused: {expected}",
                   timeout_s=WAIT_S, proc=agent.proc)
    finally:
        agent.stop()
        target.stop()
    assert stored(writes_vm, metric) == []


@pytest.mark.parametrize("client", ["vmagent", "prometheus"])
def test_a_refused_write_is_clear_in_the_clients_log(workdir, writes_vm, writes_proxy,
                                                     signing_key, client):
    # An operator's token with both tenants and no write tenant claim.
    token = signing_key.token({"sub": "ops-agent", "client_id": [ALICE, BOB]}, 3600)
    denied_before = writes_proxy.filter_counter("writes_denied") or 0
    if client == "vmagent":
        # vmagent retries every block it could not send, saying why each time.
        expected = ["unexpected status code", ": 403;", "forbidden", "several tenants"]
    else:
        # Prometheus drops a batch a 4xx refuses, at level error.
        expected = ["non-recoverable error", "403 Forbidden", "forbidden", "several tenants"]
    refused_push(workdir, writes_vm, writes_proxy, client, "refused", token, expected)
    assert writes_proxy.filter_counter("writes_denied") > denied_before


@pytest.mark.parametrize("client", ["vmagent", "prometheus"])
def test_a_token_jwt_authn_refuses_is_clear_in_the_clients_log(
        workdir, writes_vm, writes_proxy, signing_key, client):
    expired = signing_key.token({"sub": "alice-agent", "client_id": ALICE}, lifetime_s=-120)
    # jwt_authn's refusal, in Prometheus' shape by the listener's local_reply_config.
    status = ": 401;" if client == "vmagent" else "401 Unauthorized"
    refused_push(workdir, writes_vm, writes_proxy, client, "expired", expired,
                 [status, "unauthorized", "the token was refused: Jwt is expired"])


def _bodies(metric: str, spoof: str, now_ms: int) -> dict[str, tuple[bytes, dict]]:
    """One body per ingestion format, each naming the tenant `spoof`; the endpoint's
    query string tries `extra_label` too."""
    line = {"metric": {"__name__": metric, "fmt": "json", "client_id": spoof},
            "values": [1], "timestamps": [now_ms]}
    return {
        "/api/v1/import": (json.dumps(line).encode(), {}),
        "/api/v1/import/prometheus": (
            f'{metric}{{fmt="text",client_id="{spoof}"}} 1 {now_ms}\n'.encode(), {}),
        "/api/v1/import/csv": (f"csv,{spoof},1,{now_ms}\n".encode(), {
            "format": f"1:label:fmt,2:label:client_id,3:metric:{metric},4:time:unix_ms"}),
        "/influx/write": (f"{metric},fmt=influx,client_id={spoof} v=1 {now_ms}\n".encode(),
                          {"precision": "ms"}),
    }


@pytest.mark.parametrize("prefix", ["", "/prometheus"])
def test_every_import_format_gets_the_writers_tenant(writes_vm, writes_proxy, machine_tokens, prefix):
    metric = f"e2e_import_{time.monotonic_ns()}"
    now_ms = int(time.time() * 1000)
    bodies = _bodies(metric, BOB, now_ms)
    for path, (body, params) in bodies.items():
        if prefix and path == "/influx/write":
            continue  # VictoriaMetrics serves it without the prefix only
        attempt = [("extra_label", f"client_id={BOB}"), ("extra_filters[]", "{x=\"y\"}"),
                   *params.items()]
        r = send("POST", writes_proxy.url + prefix + path, data=body, params=attempt,
                 headers=bearer(machine_tokens["alice"]))
        assert r.status_code == 204, (path, r.status_code, r.text[:300])
    # Compressed bodies stream through as they are; VictoriaMetrics inflates them.
    zipped = json.dumps({"metric": {"__name__": metric, "fmt": "gzip", "client_id": BOB},
                         "values": [1], "timestamps": [now_ms]}).encode()
    r = send("POST", f"{writes_proxy.url}{prefix}/api/v1/import", data=gzip.compress(zipped),
             headers={**bearer(machine_tokens["alice"]), "Content-Encoding": "gzip"})
    assert r.status_code == 204, r.text[:300]
    want = len(bodies) + 1 - (1 if prefix else 0)
    series = wait_stored(writes_vm, metric, want)
    assert sorted(s["fmt"] for s in series) == sorted(
        ["json", "text", "csv", "gzip"] + ([] if prefix else ["influx"]))
    assert {s["client_id"] for s in series} == {ALICE}, series


def test_a_write_larger_than_any_buffer_streams_through(writes_vm, writes_proxy, machine_tokens):
    """16 MB: past max_body_bytes (1 MiB) and Envoy's 8 MiB stream buffer, either of which
    would refuse the write had anything held the body."""
    metric = f"e2e_big_{time.monotonic_ns()}"
    now_ms = int(time.time() * 1000)
    samples = 20_000
    timestamps = [now_ms - 1000 * i for i in range(samples)]
    lines = [json.dumps({"metric": {"__name__": metric, "n": str(n), "client_id": BOB},
                         "values": [1] * samples, "timestamps": timestamps})
             for n in range(50)]
    body = ("\n".join(lines) + "\n").encode()
    assert len(body) > 16 * 1024 * 1024
    bytes_before = writes_proxy.filter_counter("write_bytes") or 0

    def vm_memory() -> int:
        # The filter reports its VMs' linear memory once a second (a Wasm heap only grows).
        time.sleep(2.5)
        return writes_proxy.filter_counter("wasm_memory_bytes") or 0

    memory_before = vm_memory()
    r = requests.post(f"{writes_proxy.url}/api/v1/import", data=body,
                      headers=bearer(machine_tokens["alice"]), timeout=120)
    assert r.status_code == 204, r.text[:300]
    # Had the filter held the body, its VM's heap would have grown by 16 MB.
    assert vm_memory() - memory_before < 2 * 1024 * 1024
    writes_vm.force_flush()
    r = requests.get(f"{writes_vm.url}/api/v1/query", timeout=30, params={
        "query": f'sum(count_over_time({metric}{{client_id="{ALICE}"}}[1d]))',
        "time": now_ms // 1000 + 60})
    assert r.json()["data"]["result"][0]["value"][1] == str(50 * samples), r.text[:300]
    assert writes_proxy.filter_counter("write_bytes") - bytes_before >= len(body)


def test_several_tenants_write_only_where_the_write_claim_says(writes_vm, writes_proxy, signing_key):
    metric = f"e2e_claim_{time.monotonic_ns()}"
    now_ms = int(time.time() * 1000)

    def push(claims: dict, n: int):
        token = signing_key.token({"sub": "ops-agent", "client_id": [ALICE, int(BOB)], **claims})
        line = f'{metric}{{n="{n}",client_id="{ALICE}"}} 1 {now_ms}\n'
        return send("POST", f"{writes_proxy.url}/api/v1/import/prometheus", data=line.encode(),
                    headers=bearer(token))

    assert push({"write_client_id": BOB}, 1).status_code == 204
    body = assert_prometheus_error(push({}, 2), 403, "forbidden")
    assert "several tenants" in body["error"]
    body = assert_prometheus_error(push({"write_client_id": "3000"}, 3), 403, "forbidden")
    assert "does not have" in body["error"]
    series = wait_stored(writes_vm, metric, 1)
    assert [(s["n"], s["client_id"]) for s in series] == [("1", BOB)]


def test_user_tokens_and_other_spellings_do_not_write(writes_vm, writes_proxy, tokens):
    metric = f"e2e_user_{time.monotonic_ns()}"
    line = f'{metric}{{client_id="{ALICE}"}} 1\n'.encode()
    # A user's token is not a JWT jwt_authn accepts: refused in Prometheus' shape.
    r = send("POST", f"{writes_proxy.url}/api/v1/import/prometheus", data=line,
             headers=bearer(tokens["alice"]))
    body = assert_prometheus_error(r, 401, "unauthorized", secret=tokens["alice"])
    assert "the token was refused" in body["error"]
    # Spellings the write route does not take go to the read route, which denies writes.
    for path in ["/api/v1/%69mport/prometheus", "/api/v1/import/prometheus/",
                 "/api/v1/import/./prometheus"]:
        r = send("POST", writes_proxy.url + path, data=line, headers=bearer(tokens["alice"]))
        assert r.status_code in (401, 403, 404), (path, r.status_code, r.text[:200])
    assert stored(writes_vm, metric) == []


def test_default_config_refuses_every_write_path(envoy, vm, tokens):
    """envoy/envoy.yaml, writes unset: every ingestion endpoint is 403 and nothing of it
    reaches VictoriaMetrics."""
    denied_before = envoy.filter_counter("writes_denied") or 0
    served_before = vm.total_requests()
    line = f'e2e_denied{{client_id="{ALICE}"}} 1\n'.encode()
    for path in WRITE_PATHS + OTHER_INGESTION:
        for method in ("POST", "PUT", "GET"):
            r = send(method, envoy.url + path, data=None if method == "GET" else line,
                     headers=bearer(tokens["alice"]))
            body = assert_prometheus_error(r, 403, "forbidden", secret=tokens["alice"])
            if path in WRITE_PATHS:
                assert "writes are not enabled" in body["error"], body
    assert vm.total_requests() == served_before
    denied = envoy.filter_counter("writes_denied") - denied_before
    assert denied == len(WRITE_PATHS + OTHER_INGESTION) * 3


def test_without_the_label_limit_flag_vm_1_79_loses_the_tenant(
        request, workdir, writes_vm, writes_proxy, oidc, wasm, signing_key, machine_tokens):
    """Why docs/writes.md asks for `-maxLabelsPerTimeseries` (or v1.108+): VictoriaMetrics
    1.79 keeps the first 30 labels of a series and appends `extra_label` last. With the
    flag (the module's `writes_vm`) the tenant holds; with the default it is lost. If this
    ever fails because the default VictoriaMetrics refuses such a series, update the doc."""
    metric = f"e2e_many_labels_{time.monotonic_ns()}"
    labels = {f"l{i:02d}": "x" for i in range(28)}
    line = json.dumps({"metric": {"__name__": metric, **labels, "client_id": BOB},
                       "values": [1], "timestamps": [int(time.time() * 1000)]}).encode()
    default_vm = VictoriaMetrics(workdir, label="vm-writes-default-limit")
    request.addfinalizer(default_vm.stop)
    default_proxy = _start_writes_envoy(request, workdir, default_vm, oidc, wasm, signing_key,
                                        "envoy-writes-default-limit")
    for target in (writes_proxy, default_proxy):
        r = send("POST", f"{target.url}/api/v1/import", data=line,
                 headers=bearer(machine_tokens["alice"]))
        assert r.status_code == 204, r.text[:300]
    assert [s["client_id"] for s in wait_stored(writes_vm, metric, 1)] == [ALICE]
    assert [s["client_id"] for s in wait_stored(default_vm, metric, 1)] == [BOB]


def test_the_writes_config_keeps_reads_on_userinfo(writes_proxy, tokens, machine_tokens):
    """The read route of envoy.writes.yaml is the userinfo filter: a user's token reads, a
    machine's JWT (which /userinfo does not know) does not."""
    assert call(writes_proxy, "GET", "/api/v1/labels", tokens["alice"]).status_code == 200
    r = call(writes_proxy, "GET", "/api/v1/labels", machine_tokens["alice"])
    assert r.status_code == 401, r.text[:200]
    plugin = envoy_config.plugin_config(proxy_config_of(writes_proxy))
    assert plugin.get("writes", "deny") == "deny"


def proxy_config_of(proxy) -> dict:
    return json.loads((proxy.proc.argv[2] and open(proxy.proc.argv[2]).read()))


def test_prometheus_as_a_receiver_ignores_extra_label(workdir):
    """Why `writes` is refused with `backend: prometheus`: Prometheus 2.42's remote-write
    receiver stores what the client sent, whatever `extra_label` the URL carries."""
    metric = f"e2e_receiver_{time.monotonic_ns()}"
    receiver = PrometheusAgent(workdir, f"prometheus-receiver-{metric}", None, None,
                               flags=("--web.enable-remote-write-receiver",))
    target = ScrapeTarget(f'{metric}{{client_id="{BOB}"}} 1\n')
    sender = PrometheusAgent(workdir, f"prometheus-sender-{metric}", target,
                             f"{receiver.url}/api/v1/write?extra_label=client_id%3D{ALICE}")
    try:
        def labels():
            r = requests.get(f"{receiver.url}/api/v1/series", timeout=5,
                             params={"match[]": metric})
            return r.json()["data"]
        wait_until(lambda: labels(), f"{metric} at the receiver", timeout_s=WAIT_S,
                   proc=receiver.proc)
        assert [s["client_id"] for s in labels()] == [BOB]
    finally:
        sender.stop()
        target.stop()
        receiver.stop()


def test_user_tokens_write_through_userinfo_in_both_envoy_modes(
        request, workdir, writes_vm, oidc, wasm, tokens, envoy_mode):
    """A user's token (checked at /userinfo) may write too, with `writes` on in the
    userinfo filter: the headers wait for the lookup, and the body that arrived with them
    goes on whole once it is known, whether Envoy hands it to the filter meanwhile or not."""
    factory = EnvoyFactory(workdir, writes_vm, oidc, wasm, envoy_mode)
    request.addfinalizer(factory.stop)
    config = with_plugin(factory.config(), writes="victoriametrics")
    proxy = factory.start(config, "envoy-userinfo-writes").wait_ready()
    metric = f"e2e_userinfo_write_{time.monotonic_ns()}"
    now_ms = int(time.time() * 1000)
    body = "".join(f'{metric}{{n="{n}",client_id="{BOB}"}} 1 {now_ms}\n' for n in range(2000))
    for who in ("alice", "bob"):
        r = send("POST", f"{proxy.url}/api/v1/import/prometheus?extra_label=client_id%3D0",
                 data=body.replace('n="', f'who="{who}",n="').encode(),
                 headers=bearer(tokens[who]))
        assert r.status_code == 204, r.text[:300]
    series = wait_stored(writes_vm, metric, 4000)
    assert {(s["who"], s["client_id"]) for s in series} == {("alice", ALICE), ("bob", BOB)}
    # carol has no tenant claim: 403, nothing written.
    r = send("POST", f"{proxy.url}/api/v1/import/prometheus", data=body.encode(),
             headers=bearer(tokens["carol"]))
    assert_prometheus_error(r, 403, "forbidden", secret=tokens["carol"])
    assert len(stored(writes_vm, metric)) == 4000
