"""Fixtures of the end-to-end tests: real VictoriaMetrics, Prometheus, OIDC provider and
Envoy.

Session-wide: one VictoriaMetrics and one Prometheus seeded with both tenants' series,
one OIDC provider with the users, tokens from its authorization-code flow, and Envoys
running the built filter with `envoy/envoy.yaml`. Tests that need another config (short
cache, broken IdP, bad plugin config) start their own Envoy through `envoy_factory`,
stopped after the test. Logs of every process are kept under the session's temporary
directory.

The isolation and adversarial suites take the `backend` parameter ("victoriametrics",
"prometheus"): `store` is that backend's server and `proxy` (in those suites) an Envoy
in front of it. Prometheus ignores `extra_label`, so there only the rewrite-only Envoy
runs (`backend = "prometheus"` in the filter's config refuses `extra_label` anyway).

Every Envoy runs in the session's `envoy_mode`, a parameter over the Envoy config
(envoy_config.py): `stop_iteration`, the gateway configs with
`allow_on_headers_stop_iteration: true`, and `istio`, the filter as Istio configures it.
So every test that talks to an Envoy runs in both; pytest groups them by mode.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))

import envoy_config  # noqa: E402
import seed  # noqa: E402
from procs import free_port, stop_all, wait_until  # noqa: E402
from services import (  # noqa: E402
    Envoy, IdpRelay, OidcProvider, Prometheus, VictoriaMetrics, wasm_traps,
)

WASM = envoy_config.REPO / "target/wasm32-wasip1/release/promql_tenant_filter.wasm"
USERS = {
    "alice": {"client_id": seed.ALICE_TENANT},  # a string claim
    "bob": {"client_id": int(seed.BOB_TENANT)},  # an integer claim: its decimal text
    "carol": {"name": "Carol"},  # authenticated, but no tenant claim
}


def pytest_sessionfinish(session, exitstatus):
    stop_all()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("e2e")
    print(f"\ne2e logs and configs: {path}")
    return path


@pytest.fixture(scope="session")
def vm(workdir):
    """VictoriaMetrics with every series of seed.py written and queryable."""
    server = VictoriaMetrics(workdir)
    try:
        end_ms = int(time.time() * 1000)
        server.import_prometheus(seed.exposition(end_ms))
        server.force_flush()
        yield seeded(server, end_ms)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prom(workdir):
    """Prometheus started on blocks of every series of seed.py, queryable at once."""
    end_ms = int(time.time() * 1000)
    server = Prometheus(workdir, seed.openmetrics(end_ms))
    try:
        yield seeded(server, end_ms)
    finally:
        server.stop()


def seeded(server, end_ms: int):
    """`server` once it serves every seeded series, with the seed's window on it."""
    server.seed_s = end_ms // 1000
    server.start_s = server.seed_s - seed.POINTS * seed.STEP_S
    want = len(seed.ALL_SERIES)
    wait_until(lambda: len(server.series('{__name__=~".+"}', server.start_s,
                                         server.seed_s + 60)) == want,
               f"{want} seeded series to be queryable", timeout_s=30, proc=server.proc)
    return server


BACKENDS = ["victoriametrics", "prometheus"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """The server behind the filter, by its `backend` setting's name."""
    return request.param


@pytest.fixture
def store(request, backend):
    """The seeded server of `backend`: VictoriaMetrics or Prometheus."""
    return request.getfixturevalue("vm" if backend == "victoriametrics" else "prom")


@pytest.fixture(scope="session")
def oidc(workdir):
    provider = OidcProvider(workdir, USERS)
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="session")
def tokens(oidc) -> dict[str, str]:
    """One access token per user, each from the provider's authorization-code flow."""
    return {user: oidc.login(user) for user in USERS}


@pytest.fixture(scope="session")
def wasm() -> Path:
    if not WASM.is_file():
        pytest.fail(f"{WASM} is missing: `make e2e` builds it first (`make wasm`)")
    return WASM


@pytest.fixture(scope="session", params=envoy_config.MODES)
def envoy_mode(request) -> str:
    """How the Envoys of this part of the session run the filter (envoy_config.MODES)."""
    return request.param


def filter_config(vm, oidc_port: int, wasm_path: Path, template: str = "envoy.yaml",
                  mode: str = "stop_iteration", **extra: object) -> dict:
    """A committed template filled in for this session, as `mode` runs it; returns the
    config and its ports. `vm`: the backend server, VictoriaMetrics or Prometheus
    (anything with a `port`)."""
    listen, admin = free_port(), free_port()
    config = envoy_config.render_mode(
        mode, template,
        LISTEN_PORT=listen, ADMIN_PORT=admin, OIDC_PORT=oidc_port,
        BACKEND_PORT=vm.port, WASM_PATH=wasm_path, **extra,
    )
    config["_ports"] = (listen, admin)
    return config


def launch(workdir: Path, name: str, config: dict, concurrency: int = 2) -> Envoy:
    config = dict(config)
    listen, admin = config.pop("_ports")
    proxy = Envoy(workdir, name, config, admin_port=admin, listen_port=listen,
                  concurrency=concurrency)
    proxy.backend_cluster = envoy_config.backend_cluster(config)
    return proxy


class EnvoyFactory:
    """Starts Envoys for one test, in the session's mode, and stops them all afterwards."""

    def __init__(self, workdir, vm, oidc, wasm, mode: str):
        self.workdir, self.vm, self.oidc, self.wasm = workdir, vm, oidc, wasm
        self.mode = mode
        self.started: list[Envoy] = []
        self.count = 0

    def config(self, template: str = "envoy.yaml", oidc_port: int | None = None,
               **extra: object) -> dict:
        port = self.oidc.port if oidc_port is None else oidc_port
        return filter_config(self.vm, port, self.wasm, template, self.mode, **extra)

    def start(self, config: dict, name: str = "envoy", concurrency: int = 2) -> Envoy:
        self.count += 1
        proxy = launch(self.workdir, f"{name}-{self.count}-{time.monotonic_ns()}", config,
                       concurrency)
        self.started.append(proxy)
        return proxy

    def stop(self) -> None:
        for proxy in self.started:
            proxy.stop()


@pytest.fixture
def envoy_factory(workdir, vm, oidc, wasm, envoy_mode):
    factory = EnvoyFactory(workdir, vm, oidc, wasm, envoy_mode)
    try:
        yield factory
    finally:
        factory.stop()


@contextlib.contextmanager
def running(workdir: Path, name: str, config: dict):
    """An Envoy on `config`, ready, stopped on leaving."""
    proxy = launch(workdir, name, config)
    try:
        yield proxy.wait_ready()
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def envoy(workdir, vm, oidc, wasm, envoy_mode):
    """Envoy with the filter and the committed config, exactly as in envoy/envoy.yaml
    (or as Istio shapes it, in the `istio` mode)."""
    config = filter_config(vm, oidc.port, wasm, mode=envoy_mode)
    with running(workdir, f"envoy-main-{envoy_mode}", config) as proxy:
        yield proxy


def with_plugin(config: dict, **settings: object) -> dict:
    """A rendered config (with its ports) whose plugin configuration has `settings`."""
    plugin = envoy_config.plugin_config(config)
    plugin.update(settings)
    return {**envoy_config.with_plugin_config(config, plugin), "_ports": config["_ports"]}


def prometheus_config(prom, oidc_port: int, wasm_path: Path, mode: str = "stop_iteration",
                      **extra: object) -> dict:
    """The committed template in front of Prometheus: `backend` set, no `extra_label`."""
    return with_plugin(filter_config(prom, oidc_port, wasm_path, mode=mode, **extra),
                       backend="prometheus", victoriametrics_extra_label=False)


@pytest.fixture(scope="session")
def envoy_prometheus(workdir, prom, oidc, wasm, envoy_mode):
    """Envoy in front of Prometheus: the PromQL rewrite is the only line of defence."""
    config = prometheus_config(prom, oidc.port, wasm, mode=envoy_mode)
    with running(workdir, f"envoy-prometheus-{envoy_mode}", config) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def envoy_without_vm_label(workdir, vm, oidc, wasm, envoy_mode):
    """The same, but without `extra_label` to VictoriaMetrics: the PromQL rewrite alone
    must isolate tenants (otherwise VictoriaMetrics' own enforcement hides a bug)."""
    config = with_plugin(filter_config(vm, oidc.port, wasm, mode=envoy_mode),
                         victoriametrics_extra_label=False)
    with running(workdir, f"envoy-no-extra-label-{envoy_mode}", config) as proxy:
        yield proxy


@pytest.fixture(params=["with_vm_extra_label", "rewrite_only"])
def proxy(request, backend, envoy_mode):
    """An Envoy of the mode in front of `backend`. VictoriaMetrics runs twice: with its
    own `extra_label` and without it, the real proof that the PromQL rewrite alone
    holds. Prometheus ignores `extra_label`, so for it only the rewrite-only run exists."""
    if backend == "prometheus":
        if request.param == "with_vm_extra_label":
            pytest.skip("Prometheus ignores extra_label: its rewrite-only run is the one")
        return request.getfixturevalue("envoy_prometheus")
    name = "envoy" if request.param == "with_vm_extra_label" else "envoy_without_vm_label"
    return request.getfixturevalue(name)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Every answer here takes milliseconds; a request that hangs (a filter that paused and
# never resumed) must fail fast instead of stalling the suite.
REQUEST_TIMEOUT_S = 5


def send(method: str, url: str, **kwargs) -> requests.Response:
    """requests.request with the suite's timeout, and a plain failure when it hangs."""
    try:
        return requests.request(method, url, timeout=REQUEST_TIMEOUT_S, **kwargs)
    except requests.Timeout:
        pass  # failed outside the handler, so that the report is one line, not a chain
    pytest.fail(f"{method} {url.split('?')[0]}: no answer within {REQUEST_TIMEOUT_S}s "
                "(a filter that paused the request and never resumed it?)", pytrace=False)


def call(proxy: Envoy, method: str, path: str, token: str | None = None,
         params: dict | list | None = None, headers: dict | None = None,
         **kwargs) -> requests.Response:
    """One request through Envoy; POST carries `params` as a form body, like Grafana."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers.update(bearer(token))
    url = proxy.url + path
    if method == "POST":
        return send("POST", url, data=params, headers=all_headers, **kwargs)
    return send(method, url, params=params, headers=all_headers, **kwargs)


def assert_prometheus_error(response: requests.Response, status: int, error_type: str,
                            secret: str | None = None) -> dict:
    """A refusal in Prometheus' JSON error shape that never echoes the token."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers.get("content-type", "").startswith("application/json"), \
        response.headers
    body = response.json()
    assert body.get("status") == "error", body
    assert body.get("errorType") == error_type, body
    assert isinstance(body.get("error"), str) and body["error"], body
    if secret:
        assert secret not in response.text
    return body


# ---------------------------------------------------------------------------- liveness and traps
# Issue #10, part 3: after a hostile request the gateway still serves every tenant on
# every worker, and no Envoy log of the whole run shows a Wasm trap.

# Fresh connections land on either worker: enough of them reach both.
LIVENESS_REQUESTS = 40


def _connections_by_worker(proxy: Envoy) -> list[int]:
    counters = proxy.counters()
    return [counters[name] for name in sorted(counters)
            if ".worker_" in name and name.endswith(".downstream_cx_total")]


def assert_alive_on_every_worker(proxy: Envoy, token: str, vm) -> None:
    """A normal query from another tenant (bob) succeeds on every worker of `proxy`.

    Each request goes on a connection of its own; the listener's per-worker connection
    counters tell which worker took it. At most LIVENESS_REQUESTS requests."""
    served: set[int] = set()
    for _ in range(LIVENESS_REQUESTS):
        before = _connections_by_worker(proxy)
        r = call(proxy, "GET", "/api/v1/query", token,
                 {"query": '{__name__=~".+"}', "time": vm.seed_s})
        workers = [i for i, (b, a) in enumerate(zip(before, _connections_by_worker(proxy)))
                   if a != b]
        assert r.status_code == 200, (proxy.name, workers, r.status_code, r.text[:300])
        result = r.json()["data"]["result"]
        assert result and {s["metric"].get(seed.TENANT_LABEL) for s in result} == \
            {seed.BOB_TENANT}, (proxy.name, r.text[:300])
        served.update(workers)
        if len(served) >= proxy.concurrency:
            return
    pytest.fail(f"{proxy.name}: {LIVENESS_REQUESTS} requests reached only workers "
                f"{sorted(served)} of {proxy.concurrency}", pytrace=False)


@pytest.fixture(autouse=True)
def alive_after_hostile_tests(request):
    """After each test of the adversarial and hostile suites: every Envoy the test used
    still serves bob on every worker (an identity stand-in is first set back to relaying
    the real provider)."""
    hostile = request.module.__name__.startswith(("test_adversarial_", "test_hostile_"))
    if hostile:
        tokens, vm = request.getfixturevalue("tokens"), request.getfixturevalue("vm")
    yield
    if not hostile:
        return
    used = []
    for value in request.node.funcargs.values():
        used += value.values() if isinstance(value, dict) else [value]
    for relay in (v for v in used if isinstance(v, IdpRelay)):
        relay.answer, relay.fail_status, relay.delay_s = None, None, 0.0
    for proxy in (v for v in used if isinstance(v, Envoy) and v.proc.running()):
        assert_alive_on_every_worker(proxy, tokens["bob"], vm)


@pytest.fixture(autouse=True)
def no_wasm_trap_in_any_envoy_log():
    """After each test: no Envoy started so far has logged a Wasm trap since the last
    check, except those marked `expect_traps` (a test that traps on purpose)."""
    yield
    found = []
    for proxy in Envoy.started:
        if proxy.expect_traps:
            continue
        # The file itself: Envoy writes it, and a stopped Proc has closed its handle.
        traps = wasm_traps(proxy.proc.log_path.read_text(errors="replace"))
        seen = getattr(proxy, "_traps_seen", 0)
        proxy._traps_seen = len(traps)
        found += [f"{proxy.name}: {line}" for line in traps[seen:]]
    assert not found, "Wasm trap in Envoy's log:\n" + "\n".join(found[:20])


def assert_envoys_own_answer(response: requests.Response, status: int, error_type: str,
                             envoy_mode: str, secret: str | None = None) -> dict | None:
    """Envoy's own answer, neither the filter's nor the backend's: in Prometheus' shape
    where the committed configs map it (`local_reply_config`), plain text in the `istio`
    mode, since Istio generates no such mapping. Returns the JSON body, or None there."""
    if envoy_mode != "istio":
        return assert_prometheus_error(response, status, error_type, secret)
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert "x-envoy-upstream-service-time" not in response.headers, response.headers
    assert not response.headers.get("content-type", "").startswith("application/json")
    if secret:
        assert secret not in response.text
    return None
