"""Captures the rules and alerts payloads the response filter's unit tests read
(`tests/data/rules/`), from the real rule engines: vmalert 1.79 (directly and through
VictoriaMetrics' `-vmalert.proxyURL`) and Prometheus 2.42, both evaluating
`tests/e2e/rules/*.yml` over the seeded series.

    .venv/bin/python tests/e2e/capture_rule_payloads.py

Run it again when the rule files or the engines change; the unit tests then check the
filter against the new shapes.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))

import seed  # noqa: E402
from procs import free_port, stop_all, wait_until  # noqa: E402
from services import AlertSink, Prometheus, VictoriaMetrics, VmAlert  # noqa: E402

HERE = Path(__file__).parent
RULES = tuple(sorted((HERE / "rules").glob("*.rules.yml")))
OUT = HERE.parent / "data" / "rules"


def firing(url: str, want: int) -> bool:
    alerts = requests.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"] or []
    return sum(a["state"] == "firing" for a in alerts) >= want


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    sink = AlertSink()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            end_ms = int(time.time() * 1000)
            prom = Prometheus(work, seed.openmetrics(end_ms), RULES)
            vmalert_port = free_port()
            vm = VictoriaMetrics(work, vmalert_url=f"http://127.0.0.1:{vmalert_port}")
            vm.import_prometheus(seed.exposition(end_ms))
            vm.force_flush()
            vmalert = VmAlert(work, vm.url, sink.url, RULES, port=vmalert_port)
            empty_rules = work / "empty.rules.yml"
            empty_rules.write_text("groups: []\n")
            empty = VmAlert(work, vm.url, sink.url, (empty_rules,), label="vmalert-empty")
            # Every rule that can fire has fired: 10 alerts (5 shared, 2 per tenant, 2 own-metrics, 1 trap).
            for url in (prom.url, vmalert.url):
                wait_until(lambda: firing(url, 10), f"alerts firing at {url}", timeout_s=60)
            sources = {
                "prometheus-2.42": prom.url,
                "vmalert-1.79": vmalert.url,
                "victoriametrics-1.79-proxy": vm.url,
            }
            for name, url in sources.items():
                for what in ("rules", "alerts"):
                    body = requests.get(f"{url}/api/v1/{what}", timeout=5).content
                    (OUT / f"{name}-{what}.json").write_bytes(body)
            (OUT / "vmalert-1.79-no-groups-rules.json").write_bytes(
                requests.get(f"{empty.url}/api/v1/rules", timeout=5).content)
            for path in sorted(OUT.glob("*.json")):
                json.loads(path.read_bytes())
                print(f"{path.relative_to(HERE.parent.parent)}: {path.stat().st_size} bytes")
        finally:
            stop_all()
            sink.stop()


if __name__ == "__main__":
    main()
