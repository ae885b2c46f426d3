"""Fixtures of the end-to-end tests: real VictoriaMetrics, OIDC provider and Envoy.

Session-wide: one VictoriaMetrics seeded with both tenants' series, one OIDC provider
with the users, tokens from its authorization-code flow, and one Envoy running the built
filter with `envoy/envoy.yaml`. Tests that need another config (short cache, broken IdP,
bad plugin config) start their own Envoy through `envoy_factory`, stopped after the test.
Logs of every process are kept under the session's temporary directory.

Every Envoy runs in the session's `envoy_mode`, a parameter over the Envoy config
(envoy_config.py): `stop_iteration`, the gateway configs with
`allow_on_headers_stop_iteration: true`, and `istio`, the filter as Istio configures it.
So every test that talks to an Envoy runs in both; pytest groups them by mode.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))

import envoy_config  # noqa: E402
import seed  # noqa: E402
from procs import free_port, stop_all, wait_until  # noqa: E402
from services import Envoy, OidcProvider, VictoriaMetrics  # noqa: E402

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
        server.seed_s = end_ms // 1000
        server.start_s = server.seed_s - seed.POINTS * seed.STEP_S
        want = len(seed.ALL_SERIES)
        wait_until(lambda: len(server.series('{__name__=~".+"}', server.start_s,
                                             server.seed_s + 60)) == want,
                   f"{want} seeded series to be queryable", timeout_s=30, proc=server.proc)
        yield server
    finally:
        server.stop()


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
    config and its ports."""
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


@pytest.fixture(scope="session")
def envoy(workdir, vm, oidc, wasm, envoy_mode):
    """Envoy with the filter and the committed config, exactly as in envoy/envoy.yaml
    (or as Istio shapes it, in the `istio` mode)."""
    config = filter_config(vm, oidc.port, wasm, mode=envoy_mode)
    proxy = launch(workdir, f"envoy-main-{envoy_mode}", config)
    try:
        yield proxy.wait_ready()
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def envoy_without_vm_label(workdir, vm, oidc, wasm, envoy_mode):
    """The same, but without `extra_label` to VictoriaMetrics: the PromQL rewrite alone
    must isolate tenants (otherwise VictoriaMetrics' own enforcement hides a bug)."""
    config = filter_config(vm, oidc.port, wasm, mode=envoy_mode)
    plugin = envoy_config.plugin_config(config)
    plugin["victoriametrics_extra_label"] = False
    config = {**envoy_config.with_plugin_config(config, plugin), "_ports": config["_ports"]}
    proxy = launch(workdir, f"envoy-no-extra-label-{envoy_mode}", config)
    try:
        yield proxy.wait_ready()
    finally:
        proxy.stop()


@pytest.fixture(params=["with_vm_extra_label", "rewrite_only"])
def proxy(request, envoy_mode):
    """Both Envoys of the mode: with VictoriaMetrics' own `extra_label`, and without it.
    The second is the real proof for isolation and attacks: the PromQL rewrite alone must
    hold (otherwise VictoriaMetrics' own enforcement hides a bug)."""
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
