"""Adversarial suite, PromQL layer: queries written to dodge the tenant matcher, and
tenants whose ids are themselves PromQL or regex syntax (issue #6, part 2).

Each query goes, as alice, through both Envoys (with and without VictoriaMetrics'
`extra_label`) and, for MetricsQL syntax, through an Envoy in dialect `metricsql`. The
answer must be a refusal or hold only alice's data; the same query sent straight to
VictoriaMetrics must leak, where it can, so the test proves the rewrite did the work.
"""

from __future__ import annotations

import envoy_config
import pytest
import requests
import seed
from adversary import (ANY_SERIES, VM_ONLY, Answer, assert_leaks_directly,
                       assert_refused_or_confined, leaks_on)
from conftest import REQUEST_TIMEOUT_S, bearer, call

DEEP = 60  # nesting deeper than any dashboard's, just below the lexer's cap of 64
TOO_DEEP = 5000  # far beyond the lexer's nesting cap


def query(url: str, token: str | None, text: str, vm) -> Answer:
    """An instant query by POST form, as Grafana sends it (no token: straight to VM)."""
    headers = bearer(token) if token else {}
    response = requests.post(f"{url}/api/v1/query", data={"query": text, "time": vm.seed_s},
                             headers=headers, timeout=REQUEST_TIMEOUT_S)
    return Answer.of(response)


# (id, query, layers that may answer, leaks when sent straight to the backend: True on
# both, VM_ONLY where Prometheus refuses the query itself).
# "backend" here is VictoriaMetrics refusing the rewritten query (422): its MetricsQL
# parser does not know some Prometheus 3 syntax; nothing is returned then.
PROMQL = [
    # __name__ games: the metric name is one more matcher; ours is added beside it.
    ("name-matcher", '{__name__="bob_only_total"}', {"confined"}, True),
    ("name-regex", '{__name__=~"bob.*|alice.*|prefix.*"}', {"confined"}, True),
    ("name-and-name", 'bob_only_total{__name__="bob_only_total"}', {"filter"}, VM_ONLY),
    ("metric-named-like-tenant-label", 'client_id{client_id="2000"} or bob_only_total',
     {"confined"}, True),
    ("name-rewritten-by-label-replace",
     'label_replace({__name__=~".+"}, "__name__", "alice_only_total", "", "")', {"confined"},
     True),
    # Quoted label names (Prometheus 3 UTF-8 syntax) spelling the tenant label.
    ("quoted-tenant-label", '{"client_id"="2000"}', {"confined", "backend"}, False),
    ("quoted-tenant-label-regex", '{"client_id"=~".+"}', {"confined", "backend"}, False),
    ("quoted-metric-name", '{"bob_only_total"}', {"confined", "backend"}, False),
    ("quoted-name-label", '{"__name__"="bob_only_total"}', {"confined", "backend"}, False),
    # Regex and negative matchers on the tenant label: ours is ANDed with them.
    ("tenant-regex-any", '{__name__=~".+", client_id=~".*"}', {"confined"}, True),
    ("tenant-regex-not-alice", '{__name__=~".+", client_id!~"1999"}', {"confined"}, True),
    ("tenant-not-equal", '{__name__=~".+", client_id!="1999"}', {"confined"}, True),
    ("tenant-regex-both", '{__name__=~".+", client_id=~"2000|1999"}', {"confined"}, True),
    ("tenant-regex-case-insensitive", '{__name__=~".+", client_id=~"(?i)2000"}', {"confined"},
     True),
    ("tenant-empty-matches-unlabelled", 'http_requests_total{client_id=""}', {"confined"}, True),
    ("tenant-regex-only", '{client_id=~".+"}', {"confined"}, True),
    # Comments and strings that look like structure.
    ("comment-hides-brace", "alice_only_total # {", {"confined"}, False),
    ("comment-then-newline", 'alice_only_total # }\nor bob_only_total', {"confined"}, True),
    # Prometheus ends a comment at a lone \r, VictoriaMetrics and the filter's lexer once
    # did not: the filter refuses it rather than read a different query (fuzzing found it).
    ("comment-then-carriage-return", 'alice_only_total # x\ror bob_only_total', {"filter"},
     False),
    ("comment-only-line-first", '# {client_id="1999"}\nbob_only_total', {"confined"}, True),
    ("string-with-brace", 'http_requests_total{job="}"} or bob_only_total', {"confined"}, True),
    ("string-with-escaped-quote", 'http_requests_total{job="\\"} or bob_only_total{x=\\""}',
     {"confined"}, False),
    ("single-quoted-brace", "http_requests_total{job='}'} or bob_only_total", {"confined"}, True),
    # VictoriaMetrics' lexer reads `\`` in a raw string as an escaped backtick (and then
    # fails to unquote the string); PromQL ends the string there. The filter refuses it.
    ("backtick-with-backslash",
     'label_replace(alice_only_total, "x", `\\`, "y", ".*") or bob_only_total', {"filter"},
     False),
    ("backtick-smuggling",
     'label_replace(alice_only_total, "x", `\\`, "y", `, "a", "b") or bob_only_total # `)',
     {"filter"}, False),
    ("hash-inside-string", 'label_replace(alice_only_total, "x", "#", "", "") or bob_only_total',
     {"confined"}, True),
    # Deep nesting and long chains.
    ("deep-parentheses", "(" * DEEP + "bob_only_total" + ")" * DEEP, {"confined"}, True),
    ("deep-function-nesting", "abs(" * DEEP + "bob_only_total" + ")" * DEEP, {"confined"},
     True),
    ("nesting-beyond-the-cap", "(" * TOO_DEEP + "bob_only_total" + ")" * TOO_DEEP, {"filter"},
     False),
    ("long-or-chain", " or ".join(["bob_only_total"] * 300), {"confined"}, True),
    # MetricsQL syntax under dialect promql: refused, never guessed at.
    ("metricsql-or-filter", '{client_id="2000" or client_id="1999"}', {"filter"}, False),
    ("metricsql-with", "WITH (x = bob_only_total) x", {"filter"}, VM_ONLY),
    ("metricsql-with-lower-case", "with (x = {client_id=\"2000\"}) bob_only_total{x}",
     {"filter"}, False),
    # @ and offset in every position.
    ("at-end", "bob_only_total @ end()", {"confined"}, True),
    ("negative-offset", "bob_only_total offset -5m", {"confined"}, True),
    ("offset-then-at", "bob_only_total offset 1m @ end()", {"confined"}, True),
    ("at-then-offset-on-range", "count_over_time(bob_only_total[5m] @ end() offset 1m)",
     {"confined"}, True),
    ("at-on-subquery", "max_over_time(bob_only_total[5m:1m] @ end())", {"confined"}, True),
    # Subqueries of subqueries.
    ("subquery-of-subquery",
     'max_over_time(max_over_time({__name__=~".+"}[5m:1m])[10m:2m])', {"confined"}, True),
    ("subquery-of-rate-subquery",
     "max_over_time(rate(max_over_time(bob_only_total[5m:1m])[5m:1m])[10m:1m])", {"confined"},
     True),
    # Functions and operators whose arguments are not plain selectors.
    ("count-values-into-tenant-label", 'count_values("client_id", {__name__=~".+"})',
     {"confined"}, False),
    ("absent-of-other-tenant", 'absent(bob_only_total{client_id="2000"})', {"confined"}, False),
    ("vector-matching-on-nothing", "vector(1) and on() bob_only_total", {"confined"}, False),
    ("topk-everything", 'topk(1000, {__name__=~".+"})', {"confined"}, True),
    ("info-without-data-labels", "info(alice_only_total)", {"filter"}, False),
    # With data labels, ours takes part in selecting the info series; this
    # VictoriaMetrics has no info() and refuses it.
    ("info-with-data-labels", 'info(alice_only_total, {bob_label=~".+"})', {"backend"}, False),
]


@pytest.mark.parametrize("text,layers,leaks_directly", [c[1:] for c in PROMQL],
                         ids=[c[0] for c in PROMQL])
def test_promql_tricks(proxy, store, backend, tokens, text, layers, leaks_directly):
    answer = query(proxy.url, tokens["alice"], text, store)
    outcome = assert_refused_or_confined(answer, layers=layers)
    if outcome == "filter":
        assert answer.status == 400 and answer.json()["errorType"] == "bad_data", answer
    if leaks_on(backend, leaks_directly):
        assert_leaks_directly(query(store.url, None, text, store))


# ---------------------------------------------------------------------------- MetricsQL dialect


@pytest.fixture(scope="module")
def metricsql_envoy(workdir, vm, oidc, wasm, envoy_mode):
    """Dialect `metricsql`, without VictoriaMetrics' `extra_label`: the rewrite alone."""
    from conftest import EnvoyFactory

    factory = EnvoyFactory(workdir, vm, oidc, wasm, envoy_mode)
    try:
        config = factory.config()
        plugin = envoy_config.plugin_config(config)
        plugin.update(dialect="metricsql", victoriametrics_extra_label=False)
        config = {**envoy_config.with_plugin_config(config, plugin), "_ports": config["_ports"]}
        yield factory.start(config, "envoy-metricsql").wait_ready()
    finally:
        factory.stop()


METRICSQL = [
    # Or-filters get our matcher in every branch; this VictoriaMetrics predates them
    # and refuses the query, a newer one would AND ours into each branch.
    ("or-filter", '{client_id="2000" or __name__="bob_only_total"}', {"confined", "backend"}),
    ("or-filter-upper-case", 'bob_only_total{client_id="1999" OR client_id="2000"}',
     {"confined", "backend"}),
    ("with-template", "WITH (x = bob_only_total) x", {"filter"}),
    ("with-template-as-filter", 'with (f = {client_id="2000"}) bob_only_total{f}', {"filter"}),
    ("implicit-window", "rate(bob_only_total)", {"confined"}),
    ("keep-metric-names", 'rate({__name__=~".+"}[5m]) keep_metric_names', {"confined"}),
    ("limit-modifier", 'sum({__name__=~".+"}) by (client_id) limit 10', {"confined"}),
    ("default-operator", "bob_only_total default alice_only_total", {"confined"}),
    ("if-operator", "alice_only_total if bob_only_total", {"confined"}),
    ("inf-with-window", "count_over_time(inf[1h])", {"confined"}),
    ("graphite-filter", '{__graphite__="bob_only_total"}', {"confined"}),
]


@pytest.mark.parametrize("text,layers", [c[1:] for c in METRICSQL], ids=[c[0] for c in METRICSQL])
def test_metricsql_tricks(metricsql_envoy, vm, tokens, text, layers):
    outcome = assert_refused_or_confined(query(metricsql_envoy.url, tokens["alice"], text, vm),
                                         layers=layers)
    assert outcome in layers


# ---------------------------------------------------------------------------- tenant values


def odd_user(oidc, claim) -> str:
    """A user whose tenant claim is `claim`, and a token from the real login flow."""
    sub = f"odd-{abs(hash(repr(claim)))}"
    oidc.set_user(sub, {"client_id": claim})
    return oidc.login(sub)


@pytest.mark.parametrize("claim", [[t] for t in seed.ODD_TENANTS] + [
    [".*", "19.9"], ["1999|2000", 'a"b', "back\\slash"], ["1999", ".*"],
    ['1999"} or {client_id=~".+', "amp&eq=pct%25"],
], ids=lambda c: "+".join(c))
def test_tenant_ids_that_are_promql_or_regex_syntax_see_exactly_their_own(proxy, store, backend,
                                                                         oidc, claim):
    # One claim value is matched with `=`, several with `=~` and each value escaped: a
    # tenant ".*" or "19.9" must not match 1999, "1999|2000" neither of the two.
    token = odd_user(oidc, claim if len(claim) > 1 else claim[0])
    want = set().union(*(seed.keys_of(t) for t in claim))
    own = tuple(claim)
    answer = query(proxy.url, token, ANY_SERIES, store)
    assert assert_refused_or_confined(answer, own) == "confined"
    assert {seed.as_key(s["metric"]) for s in answer.json()["data"]["result"]} == want
    window = {"start": store.start_s, "end": store.seed_s + 60}
    series = call(proxy, "GET", "/api/v1/series", token, {"match[]": ANY_SERIES, **window})
    assert {seed.as_key(s) for s in series.json()["data"]} == want, series.text[:300]
    # Prometheus serves label values by GET only.
    method = "POST" if backend == "victoriametrics" else "GET"
    values = call(proxy, method, "/api/v1/label/client_id/values", token, window)
    assert sorted(values.json()["data"]) == sorted(claim), values.text[:300]
