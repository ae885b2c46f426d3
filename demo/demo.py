"""`make demo`: the whole stack on 127.0.0.1, two tenants, and proof that each sees only itself.

Starts real VictoriaMetrics, a real OIDC provider (users alice, client_id 1999, and bob,
client_id 2000) and a real Envoy loading the freshly built filter, plus a small simulator
that writes metrics for both tenants every few seconds. Then it logs both users in through
the provider's authorization-code flow, runs the queries a Grafana dashboard sends as each
of them, and prints what each one sees side by side. It keeps the stack up (with ready to
paste curl commands) until Ctrl-C, or for DEMO_SECONDS seconds, and stops every process.

Variables: DEMO_SECONDS, DEMO_ENVOY_PORT, DEMO_ADMIN_PORT, DEMO_VM_PORT, DEMO_OIDC_PORT.
"""

from __future__ import annotations

import math
import os
import random
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The demo runs the same process wrappers as the end-to-end tests.
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import requests  # noqa: E402

import envoy_config  # noqa: E402
from procs import free_port, stop_all  # noqa: E402
from services import Envoy, OidcProvider, VictoriaMetrics  # noqa: E402

WASM = REPO / "target" / "wasm32-wasip1" / "release" / "promql_tenant_filter.wasm"
USERS = {"alice": "1999", "bob": "2000"}
SIMULATOR_PERIOD_S = 5
# What a Grafana dashboard over the simulator's metrics sends, as (title, path, form).
QUERIES = [
    ("instant: request rate by tenant", "/api/v1/query",
     {"query": "sum by (client_id, service) (rate(http_requests_total[1m]))"}),
    ("range: error ratio", "/api/v1/query_range",
     {"query": 'sum by (client_id) (rate(http_requests_total{code=~"5.."}[1m]))'
               ' / sum by (client_id) (rate(http_requests_total[1m]))',
      "step": "15"}),
    ("range: queue depth", "/api/v1/query_range", {"query": "max by (client_id) (queue_depth)", "step": "15"}),
    ("series: http_requests_total", "/api/v1/series", {"match[]": "http_requests_total"}),
    ("label values: client_id", "/api/v1/label/client_id/values", {}),
    ("label values: __name__", "/api/v1/label/__name__/values", {}),
]


def port(name: str) -> int:
    value = os.environ.get(name, "")
    return int(value) if value else free_port()


class Simulator:
    """Writes a few realistic counters and gauges for both tenants every few seconds."""

    SERVICES = ("checkout", "search")

    def __init__(self, vm: VictoriaMetrics):
        self.vm = vm
        self.counters: dict[tuple, float] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def write_once(self, at_s: float | None = None) -> None:
        now_s = time.time() if at_s is None else at_s
        now_ms = int(now_s * 1000)
        lines = []
        for user, tenant in USERS.items():
            load = 1.0 if user == "alice" else 3.0  # bob's tenant is busier
            for service in self.SERVICES:
                for code, share in (("200", 0.95), ("500", 0.05)):
                    key = (tenant, service, code)
                    self.counters[key] = self.counters.get(key, 0.0) + random.uniform(50, 100) * load * share
                    lines.append(f'http_requests_total{{client_id="{tenant}",service="{service}",code="{code}"}} '
                                 f"{self.counters[key]:.0f} {now_ms}")
            wave = math.sin(now_s / 30) * 5
            lines.append(f'queue_depth{{client_id="{tenant}",service="checkout"}} {max(0.0, 10 * load + wave):.1f} {now_ms}')
            lines.append(f'room_temperature_celsius{{client_id="{tenant}",site="{user}-hq"}} '
                         f"{21 + load + random.uniform(-0.5, 0.5):.2f} {now_ms}")
        self.vm.import_prometheus("\n".join(lines) + "\n")

    def _run(self) -> None:
        while not self.stopped.wait(SIMULATOR_PERIOD_S):
            try:
                self.write_once()
            except requests.RequestException:
                pass  # VictoriaMetrics is stopping

    def start(self) -> None:
        # Five minutes of history first, so rates and ranges have data from the start.
        now = time.time()
        for back in range(300, -1, -SIMULATOR_PERIOD_S * 3):
            self.write_once(now - back)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()


def tenants_in(answer: dict) -> tuple[set[str], int]:
    """The client_id values an API answer exposes, and how many results it has."""
    data = answer.get("data")
    if isinstance(data, dict) and "result" in data:  # query, query_range
        metrics = [r.get("metric", {}) for r in data["result"]]
        return {m.get("client_id", "<none>") for m in metrics}, len(metrics)
    if isinstance(data, list) and data and isinstance(data[0], dict):  # series
        return {m.get("client_id", "<none>") for m in data}, len(data)
    if isinstance(data, list):  # label values
        return set(), len(data)
    return set(), 0


def ask(envoy_url: str, token: str, path: str, form: dict) -> dict:
    now = time.time()
    form = {"start": f"{now - 300:.0f}", "end": f"{now:.0f}", **form}
    # Grafana sends POST form bodies by default (`httpMethod: POST`).
    r = requests.post(envoy_url + path, data=form, headers={"Authorization": f"Bearer {token}"}, timeout=15)
    return r.json()


def show(envoy_url: str, tokens: dict[str, str]) -> bool:
    """Prints the side-by-side table; true when each user saw only, and all of, their own data."""
    width = 34
    print(f"\n{'query':<{width}} | " + " | ".join(f"{u} (client_id {t})".ljust(30) for u, t in USERS.items()))
    print("-" * (width + 1) + ("+" + "-" * 32) * len(USERS))
    isolated = True
    for title, path, form in QUERIES:
        cells = []
        for user, tenant in USERS.items():
            answer = ask(envoy_url, tokens[user], path, form)
            if answer.get("status") != "success":
                cells.append(f"error: {answer.get('error', '?')}"[:30])
                isolated = False
                continue
            seen, count = tenants_in(answer)
            if path.endswith("/client_id/values"):
                seen = set(answer["data"])
            if path.endswith("/__name__/values"):
                cells.append(f"{count} metric names")
                continue
            own = seen == {tenant}
            isolated &= own and count > 0
            cells.append(f"{count} results, client_id {sorted(seen)}" + ("" if own else "  LEAK"))
        print(f"{title:<{width}} | " + " | ".join(c.ljust(30) for c in cells))
    return isolated


def main() -> int:
    if not WASM.is_file():
        print(f"{WASM} is missing: run `make wasm` (make demo does).", file=sys.stderr)
        return 1
    seconds = float(os.environ.get("DEMO_SECONDS", "0") or 0)
    workdir = Path(tempfile.mkdtemp(prefix="promql-tenant-demo-"))
    simulator = None
    try:
        vm = VictoriaMetrics(workdir, port=port("DEMO_VM_PORT"))
        oidc = OidcProvider(workdir, {user: {"client_id": tenant} for user, tenant in USERS.items()},
                            port=port("DEMO_OIDC_PORT"))
        listen, admin = port("DEMO_ENVOY_PORT"), port("DEMO_ADMIN_PORT")
        config = envoy_config.render(envoy_config.ENVOY_DIR / "envoy.yaml", LISTEN_PORT=listen,
                                     ADMIN_PORT=admin, OIDC_PORT=oidc.port, BACKEND_PORT=vm.port,
                                     WASM_PATH=WASM)
        envoy = Envoy(workdir, "envoy", config, admin_port=admin, listen_port=listen).wait_ready()
        simulator = Simulator(vm)
        simulator.start()
        vm.force_flush()
        print(f"VictoriaMetrics {vm.url}   OIDC provider {oidc.url}   Envoy + filter {envoy.url}")
        print(f"logs and data: {workdir}")

        tokens = {user: oidc.login(user) for user in USERS}
        print("logged in through the authorization-code flow: " + ", ".join(USERS))
        isolated = show(envoy.url, tokens)
        print("\nISOLATION OK: each user saw their own tenant's series, and nobody else's."
              if isolated else "\nISOLATION FAILED: see the table above.")

        print("\nTry it yourself (Grafana sends the same requests):")
        for user in USERS:
            cmd = ["curl", "-s", "-H", f"Authorization: Bearer {tokens[user]}",
                   "--data-urlencode", "query=sum by (client_id) (rate(http_requests_total[1m]))",
                   f"{envoy.url}/api/v1/query"]
            print(f"  # as {user}\n  {shlex.join(cmd)}")
        print(f"  # no token: 401\n  curl -s {envoy.url}/api/v1/query?query=up")
        print(f"  # counters: curl -s {envoy.admin_url}/stats | grep promql_tenant_filter")

        if seconds > 0:
            print(f"\nrunning for {seconds:.0f}s (DEMO_SECONDS)")
            time.sleep(seconds)
        else:
            print("\nrunning until Ctrl-C")
            while True:
                time.sleep(3600)
        return 0 if isolated else 1
    except KeyboardInterrupt:
        return 0
    finally:
        if simulator:
            simulator.stop()
        stop_all()
        print("stopped every process the demo started")


if __name__ == "__main__":
    sys.exit(main())
