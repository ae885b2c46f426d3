"""Data simulator for docker-compose.yaml: a few services of each tenant, as metrics.

Every INTERVAL_S seconds it writes, for each tenant in TENANTS, counters and gauges with
the names a real service exports (requests by path and status, latency histogram sums,
queue depth, memory, up) to VictoriaMetrics' /api/v1/import/prometheus. Every series
carries client_id="<tenant>": the filter confines readers, but writers must label their
series correctly (docs/security.md). Standard library only, so the stock python image
runs it without installing anything.
"""

import os
import random
import time
import urllib.error
import urllib.request

VM_URL = os.environ.get("VM_URL", "http://127.0.0.1:8428").rstrip("/")
INTERVAL_S = float(os.environ.get("INTERVAL_S", "5"))
TENANTS = [t.strip() for t in os.environ.get("TENANTS", "1999,2000").split(",") if t.strip()]

# Each tenant runs a slightly different shop, so the two dashboards look different.
SERVICES = {0: ["checkout", "catalog"], 1: ["billing", "search"]}
PATHS = ["/api/items", "/api/cart", "/healthz"]
BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5]


class Tenant:
    """The running totals of one tenant's counters, so they only ever go up."""

    def __init__(self, client_id: str, index: int):
        self.client_id = client_id
        self.services = SERVICES[index % len(SERVICES)]
        # Tenants differ in traffic, so a leak would be visible as a wrong level too.
        self.load = 20.0 * (index + 1)
        self.requests: dict[tuple, float] = {}
        self.latency_buckets: dict[tuple, float] = {}
        self.latency_sum: dict[str, float] = {}
        self.latency_count: dict[str, float] = {}
        self.start = time.time()

    def step(self) -> list[str]:
        lines = []
        base = f'client_id="{self.client_id}"'
        for service in self.services:
            labels = f'{base},service="{service}"'
            for path in PATHS:
                for code, share in (("200", 0.95), ("500", 0.03), ("404", 0.02)):
                    key = (service, path, code)
                    n = max(0, round(random.gauss(self.load * share * INTERVAL_S, 2)))
                    self.requests[key] = self.requests.get(key, 0) + n
                    lines.append(f'http_requests_total{{{labels},path="{path}",method="GET",code="{code}"}} '
                                 f"{self.requests[key]:.0f}")
            # A latency histogram: observations drawn from a log-normal distribution.
            observations = [random.lognormvariate(-2.3, 0.8) for _ in range(int(self.load))]
            for le in BUCKETS + [float("inf")]:
                key = (service, le)
                self.latency_buckets[key] = self.latency_buckets.get(key, 0) + sum(o <= le for o in observations)
                le_text = "+Inf" if le == float("inf") else repr(le)
                lines.append(f'http_request_duration_seconds_bucket{{{labels},le="{le_text}"}} '
                             f"{self.latency_buckets[key]:.0f}")
            self.latency_sum[service] = self.latency_sum.get(service, 0) + sum(observations)
            self.latency_count[service] = self.latency_count.get(service, 0) + len(observations)
            lines.append(f"http_request_duration_seconds_sum{{{labels}}} {self.latency_sum[service]:.4f}")
            lines.append(f"http_request_duration_seconds_count{{{labels}}} {self.latency_count[service]:.0f}")
            # Gauges.
            lines.append(f"job_queue_depth{{{labels}}} {max(0, random.gauss(self.load / 2, 5)):.0f}")
            lines.append(f"process_resident_memory_bytes{{{labels}}} "
                         f"{(150 + 50 * random.random()) * 2**20 * (1 + len(service) / 10):.0f}")
            lines.append(f"up{{{labels},instance=\"{service}-0\"}} 1")
        return lines


def write(lines: list[str]) -> None:
    request = urllib.request.Request(f"{VM_URL}/api/v1/import/prometheus",
                                     data=("\n".join(lines) + "\n").encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def main() -> None:
    tenants = [Tenant(client_id, i) for i, client_id in enumerate(TENANTS)]
    print(f"simulator: writing {len(tenants)} tenants to {VM_URL} every {INTERVAL_S:g}s", flush=True)
    while True:
        lines = [line for tenant in tenants for line in tenant.step()]
        try:
            write(lines)
        except (urllib.error.URLError, OSError) as e:
            # VictoriaMetrics may still be starting: try again next round.
            print(f"simulator: write failed, retrying: {e}", flush=True)
        time.sleep(INTERVAL_S)


if __name__ == "__main__":
    main()
