"""The compose stack without Docker: the same pieces as processes on 127.0.0.1.

docker-compose.yaml cannot run here (no Docker engine), so this runs what it would run:
VictoriaMetrics, oidc-provider-mock started with the compose file's own users, Envoy with
envoy/envoy.compose.yaml (service names mapped to 127.0.0.1 and free ports) loading the
built module, and deploy/simulator/simulator.py. Then, as Grafana would with
`oauthPassThru` and `httpMethod: POST`, it logs alice and bob in through the provider's
authorization-code flow and runs every query of the provisioned dashboard as each of
them: each must see data, and only their own tenant's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import requests
import yaml

from conftest import ROOT, envoy_binary, wasm_filters
from test_compose import compose, oidc_users

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class Processes:
    """Processes this test starts, each in its own session, all stopped at the end."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        self.running.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for _, proc in reversed(self.running):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in self.running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_for(what: str, check, procs: Processes, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, proc in procs.running:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited while waiting for {what}:\n{procs.log(name)[-3000:]}")
        try:
            result = check()
            if result:
                return result
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def login(idp: str, sub: str) -> str:
    """An access token for `sub` through the provider's authorization-code flow, the way
    the browser and Grafana's backend do it."""
    redirect_uri = "http://localhost:3000/login/generic_oauth"
    params = {"response_type": "code", "client_id": "grafana", "redirect_uri": redirect_uri,
              "scope": "openid profile email", "state": f"s-{sub}"}
    browser = requests.Session()
    assert browser.get(f"{idp}/oauth2/authorize", params=params, timeout=10).ok
    answer = browser.post(f"{idp}/oauth2/authorize", params=params, data={"sub": sub},
                          allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(answer.headers["Location"]).query)["code"][0]
    token = requests.post(f"{idp}/oauth2/token", timeout=10, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
        "client_id": "grafana", "client_secret": "grafana-secret"})
    token.raise_for_status()
    return token.json()["access_token"]


def local_envoy_config(wasm: Path, ports: dict[str, int]) -> str:
    """envoy/envoy.compose.yaml with the compose network replaced by 127.0.0.1."""
    config = yaml.safe_load((ROOT / "envoy/envoy.compose.yaml").read_text())
    config["admin"]["address"]["socket_address"] = {"address": LOOPBACK, "port_value": ports["admin"]}
    config["static_resources"]["listeners"][0]["address"]["socket_address"] = {
        "address": LOOPBACK, "port_value": ports["listen"]}
    for cluster in config["static_resources"]["clusters"]:
        service = {"oidc": "oidc", "backend": "victoriametrics"}[cluster["name"]]
        cluster["type"] = "STATIC"
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        address["socket_address"] = {"address": LOOPBACK, "port_value": ports[service]}
    wasm_filters(config)[0]["vm_config"]["code"]["local"]["filename"] = str(wasm)
    return yaml.safe_dump(config)


@pytest.fixture(scope="module")
def stack(wasm, tmp_path_factory):
    for tool in ("victoria-metrics",):
        if shutil.which(tool) is None:
            pytest.fail(f"`{tool}` is missing: run `make deploy-deps`")
    workdir = tmp_path_factory.mktemp("compose-smoke")
    procs = Processes(workdir)
    ports = {name: free_port() for name in ("victoriametrics", "oidc", "listen", "admin")}
    try:
        vm = f"http://{LOOPBACK}:{ports['victoriametrics']}"
        procs.start("victoria-metrics", [
            "victoria-metrics", f"-storageDataPath={workdir / 'vm'}",
            f"-httpListenAddr={LOOPBACK}:{ports['victoriametrics']}",
            "-search.latencyOffset=0s", "-retentionPeriod=1d"])
        # The provider with exactly the users the compose file provisions.
        argv = [str(Path(sys.executable).parent / "oidc-provider-mock"),
                "--host", LOOPBACK, "--port", str(ports["oidc"])]
        for claims in oidc_users(compose()).values():
            argv += ["--user-claims", json.dumps(claims)]
        procs.start("oidc", argv, env={"PYTHONUNBUFFERED": "1"})
        idp = f"http://{LOOPBACK}:{ports['oidc']}"
        config = workdir / "envoy.yaml"
        config.write_text(local_envoy_config(wasm, ports))
        procs.start("envoy", [envoy_binary(), "-c", str(config), "--concurrency", "2",
                              "--log-level", "warn"])
        simulator_env = compose()["services"]["simulator"]["environment"]
        procs.start("simulator", [sys.executable, str(ROOT / "deploy/simulator/simulator.py")],
                    env={"VM_URL": vm, "INTERVAL_S": "1", "TENANTS": simulator_env["TENANTS"]})
        wait_for("VictoriaMetrics", lambda: requests.get(f"{vm}/health", timeout=1).ok, procs)
        wait_for("the provider", lambda: requests.get(
            f"{idp}/.well-known/openid-configuration", timeout=1).ok, procs)
        admin = f"http://{LOOPBACK}:{ports['admin']}"
        wait_for("Envoy", lambda: requests.get(f"{admin}/ready", timeout=1).ok, procs)

        # rate() needs two samples per series: wait for a few rounds of both tenants.
        def both_tenants_twice():
            r = requests.get(f"{vm}/api/v1/query", timeout=2, params={
                "query": "min by (client_id) (count_over_time(http_requests_total[1m]))"})
            counts = {x["metric"]["client_id"]: float(x["value"][1]) for x in r.json()["data"]["result"]}
            return len(counts) == 2 and min(counts.values()) >= 3
        wait_for("the simulator's data", both_tenants_twice, procs, timeout_s=45)
        yield {"proxy": f"http://{LOOPBACK}:{ports['listen']}", "idp": idp, "admin": admin}
    finally:
        procs.stop_all()


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((ROOT / "deploy/grafana/dashboards/tenant-demo.json").read_text())
    return [(panel["title"], t["expr"].replace("$service", ".*"))
            for panel in dash["panels"] for t in panel["targets"]]


USERS = {"alice": "1999", "bob": "2000"}


@pytest.mark.parametrize("user", list(USERS))
def test_each_user_sees_only_their_tenant_on_the_dashboard(stack, user):
    token = login(stack["idp"], user)
    headers = {"Authorization": f"Bearer {token}"}
    for title, expr in dashboard_queries():
        # As Grafana's data source sends it: POST, form body, the user's token.
        r = requests.post(f"{stack['proxy']}/api/v1/query", data={"query": expr},
                          headers=headers, timeout=10)
        assert r.status_code == 200, f"{title}: {r.status_code} {r.text}"
        result = r.json()["data"]["result"]
        assert result, f"{user} sees no data in panel {title!r}: {expr}"
        if "client_id" in expr:
            assert {x["metric"]["client_id"] for x in result} == {USERS[user]}, title
    # Every series the user can list is theirs, and there are some.
    r = requests.post(f"{stack['proxy']}/api/v1/series", data={"match[]": '{__name__=~".+"}'},
                      headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    tenants = {s.get("client_id") for s in r.json()["data"]}
    assert tenants == {USERS[user]}
    # The dashboard's $service variable: label values, as Grafana asks for them.
    r = requests.get(f"{stack['proxy']}/api/v1/label/service/values",
                     params={"match[]": "http_requests_total"}, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    services = set(r.json()["data"])
    other = {"alice": {"billing", "search"}, "bob": {"checkout", "catalog"}}[user]
    assert services and not services & other


def test_without_a_token_grafana_gets_401(stack):
    r = requests.post(f"{stack['proxy']}/api/v1/query", data={"query": "up"}, timeout=10)
    assert r.status_code == 401
    assert r.json()["errorType"] == "unauthorized"
