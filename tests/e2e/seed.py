"""The series the end-to-end tests write to both backends, and what each user may see.

Both tenants share metric names (so a missing matcher shows at once), each has a metric
and a label of its own (so label and name endpoints can leak), and there are traps: a
tenant whose id starts with 1999, a series with no tenant label at all, and tenants whose
ids are PromQL or regex syntax.
"""

from __future__ import annotations

TENANT_LABEL = "client_id"
ALICE_TENANT = "1999"
BOB_TENANT = "2000"

_SERIES: list[dict[str, str]] = []
for tenant, own_metric, own_label in (
    (ALICE_TENANT, "alice_only_total", "alice_label"),
    (BOB_TENANT, "bob_only_total", "bob_label"),
    ("19999", "prefix_trap_total", "trap_label"),
):
    for code in ("200", "500"):
        _SERIES.append({"__name__": "http_requests_total", TENANT_LABEL: tenant,
                        "job": "api", "code": code})
    _SERIES.append({"__name__": "node_memory_bytes", TENANT_LABEL: tenant, "instance": "node-1"})
    _SERIES.append({"__name__": own_metric, TENANT_LABEL: tenant, own_label: "yes"})
# Written by someone who forgot the tenant label: nobody may see it through the filter.
_SERIES.append({"__name__": "http_requests_total", "job": "api", "code": "200"})
# Tenants whose ids are PromQL and regex syntax (the adversarial suite logs in as them):
# each must see exactly its own series, so the filter must quote and escape the id.
ODD_TENANTS = (".*", "1999|2000", "19.9", 'a"b', "back\\slash", '1999"} or {client_id=~".+',
               "amp&eq=pct%25")
for tenant in ODD_TENANTS:
    _SERIES.append({"__name__": "odd_tenant_total", TENANT_LABEL: tenant})

ALL_SERIES: list[dict[str, str]] = _SERIES
STEP_S = 30
POINTS = 21  # ten minutes of samples, ending at the seed time


def series_of(tenant: str) -> list[dict[str, str]]:
    return [s for s in ALL_SERIES if s.get(TENANT_LABEL) == tenant]


def as_key(labels: dict[str, str]) -> frozenset:
    return frozenset(labels.items())


def keys_of(tenant: str) -> set[frozenset]:
    return {as_key(s) for s in series_of(tenant)}


def _escape(value: str) -> str:
    """A label value as the text format writes it: backslash, quote, newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(end_ms: int) -> str:
    """Prometheus text format with explicit timestamps, for /api/v1/import/prometheus."""
    lines = []
    for index, labels in enumerate(ALL_SERIES):
        name = labels["__name__"]
        matchers = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items() if k != "__name__")
        for point in range(POINTS):
            ts = end_ms - (POINTS - 1 - point) * STEP_S * 1000
            lines.append(f"{name}{{{matchers}}} {index * 100 + point} {ts}")
    return "\n".join(lines) + "\n"


def openmetrics(end_ms: int) -> str:
    """The same samples as OpenMetrics text (timestamps in seconds, `# EOF` at the end),
    for `promtool tsdb create-blocks-from openmetrics`."""
    lines = []
    for line in exposition(end_ms).splitlines():
        sample, _, ts = line.rpartition(" ")
        lines.append(f"{sample} {int(ts) / 1000:.3f}")
    return "\n".join(lines) + "\n# EOF\n"
