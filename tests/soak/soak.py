"""The load-and-faults soak: `make soak SOAK_SECONDS=N` (default 120; not part of `make test`).

It owns one end-to-end run of the real stack under a Grafana-like load, with the identity
provider and VictoriaMetrics restarted in the middle, and the verdict on it. Everything
real, on 127.0.0.1: Envoy from the venv's wheel with the built module and the committed
`envoy/envoy.yaml` (only `cache_ttl_s` is shortened, see CACHE_TTL_S), VictoriaMetrics
(`/usr/bin/victoria-metrics`) and `oidc-provider-mock`, started through
`tests/e2e/services.py`, seeded with `tests/e2e/seed.py`.

    make soak SOAK_SECONDS=300
    .venv/bin/python tests/soak/soak.py --seconds 120     # once `make wasm` has run

Timeline, as fractions of N:
- 0 .. 0.15: warm-up; Envoy's memory baseline is taken at its end;
- 0.30: fresh tokens are minted and one of them cached, then the OIDC provider is stopped
  for IDP_OUTAGE_S seconds (longer than the cache TTL) and started again on the same
  port (it forgets every token);
- 0.60: VictoriaMetrics is stopped for VM_OUTAGE_S seconds and started again on the same
  port and data directory (the seeded series must still be there);
- N: the loops stop, the checks run, a summary table is printed, and the exit status is
  0 only if every check passed.

The workload: LOOPS_PER_USER bounded loops each for alice (tenant 1999) and bob (2000),
each sending, in turn, instant and range queries, series, labels and label values, by GET
and by POST form body, among them queries that reach for the other tenant. Each answer
is classified: `ok` (200 with exactly the caller's expected data), `leak` (a 200 carrying
anything that is not the caller's: the hard failure), `wrong` (own data, but not all of
it), `unavailable` (503 in Prometheus' JSON shape), `unauthorized` (401, same shape),
`other_error`, `no_answer`. A loop that gets 401 logs in again through the provider's
authorization-code flow, as Grafana would make its user do.

Logs, the rendered Envoy config and `summary.json` stay in the printed work directory.
Every process started is stopped at the end, pass or fail (`procs.py`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import requests

E2E = Path(__file__).resolve().parents[1] / "e2e"
sys.path.insert(0, str(E2E))

import envoy_config  # noqa: E402
import seed  # noqa: E402
from procs import free_port, stop_all, wait_until  # noqa: E402
from services import Envoy, OidcProvider, VictoriaMetrics  # noqa: E402

WASM = envoy_config.REPO / "target/wasm32-wasip1/release/promql_tenant_filter.wasm"
USERS = {
    "alice": {"client_id": seed.ALICE_TENANT},
    "bob": {"client_id": int(seed.BOB_TENANT)},
}
TENANT_OF = {"alice": seed.ALICE_TENANT, "bob": seed.BOB_TENANT}
OTHER_OF = {"alice": "bob", "bob": "alice"}
OWN_METRIC = {"alice": "alice_only_total", "bob": "bob_only_total"}
OWN_LABEL = {"alice": "alice_label", "bob": "bob_label"}

LOOPS_PER_USER = 2
# Pause between two requests of one loop: about 40 requests/s per loop, enough to keep
# every path busy without starving the other engineers on this two-core machine.
PACE_S = 0.025
# Bounded requests: longer than the filter's /userinfo timeout (2 s in envoy.yaml), so a
# request that gets no answer within it is a hang, not a slow IdP.
REQUEST_TIMEOUT_S = 10.0
# The committed 300 s would outlive a whole soak. With 15 s, and a provider outage
# longer than that, every loop's cached identity is used during the outage and then
# expires in it (refused with 503 from then on), and the tokens the restarted provider
# forgot come back as 401 right after it.
CACHE_TTL_S = 15
IDP_OUTAGE_S = CACHE_TTL_S + 3.0
VM_OUTAGE_S = 8.0
# A failed lookup is remembered per token for `failure_cache_ttl_s` (the committed
# config leaves the default): after the provider is back, a token whose failure is still
# remembered gets 503 for up to that long, plus a second for the coarse clock.
FAILURE_CACHE_TTL_S = 2
# After a service is back, every loop must have had a 200 again within this time. Only
# the failure cache above delays it (static clusters, no health checks), so recovery
# should take FAILURE_CACHE_TTL_S at most (plus one login for a forgotten token).
RECOVERY_BOUND_S = 10.0
WARMUP_FRACTION = 0.15
IDP_OUTAGE_AT = 0.30
VM_OUTAGE_AT = 0.60
MIN_SECONDS = 90
SAMPLE_EVERY_S = 1.0
# Envoy's memory after warm-up: what grows with traffic is bounded by configuration (the
# identity cache, `cache_max_entries` slots; the soak mints only dozens of tokens), by
# the number of connections (a handful), and by each wasm VM's linear memory, which
# grows to a high-water mark and stays there. So after warm-up memory must be flat; the
# margins below absorb allocator and V8 noise, while a leak of even 100 bytes per request
# (about 8,000 requests a minute here) crosses the allocated one in about ten minutes,
# and shows sooner in the slope the summary reports.
RSS_GROWTH_BOUND_MIB = 24
ALLOCATED_GROWTH_BOUND_MIB = 8


# ---------------------------------------------------------------------------- what each user sees


def own_indexes(user: str) -> set[int]:
    tenant = TENANT_OF[user]
    return {i for i, s in enumerate(seed.ALL_SERIES) if s.get(seed.TENANT_LABEL) == tenant}


def own_keys(user: str, metric: str | None = None) -> set[frozenset]:
    return {seed.as_key(s) for s in seed.series_of(TENANT_OF[user])
            if metric is None or s["__name__"] == metric}


Verdict = tuple[str, str]  # (outcome, detail)


def judge_result(user: str, expected: set[frozenset], raw: bool,
                 value: str | None = None) -> Callable[[object], Verdict]:
    """For query and query_range: the series (and, for a plain selector, the samples)
    must all be the caller's, and exactly the expected ones."""
    tenant, indexes, keys = TENANT_OF[user], own_indexes(user), own_keys(user)

    def judge(data) -> Verdict:
        if not isinstance(data, dict) or data.get("resultType") not in ("vector", "matrix"):
            return "other_error", f"unexpected data {str(data)[:80]}"
        got = []
        for series in data["result"]:
            metric = series["metric"]
            if metric.get(seed.TENANT_LABEL) != tenant:
                return "leak", f"series {metric}"
            if raw and seed.as_key(metric) not in keys:
                return "leak", f"series {metric}"
            samples = series.get("values") or [series.get("value")]
            if raw:
                # Seeded sample values are `series index * 100 + point`: they name their
                # series, so an answer stitched from another tenant's samples shows too.
                for _, text in samples:
                    if int(float(text)) // 100 not in indexes:
                        return "leak", f"sample {text} of series {metric}"
            if value is not None and any(text != value for _, text in samples):
                return "wrong", f"value {samples} instead of {value}"
            got.append(seed.as_key(metric))
        if len(got) != len(set(got)) or set(got) != expected:
            return "wrong", f"{len(got)} series instead of {len(expected)}"
        return "ok", ""

    return judge


def judge_series(user: str, expected: set[frozenset]) -> Callable[[object], Verdict]:
    keys = own_keys(user)

    def judge(data) -> Verdict:
        if not isinstance(data, list):
            return "other_error", f"unexpected data {str(data)[:80]}"
        got = {seed.as_key(s) for s in data}
        if got - keys:
            return "leak", f"series {sorted(map(dict, got - keys), key=str)[:2]}"
        if got != expected:
            return "wrong", f"{len(got)} series instead of {len(expected)}"
        return "ok", ""

    return judge


def judge_names(allowed: set[str], expected: set[str]) -> Callable[[object], Verdict]:
    """For labels and label values: nothing outside what the caller's series carry."""

    def judge(data) -> Verdict:
        if not isinstance(data, list):
            return "other_error", f"unexpected data {str(data)[:80]}"
        if set(data) - allowed:
            return "leak", f"names {sorted(set(data) - allowed)[:5]}"
        if set(data) != expected:
            return "wrong", f"{sorted(data)} instead of {sorted(expected)}"
        return "ok", ""

    return judge


@dataclass
class Kind:
    """One request of the workload, with what its answer must be for this user."""
    name: str
    method: str
    path: str
    params: list[tuple[str, str]]
    judge: Callable[[object], Verdict] = field(repr=False)


def workload(user: str, start_s: int, end_s: int) -> list[Kind]:
    """What Grafana sends for one user: dashboard panels, Explore, the query editor's
    metric and label browsers, and a user trying to reach the other tenant."""
    other = OTHER_OF[user]
    tenant, other_tenant = TENANT_OF[user], TENANT_OF[other]
    own_series = seed.series_of(tenant)
    own_names = {name for s in own_series for name in s}
    own_metrics = {s["__name__"] for s in own_series}
    at = [("time", str(end_s))]
    window = [("start", str(start_s)), ("end", str(end_s))]
    ranged = window + [("step", "60")]
    every = '{__name__=~".+"}'
    kinds: list[tuple[str, str, list, Callable]] = [
        ("query plain selector", "/api/v1/query",
         [("query", "http_requests_total")] + at,
         judge_result(user, own_keys(user, "http_requests_total"), raw=True)),
        ("query sum by rate", "/api/v1/query",
         [("query", "sum by (client_id, code) (rate(http_requests_total[5m]))")] + at,
         judge_result(user, {frozenset({("client_id", tenant), ("code", c)})
                             for c in ("200", "500")}, raw=False)),
        ("query every series", "/api/v1/query", [("query", every)] + at,
         judge_result(user, own_keys(user), raw=True)),
        ("query other tenant's matcher", "/api/v1/query",
         [("query", f'http_requests_total{{client_id="{other_tenant}"}}')] + at,
         judge_result(user, set(), raw=True)),
        ("query other tenant's metric", "/api/v1/query",
         [("query", OWN_METRIC[other])] + at, judge_result(user, set(), raw=True)),
        ("query count by tenant", "/api/v1/query",
         [("query", f'count by (client_id) ({{client_id=~".+"}})')] + at,
         judge_result(user, {frozenset({("client_id", tenant)})}, raw=False,
                      value=str(len(own_series)))),
        ("range plain selector", "/api/v1/query_range",
         [("query", "node_memory_bytes")] + ranged,
         judge_result(user, own_keys(user, "node_memory_bytes"), raw=True)),
        ("range sum by tenant", "/api/v1/query_range",
         [("query", "sum by (client_id) (rate(http_requests_total[5m]))")] + ranged,
         judge_result(user, {frozenset({("client_id", tenant)})}, raw=False)),
        ("range other tenant's matcher", "/api/v1/query_range",
         [("query", f'{{client_id="{other_tenant}"}}')] + ranged,
         judge_result(user, set(), raw=True)),
        ("series every series", "/api/v1/series", [("match[]", every)] + window,
         judge_series(user, own_keys(user))),
        ("series two match[]", "/api/v1/series",
         [("match[]", "http_requests_total"), ("match[]", OWN_METRIC[other])] + window,
         judge_series(user, own_keys(user, "http_requests_total"))),
        ("series other tenants", "/api/v1/series",
         [("match[]", f'{{__name__=~".+", client_id!="{tenant}"}}')] + window,
         judge_series(user, set())),
        ("labels", "/api/v1/labels", window, judge_names(own_names, own_names)),
        # VictoriaMetrics names `__name__` even when no series matches.
        ("labels other tenant's match[]", "/api/v1/labels",
         [("match[]", f'{{client_id="{other_tenant}"}}')] + window,
         judge_names(own_names, {"__name__"})),
    ]
    out = [Kind(f"{name} ({method})", method, path, params, judge)
           for name, path, params, judge in kinds for method in ("GET", "POST")]
    # Label values: Grafana's label browser, GET only (Prometheus has no POST for it).
    for name, label, expected, allowed in (
        ("values of the tenant label", "client_id", {tenant}, {tenant}),
        ("values of __name__", "__name__", own_metrics, own_metrics),
        ("values of own label", OWN_LABEL[user], {"yes"}, {"yes"}),
        ("values of other tenant's label", OWN_LABEL[other], set(), set()),
    ):
        out.append(Kind(f"{name} (GET)", "GET", f"/api/v1/label/{label}/values", window,
                        judge_names(allowed, expected)))
    return out


# ---------------------------------------------------------------------------- recording


@dataclass
class Record:
    loop: str
    user: str
    kind: str
    started: float  # seconds since the soak's start
    finished: float
    status: int  # 0: no answer
    outcome: str
    detail: str
    token_issued: float  # when the token used was obtained

    @property
    def latency_ms(self) -> float:
        return (self.finished - self.started) * 1000


@dataclass
class Window:
    """One outage: from just before the stop to the restarted service being ready."""
    service: str
    stopped: float
    ready: float = float("inf")

    def overlaps(self, record: Record) -> bool:
        return record.started <= self.ready and record.finished >= self.stopped


def classify(response: requests.Response, token: str, kind: Kind) -> Verdict:
    try:
        body = response.json()
    except ValueError:
        body = None
    if token in response.text:
        return "other_error", "the answer echoes the token"
    if response.status_code == 200:
        if not isinstance(body, dict) or body.get("status") != "success":
            return "other_error", f"200 without a success body: {response.text[:80]}"
        return kind.judge(body.get("data"))
    prometheus_error = (
        response.headers.get("content-type", "").startswith("application/json")
        and isinstance(body, dict) and body.get("status") == "error"
        and isinstance(body.get("errorType"), str)
        and isinstance(body.get("error"), str) and body["error"] != ""
    )
    if not prometheus_error:
        text = " ".join(response.text.split())[:90]
        return "other_error", f"{response.status_code} not Prometheus JSON: {text!r}"
    shape = (response.status_code, body["errorType"])
    if shape == (503, "unavailable"):
        return "unavailable", body["error"]
    if shape == (401, "unauthorized"):
        return "unauthorized", body["error"]
    return "other_error", f"{response.status_code} {body['errorType']}: {body['error'][:80]}"


class Soak:
    def __init__(self, seconds: float, workdir: Path):
        self.seconds = seconds
        self.workdir = workdir
        self.records: list[Record] = []
        self.logins: list[dict] = []
        self.memory: list[dict] = []
        self.windows: list[Window] = []
        self.crashes: list[str] = []
        self.warmed: dict[str, tuple[float, float]] = {}  # the cached probe tokens' lookup
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ------------------------------------------------------------------------ the stack

    def start_stack(self) -> None:
        print(f"soak: logs and configs in {self.workdir}", flush=True)
        self.vm = VictoriaMetrics(self.workdir)
        self.seed()
        self.oidc = OidcProvider(self.workdir, USERS)
        listen, admin = free_port(), free_port()
        config = envoy_config.render(
            envoy_config.ENVOY_DIR / "envoy.yaml", LISTEN_PORT=listen, ADMIN_PORT=admin,
            OIDC_PORT=self.oidc.port, BACKEND_PORT=self.vm.port, WASM_PATH=WASM)
        config = envoy_config.with_identity(config, cache_ttl_s=CACHE_TTL_S)
        self.envoy = Envoy(self.workdir, "envoy-soak", config, admin_port=admin,
                           listen_port=listen).wait_ready()

    def seed(self) -> None:
        # A whole second, so that instant queries at `time=end_s` see the last point.
        end_s = int(time.time())
        self.vm.import_prometheus(seed.exposition(end_s * 1000))
        self.vm.force_flush()
        self.end_s, self.start_s = end_s, end_s - (seed.POINTS - 1) * seed.STEP_S
        want = len(seed.ALL_SERIES)
        wait_until(lambda: len(self.vm.series('{__name__=~".+"}', self.start_s,
                                              self.end_s + 60)) == want,
                   f"{want} seeded series to be queryable", proc=self.vm.proc)

    def control(self) -> None:
        """The classifier must be able to fail: the same workload sent to VictoriaMetrics
        directly, around the filter, must be judged a leak for every kind but the one
        that names only the caller's own label."""
        self.control_leaks: dict[str, set[str]] = {}
        session = requests.Session()
        for user in USERS:
            leaked = set()
            for kind in workload(user, self.start_s, self.end_s):
                url = self.vm.url + kind.path
                response = (session.post(url, data=kind.params, timeout=REQUEST_TIMEOUT_S)
                            if kind.method == "POST" else
                            session.get(url, params=kind.params, timeout=REQUEST_TIMEOUT_S))
                if classify(response, "no-token", kind)[0] == "leak":
                    leaked.add(kind.name)
            self.control_leaks[user] = leaked

    # ------------------------------------------------------------------------ clients

    def login(self, loop: str, user: str) -> tuple[str, float]:
        """A token through the authorization-code flow; retried while the provider is
        down (as a user would retry), until the soak ends."""
        while True:
            started = self.now()
            try:
                token = self.oidc.login(user)
                self.logins.append({"loop": loop, "at": round(started, 3), "ok": True,
                                    "seconds": round(self.now() - started, 3)})
                return token, self.now()
            except Exception as error:  # noqa: BLE001 - provider down or restarting
                self.logins.append({"loop": loop, "at": round(started, 3), "ok": False,
                                    "error": type(error).__name__})
                if self.stop.wait(0.5):
                    raise

    def send(self, session: requests.Session, loop: str, user: str, kind: Kind,
             token: str, issued: float) -> Record:
        url = self.envoy.url + kind.path
        headers = {"Authorization": f"Bearer {token}"}
        started = self.now()
        try:
            if kind.method == "POST":
                response = session.post(url, data=kind.params, headers=headers,
                                        timeout=REQUEST_TIMEOUT_S)
            else:
                response = session.get(url, params=kind.params, headers=headers,
                                       timeout=REQUEST_TIMEOUT_S)
            status = response.status_code
            outcome, detail = classify(response, token, kind)
        except requests.RequestException as error:
            status, outcome, detail = 0, "no_answer", type(error).__name__
        record = Record(loop, user, kind.name, round(started, 4), round(self.now(), 4),
                        status, outcome, detail, round(issued, 4))
        self.records.append(record)  # list.append is atomic under the GIL
        return record

    def workload_loop(self, loop: str, user: str, offset: int) -> None:
        kinds = workload(user, self.start_s, self.end_s)
        session = requests.Session()
        token, issued = self.login(loop, user)
        turn = offset
        while not self.stop.is_set():
            kind = kinds[turn % len(kinds)]
            turn += 1
            record = self.send(session, loop, user, kind, token, issued)
            if record.outcome == "unauthorized":
                token, issued = self.login(loop, user)
            self.stop.wait(PACE_S)

    def probe_loop(self, tokens: dict[str, tuple[str, float]], outage_over: threading.Event):
        """During the provider outage: one token per user cached just before it, one
        minted just before it and never used (so never cached)."""
        kinds = {user: workload(user, self.start_s, self.end_s) for user in USERS}
        session = requests.Session()
        turn = 0
        while not outage_over.is_set() and not self.stop.is_set():
            for name, (user, token, issued) in tokens.items():
                kind = kinds[user][turn % len(kinds[user])]
                self.send(session, name, user, kind, token, issued)
            turn += 1
            outage_over.wait(0.1)

    def sample_memory(self) -> None:
        path = Path(f"/proc/{self.envoy.proc.pid}/status")
        while not self.stop.wait(SAMPLE_EVERY_S):
            try:
                rss_kib = next(int(line.split()[1]) for line in path.read_text().splitlines()
                               if line.startswith("VmRSS:"))
                text = requests.get(f"{self.envoy.admin_url}/stats",
                                    params={"filter": r"^server\.memory_"}, timeout=2).text
                stats = {k.strip(): int(v) for k, _, v in
                         (line.partition(":") for line in text.splitlines()) if v.strip()}
                self.memory.append({
                    "at": round(self.now(), 2), "rss_mib": rss_kib / 1024,
                    "allocated_mib": stats["server.memory_allocated"] / 2**20,
                    "heap_mib": stats["server.memory_heap_size"] / 2**20,
                })
            except Exception as error:  # noqa: BLE001 - a missed sample is reported, not fatal
                self.crashes.append(f"memory sample: {error!r}")

    def thread(self, name: str, target: Callable, *args) -> threading.Thread:
        def guarded():
            try:
                target(*args)
            except Exception:  # noqa: BLE001 - counted as a failed check
                if not self.stop.is_set():
                    self.crashes.append(f"{name}: {traceback.format_exc()}")

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    # ------------------------------------------------------------------------ faults

    def idp_outage(self) -> None:
        probes = {}
        for user in USERS:
            cached, cached_at = self.login(f"probe-cached-{user}", user)
            uncached, uncached_at = self.login(f"probe-uncached-{user}", user)
            warm = self.send(requests.Session(), f"probe-cached-{user}", user,
                             workload(user, self.start_s, self.end_s)[0], cached, cached_at)
            if warm.outcome != "ok":
                self.crashes.append(f"warming the probe token of {user}: {warm}")
            self.warmed[user] = (warm.started, warm.finished)
            probes[f"probe-cached-{user}"] = (user, cached, cached_at)
            probes[f"probe-uncached-{user}"] = (user, uncached, uncached_at)
        window = Window("OIDC provider", self.now())
        self.windows.append(window)
        self.oidc.stop()
        over = threading.Event()
        prober = self.thread("prober", self.probe_loop, probes, over)
        time.sleep(IDP_OUTAGE_S)
        self.oidc.start()
        window.ready = self.now()
        over.set()
        prober.join()

    def vm_outage(self) -> None:
        window = Window("VictoriaMetrics", self.now())
        self.windows.append(window)
        self.vm.stop()
        time.sleep(VM_OUTAGE_S)
        self.vm.start()
        window.ready = self.now()

    # ------------------------------------------------------------------------ the run

    def run(self) -> None:
        self.start_stack()
        self.control()
        self.t0 = time.monotonic()
        print(f"soak: {self.seconds:.0f} s, {LOOPS_PER_USER} loops per user, provider "
              f"outage at {IDP_OUTAGE_AT * self.seconds:.0f} s for {IDP_OUTAGE_S:.0f} s, "
              f"VictoriaMetrics outage at {VM_OUTAGE_AT * self.seconds:.0f} s for "
              f"{VM_OUTAGE_S:.0f} s", flush=True)
        threads = [self.thread("memory", self.sample_memory)]
        for user in USERS:
            for index in range(LOOPS_PER_USER):
                threads.append(self.thread(f"{user}-{index}", self.workload_loop,
                                           f"{user}-{index}", user, index * 7))
        for at, fault in ((IDP_OUTAGE_AT, self.idp_outage), (VM_OUTAGE_AT, self.vm_outage)):
            time.sleep(max(0.0, at * self.seconds - self.now()))
            print(f"soak: {self.now():6.1f} s  stopping {fault.__name__}", flush=True)
            fault()
            print(f"soak: {self.now():6.1f} s  {self.windows[-1].service} is back", flush=True)
        time.sleep(max(0.0, self.seconds - self.now()))
        self.stop.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S + 5)
            if thread.is_alive():
                self.crashes.append(f"{thread.name} did not stop")
        self.envoy_stats = {
            name: self.envoy.filter_counter(name)
            for name in ("requests_allowed", "requests_denied", "userinfo_calls",
                         "cache_hits", "cache_misses", "idp_errors")}
        counters = self.envoy.counters()
        for name in ("cluster.backend.upstream_cx_connect_fail",
                     "cluster.backend.upstream_rq_503", "cluster.oidc.upstream_cx_connect_fail",
                     "cluster.backend.upstream_cx_destroy_remote_with_active_rq"):
            self.envoy_stats[name] = counters.get(name, 0)
        self.envoy_alive = self.envoy.proc.running()


# ---------------------------------------------------------------------------- verdict


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Verdicts:
    """The checks, each a line of the summary; `failed` decides the exit status."""

    def __init__(self, soak: Soak):
        self.soak = soak
        self.lines: list[tuple[bool, str, str]] = []
        self.findings: dict = {}

    def check(self, ok: bool, name: str, figures: str) -> None:
        self.lines.append((ok, name, figures))

    @property
    def failed(self) -> bool:
        return not all(ok for ok, _, _ in self.lines)

    def phase_of(self, record: Record) -> str:
        soak = self.soak
        for window in soak.windows:
            if window.overlaps(record):
                return f"{window.service} outage"
        after = [w for w in soak.windows if record.started > w.ready]
        if after:
            return f"after {after[-1].service}"
        return "warm-up" if record.started < WARMUP_FRACTION * soak.seconds else "steady"

    def explained(self, record: Record) -> str | None:
        """Why this error is expected, or None."""
        if record.outcome == "unavailable":
            for window in self.soak.windows:
                if window.overlaps(record):
                    return f"503 during the {window.service} outage"
                if (window.service == "OIDC provider" and window.ready <= record.started
                        <= window.ready + FAILURE_CACHE_TTL_S + 1):
                    return "503 remembered from the OIDC provider outage (failure_cache_ttl_s)"
        if record.outcome == "unauthorized":
            # While the provider is down a lookup fails (503), so a 401 for a token issued
            # before the stop means the restarted provider answered and forgot it. (The
            # provider may answer a moment before `ready` is taken.)
            for window in self.soak.windows:
                if (window.service == "OIDC provider" and record.token_issued < window.stopped
                        and record.finished > window.stopped):
                    return "401: a token the restarted provider forgot"
        return None

    def run(self) -> None:
        soak = self.soak
        records = [r for r in soak.records if not r.loop.startswith("probe")]
        probes = [r for r in soak.records if r.loop.startswith("probe")]

        all_kinds = {k.name for k in workload("alice", 0, 1)}
        harmless = {"values of own label (GET)"}
        self.check(all(leaked == all_kinds - harmless for leaked in soak.control_leaks.values()),
                   "control: the same workload around the filter is judged a leak",
                   ", ".join(f"{user} {len(leaked)} of {len(all_kinds)} kinds"
                             for user, leaked in soak.control_leaks.items()))
        leaks = [r for r in soak.records if r.outcome == "leak"]
        self.check(not leaks, "no answer carried another tenant's data",
                   f"{len(leaks)} of {len(soak.records)} answers"
                   + (f"; first: {leaks[0]}" if leaks else ""))
        wrong = [r for r in soak.records if r.outcome == "wrong"]
        self.check(not wrong, "every 200 had all of the caller's expected data",
                   f"{len(wrong)} incomplete" + (f"; first: {wrong[0]}" if wrong else ""))

        errors = [r for r in records if r.outcome != "ok"]
        reasons = Counter(self.explained(r) or "UNEXPLAINED" for r in errors)
        unexplained = [r for r in errors if self.explained(r) is None]
        self.check(not unexplained, "every error is explained (outage 503, or 401 for a "
                   "token the restarted provider forgot)",
                   "; ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
                   or "no errors")
        self.findings["error_reasons"] = dict(reasons)
        self.findings["unexplained"] = Counter(
            f"{self.phase_of(r)}: {r.detail[:100]}" for r in unexplained).most_common(10)

        for window in soak.windows:
            inside = [r for r in records if window.overlaps(r)]
            bad = Counter(f"{r.status} {r.outcome}: {r.detail[:70]}" for r in inside
                          if r.outcome not in ("ok", "unavailable", "unauthorized"))
            self.check(not bad, f"errors during the {window.service} outage were 503 "
                       "unavailable in Prometheus' JSON shape",
                       f"{sum(r.outcome == 'unavailable' for r in inside)} x 503, "
                       f"{sum(r.outcome == 'ok' for r in inside)} x 200 of {len(inside)}"
                       + (f"; other: {dict(bad.most_common(3))}" if bad else ""))

            loops = sorted({r.loop for r in records})
            waits = {}
            for loop in loops:
                mine = [r for r in records if r.loop == loop]
                lost = any(r.outcome != "ok" for r in mine if window.overlaps(r))
                first_ok = next((r.finished for r in mine
                                 if r.started >= window.ready and r.outcome == "ok"), None)
                waits[loop] = (0.0 if not lost else
                               (first_ok - window.ready) if first_ok is not None else None)
            slowest = (None if any(w is None for w in waits.values())
                       else max(waits.values(), default=0.0))
            self.findings[f"recovery after {window.service}"] = waits
            self.check(slowest is not None and slowest <= RECOVERY_BOUND_S,
                       f"every loop had a 200 again after the {window.service} came back",
                       f"outage {window.ready - window.stopped:.1f} s; slowest loop back "
                       f"{'never' if slowest is None else f'{slowest:.2f} s'} after it was "
                       f"ready (bound {RECOVERY_BOUND_S:.0f} s)")

        idp = next(w for w in soak.windows if w.service == "OIDC provider")
        # The cache entry of a probe token is written between the start and the end of
        # its warming request, and expires CACHE_TTL_S later (whole seconds).
        cached = [r for r in probes if r.loop.startswith("probe-cached")
                  and r.started >= idp.stopped
                  and r.finished < soak.warmed[r.user][0] + CACHE_TTL_S - 1]
        self.check(bool(cached) and all(r.outcome == "ok" for r in cached),
                   "during the provider outage a cached token was answered",
                   f"{sum(r.outcome == 'ok' for r in cached)} x 200 of {len(cached)}")
        expired = [r for r in probes if r.loop.startswith("probe-cached")
                   and r.started > soak.warmed[r.user][1] + CACHE_TTL_S]
        self.check(bool(expired) and all(r.outcome == "unavailable" or
                                         (r.outcome == "unauthorized" and self.explained(r))
                                         for r in expired),
                   "... and once its entry expired, 503 until the provider was back",
                   f"{sum(r.outcome == 'unavailable' for r in expired)} x 503 of "
                   f"{len(expired)}")
        # The provider answers a moment before `ready` is taken: a 401 then is the
        # restarted provider not knowing the token, explained like the loops' ones.
        uncached = [r for r in probes if r.loop.startswith("probe-uncached")
                    and r.started >= idp.stopped]
        refused = [r for r in uncached if r.outcome == "unavailable"]
        forgotten = [r for r in uncached if r.outcome == "unauthorized" and self.explained(r)]
        self.check(bool(refused) and len(refused) + len(forgotten) == len(uncached),
                   "during the provider outage an uncached token got 503",
                   f"{len(refused)} x 503 of {len(uncached)}"
                   + (f" (+{len(forgotten)} x 401 from the provider just restarted)"
                      if forgotten else ""))

        covered = Counter(r.kind for r in records if r.outcome == "ok")
        self.check(set(covered) == all_kinds, "every request kind was answered 200 at least once",
                   f"{len(covered)} of {len(all_kinds)} kinds")

        self.memory_check()
        self.check(not soak.crashes and soak.envoy_alive, "no loop crashed, Envoy still running",
                   "; ".join(c.splitlines()[0] + " " + c.splitlines()[-1] for c in soak.crashes[:3])
                   or "all threads ended cleanly")

    def memory_check(self) -> None:
        soak = self.soak
        warm_end = WARMUP_FRACTION * soak.seconds
        base = [m for m in soak.memory if warm_end - 5 <= m["at"] <= warm_end]
        after = [m for m in soak.memory if m["at"] > warm_end]
        if not base or not after:
            self.check(False, "Envoy's memory stayed bounded after warm-up", "no samples")
            return
        figures = {}
        ok = True
        for key, bound in (("rss_mib", RSS_GROWTH_BOUND_MIB),
                           ("allocated_mib", ALLOCATED_GROWTH_BOUND_MIB)):
            baseline = statistics.median(m[key] for m in base)
            peak = max(m[key] for m in after)
            last = after[-1][key]
            figures[key] = {"baseline": round(baseline, 1), "peak": round(peak, 1),
                            "end": round(last, 1), "bound": baseline + bound,
                            "slope_mib_per_min": round(slope(after, key) * 60, 3)}
            ok = ok and peak <= baseline + bound
        figures["heap_mib_end"] = round(soak.memory[-1]["heap_mib"], 1)
        self.findings["memory"] = figures
        rss, alloc = figures["rss_mib"], figures["allocated_mib"]
        self.check(ok, "Envoy's memory stayed bounded after warm-up",
                   f"RSS {rss['baseline']} -> peak {rss['peak']}, end {rss['end']} MiB "
                   f"(bound +{RSS_GROWTH_BOUND_MIB}, slope {rss['slope_mib_per_min']} MiB/min); "
                   f"allocated {alloc['baseline']} -> peak {alloc['peak']}, end {alloc['end']} "
                   f"MiB (bound +{ALLOCATED_GROWTH_BOUND_MIB}, slope "
                   f"{alloc['slope_mib_per_min']} MiB/min)")

    def phase_table(self) -> list[dict]:
        rows: dict[str, list[Record]] = {}
        for record in self.soak.records:
            if not record.loop.startswith("probe"):
                rows.setdefault(self.phase_of(record), []).append(record)
        table = []
        for phase, members in rows.items():
            latencies = [r.latency_ms for r in members]
            outcomes = Counter(r.outcome for r in members)
            table.append({
                "phase": phase,
                "from_s": round(min(r.started for r in members), 1),
                "to_s": round(max(r.finished for r in members), 1),
                "requests": len(members),
                "ok_pct": round(100 * outcomes["ok"] / len(members), 2),
                "outcomes": dict(outcomes),
                "p50_ms": round(percentile(latencies, 0.50), 1),
                "p95_ms": round(percentile(latencies, 0.95), 1),
                "p99_ms": round(percentile(latencies, 0.99), 1),
                "max_ms": round(max(latencies), 1),
            })
        return sorted(table, key=lambda row: row["from_s"])


def slope(samples: list[dict], key: str) -> float:
    """Least-squares slope of `key` over time, per second."""
    xs, ys = [m["at"] for m in samples], [m[key] for m in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return 0.0 if spread == 0 else sum((x - mean_x) * (y - mean_y)
                                       for x, y in zip(xs, ys)) / spread


def report(soak: Soak, verdicts: Verdicts) -> None:
    table = verdicts.phase_table()
    statuses = Counter(r.status for r in soak.records)
    print()
    print(f"{'phase':<26}{'from s':>8}{'to s':>8}{'requests':>10}{'ok %':>8}"
          f"{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'max ms':>9}  outcomes")
    for row in table:
        print(f"{row['phase']:<26}{row['from_s']:>8.1f}{row['to_s']:>8.1f}{row['requests']:>10}"
              f"{row['ok_pct']:>8.2f}{row['p50_ms']:>8.1f}{row['p95_ms']:>8.1f}"
              f"{row['p99_ms']:>8.1f}{row['max_ms']:>9.1f}  {row['outcomes']}")
    total = len(soak.records)
    print(f"\n{total} requests ({total / soak.seconds:.0f}/s), status codes "
          f"{dict(sorted(statuses.items()))}, logins {sum(l['ok'] for l in soak.logins)} "
          f"(+{sum(not l['ok'] for l in soak.logins)} failed while the provider was down)")
    print(f"Envoy: {soak.envoy_stats}")
    for window in soak.windows:
        print(f"{window.service} outage: {window.stopped:.1f} s to {window.ready:.1f} s")
    print()
    for ok, name, figures in verdicts.lines:
        print(f"{'PASS' if ok else 'FAIL'}  {name}\n      {figures}")
    if verdicts.findings.get("unexplained"):
        print("unexplained errors (phase: detail, count):")
        for what, count in verdicts.findings["unexplained"]:
            print(f"      {count:>6}  {what}")
    summary = {
        "seconds": soak.seconds, "loops_per_user": LOOPS_PER_USER, "pace_s": PACE_S,
        "idp_outage_s": IDP_OUTAGE_S, "vm_outage_s": VM_OUTAGE_S, "cache_ttl_s": CACHE_TTL_S, "requests": total,
        "status_codes": {str(k): v for k, v in statuses.items()},
        "windows": [asdict(w) for w in soak.windows], "phases": table,
        "checks": [{"ok": ok, "check": name, "figures": f} for ok, name, f in verdicts.lines],
        "findings": verdicts.findings, "envoy": soak.envoy_stats, "memory": soak.memory,
        "logins": soak.logins,
    }
    (soak.workdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (soak.workdir / "records.jsonl").write_text(
        "".join(json.dumps(asdict(r)) + "\n" for r in soak.records))
    print(f"\nsoak: {'FAILED' if verdicts.failed else 'passed'}; summary.json and "
          f"records.jsonl in {soak.workdir}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    if args.seconds < MIN_SECONDS:
        parser.error(f"--seconds must be at least {MIN_SECONDS} (the timeline needs room)")
    if not WASM.is_file():
        parser.error(f"{WASM} is missing: `make soak` builds it (`make wasm`)")
    soak = Soak(args.seconds, Path(tempfile.mkdtemp(prefix="promql-soak-")))
    try:
        soak.run()
        verdicts = Verdicts(soak)
        verdicts.run()
        report(soak, verdicts)
        return 1 if verdicts.failed else 0
    finally:
        soak.stop.set()
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
