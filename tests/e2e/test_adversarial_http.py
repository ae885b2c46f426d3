"""Adversarial suite, HTTP layer: parameters, bodies, paths and headers crafted to slip
another tenant's data past the filter (issue #6, part 2).

Every request is sent as alice, byte for byte as written (a raw socket, see
`adversary.py`), through both Envoys: with VictoriaMetrics' `extra_label` and without it,
where the PromQL rewrite alone must hold. Each answer must be a refusal or hold only
alice's data (`assert_refused_or_confined`), and each test pins which layer answered.
Where it is cheap, the same bytes go straight to VictoriaMetrics too and must leak
there: proof that the attack is real and the filter is what stopped it.
"""

from __future__ import annotations

import base64
import json

import pytest
from adversary import (ANY_ENCODED, FORM, VM_ONLY, Answer, assert_leaks_directly,
                       assert_not_served, assert_refused_or_confined, backend_requests,
                       backend_snapshot, leaks_on, raw_exchange, raw_one, request_bytes)

# Placeholders filled per run: {t} the evaluation time, {w} a window around the seed.
T = "time={t}"
W = "start={start}&end={end}"


def fill(text: str, vm) -> str:
    return text.format(t=vm.seed_s, start=vm.start_s, end=vm.seed_s + 60)


def auth(token: str | None) -> list[tuple]:
    return [] if token is None else [("Authorization", f"Bearer {token}")]


def build(method: str, target: str, body: str | bytes | None, token: str | None,
          headers: list[tuple] = ()) -> bytes:
    """A request with alice's token (None: without, for VictoriaMetrics directly); a str
    body is a form with its exact length, bytes are sent with the headers given."""
    hdrs = auth(token) + list(headers)
    if isinstance(body, str):
        data = body.encode()
        hdrs += [("Content-Type", FORM), ("Content-Length", str(len(data)))]
        return request_bytes(method, target, hdrs, data)
    return request_bytes(method, target, hdrs, body or b"")


# ---------------------------------------------------------------------------- parameter pollution

# (id, method, target, form body or None, leaks when sent straight to VictoriaMetrics)
POLLUTION = [
    ("duplicate-query", "GET", f"/api/v1/query?query={ANY_ENCODED}&query=bob_only_total&{T}",
     None, True),
    ("duplicate-match", "GET",
     f"/api/v1/series?match[]=alice_only_total&match[]=bob_only_total&{W}", None, True),
    ("url-and-body-differ", "POST", f"/api/v1/query?query=alice_only_total&{T}",
     f"query={ANY_ENCODED}", True),
    ("body-and-url-differ", "POST", f"/api/v1/query?query={ANY_ENCODED}&{T}",
     "query=bob_only_total", True),
    ("match-in-url-and-body", "POST", f"/api/v1/series?match[]=alice_only_total&{W}",
     "match[]=bob_only_total&match=prefix_trap_total", True),
    ("empty-first-query", "GET", f"/api/v1/query?query=&query={ANY_ENCODED}&{T}", None, False),
    ("empty-first-match", "GET", f"/api/v1/series?match[]=&match[]={ANY_ENCODED}&{W}",
     None, False),
    ("valueless-query", "GET", f"/api/v1/query?query&query={ANY_ENCODED}&{T}", None, False),
    # `match` is VictoriaMetrics' alias of match[]; Prometheus ignores it.
    ("match-alias", "GET", f"/api/v1/series?match={ANY_ENCODED}&{W}", None, VM_ONLY),
    ("match-alias-on-export", "GET", f"/api/v1/export?match={ANY_ENCODED}&{W}", None, VM_ONLY),
    ("match-alias-on-label-values", "GET",
     f"/api/v1/label/client_id/values?match={ANY_ENCODED}&{W}", None, True),
    ("match-alias-on-labels", "GET", f"/api/v1/labels?match={ANY_ENCODED}&{W}", None, True),
    ("encoded-query-name", "GET", f"/api/v1/query?%71uery={ANY_ENCODED}&{T}", None, True),
    ("encoded-match-name", "GET", f"/api/v1/series?match%5B%5D={ANY_ENCODED}&{W}", None, True),
    ("lower-hex-match-name", "GET", f"/api/v1/series?m%61tch%5b%5d={ANY_ENCODED}&{W}",
     None, True),
    ("encoded-name-in-body", "POST", f"/api/v1/query?{T}", f"q%75ery={ANY_ENCODED}", True),
    ("plus-as-space", "GET", f"/api/v1/query?query=sum+by+(client_id)+({ANY_ENCODED})&{T}",
     None, True),
    ("percent-20-as-space", "GET",
     f"/api/v1/query?query=sum%20by%20(client_id)%20({ANY_ENCODED})&{T}", None, True),
    ("plus-in-body", "POST", f"/api/v1/query?{T}", f"query=sum+by+(client_id)+({ANY_ENCODED})",
     True),
    ("name-with-trailing-plus", "GET", f"/api/v1/query?query+={ANY_ENCODED}&{T}", None, False),
    ("semicolon-between-pairs", "GET", f"/api/v1/query?{T};x=1&query={ANY_ENCODED}", None, True),
    ("semicolon-inside-query-pair", "GET",
     f"/api/v1/query?query=alice_only_total;query={ANY_ENCODED}&{T}", None, False),
    ("semicolon-in-body", "POST", f"/api/v1/query?{T}", f"x=1;y=2&query={ANY_ENCODED}", False),
    ("other-case-name", "GET", f"/api/v1/query?Query={ANY_ENCODED}&query=alice_only_total&{T}",
     None, False),
    ("encoded-ampersand-in-value", "GET",
     f"/api/v1/query?query=alice_only_total%26query%3D{ANY_ENCODED}&{T}", None, False),
    ("client-extra-filters-encoded", "GET",
     f"/api/v1/query?query=http_requests_total&extra%5Ffilters%5B%5D=%7Bclient_id%3D%222000%22%7D"
     f"&extra_label=client_id%3D2000&{T}", None, False),
]


@pytest.mark.parametrize("method,target,body,leaks_directly",
                         [c[1:] for c in POLLUTION], ids=[c[0] for c in POLLUTION])
def test_parameter_pollution(proxy, store, backend, tokens, method, target, body,
                            leaks_directly):
    target = fill(target, store)
    body = fill(body, store) if body else body
    answer = raw_one(proxy.url, build(method, target, body, tokens["alice"]))
    outcome = assert_refused_or_confined(answer, layers={"confined", "filter", "backend"})
    if outcome == "filter":
        # 403: a VictoriaMetrics endpoint the filter knows no such path for on Prometheus.
        vm_path = backend == "prometheus" and "/api/v1/export" in target
        assert answer.status == (403 if vm_path else 400), answer
    if leaks_on(backend, leaks_directly):
        assert_leaks_directly(raw_one(store.url, build(method, target, body, None)))


# ---------------------------------------------------------------------------- body tricks

MULTIPART = (b"--XyZ\r\nContent-Disposition: form-data; name=\"query\"\r\n\r\n"
             + b'{__name__=~".+"}' + b"\r\n--XyZ--\r\n")
ANY_FORM = f"query={ANY_ENCODED}".encode()


def sized(content_type: str | None, body: bytes, *extra: tuple) -> tuple[list[tuple], bytes]:
    headers = [("Content-Type", content_type)] if content_type else []
    return headers + [("Content-Length", str(len(body))), *extra], body


def chunked(*chunks: bytes, trailers: bytes = b"") -> bytes:
    out = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
    return out + b"0\r\n" + trailers + b"\r\n"


# (id, method, headers and body, layers that may answer, status, leaks directly)
BODIES = [
    ("multipart", "POST", sized("multipart/form-data; boundary=XyZ", MULTIPART),
     {"filter"}, 415, True),
    ("json", "POST", sized("application/json", b'{"query": "{__name__=~\\".+\\"}"}'),
     {"filter"}, 415, False),
    ("text-plain", "POST", sized("text/plain", ANY_FORM), {"filter"}, 415, False),
    ("no-content-type", "POST", sized(None, ANY_FORM), {"filter"}, 415, False),
    ("content-type-with-suffix", "POST", sized(FORM + "x", ANY_FORM), {"filter"}, 415, False),
    ("content-type-list", "POST", sized(f"{FORM}, multipart/form-data; boundary=XyZ",
                                        ANY_FORM), {"filter"}, 415, False),
    ("two-content-types", "POST",
     ([("Content-Type", FORM), ("Content-Type", "multipart/form-data; boundary=XyZ"),
       ("Content-Length", str(len(ANY_FORM)))], ANY_FORM), {"filter"}, 415, False),
    ("form-upper-case-with-charset", "POST",
     sized("APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8", ANY_FORM),
     {"confined"}, 200, True),
    ("chunked-split-inside-escapes", "POST",
     ([("Content-Type", FORM), ("Transfer-Encoding", "chunked")],
      chunked(b"que", b"ry=%7B__name__%3", b"D~%22.%2B%22%7D")), {"confined"}, 200, True),
    ("chunked-with-trailers", "POST",
     ([("Content-Type", FORM), ("Transfer-Encoding", "chunked"), ("Trailer", "X-Query")],
      chunked(ANY_FORM, trailers=b"X-Query: bob_only_total\r\n")), {"confined"}, 200, True),
    ("chunked-and-content-length", "POST",
     ([("Content-Type", FORM), ("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
      chunked(ANY_FORM)), {"envoy"}, 400, False),
    ("gzip-encoded", "POST", sized(FORM, b"\x1f\x8b\x08\x00", ("Content-Encoding", "gzip")),
     {"filter"}, 415, False),
    # Go reads no form body on a GET: the filter would rewrite what the backend never
    # reads, and leave the URL unconfined (a leak on the label endpoints, found by
    # fuzzing), so a GET with a body is refused.
    ("get-with-form-body", "GET", sized(FORM, b"query=bob_only_total"), {"filter"}, 400, False),
    ("oversize-declared", "POST", sized(FORM, ANY_FORM + b"&pad=" + b"x" * (1024 * 1024)),
     {"filter"}, 413, False),
    # Without a length, whichever sees the body pass 1 MiB first refuses it: the filter's
    # max_body_bytes or Envoy's own buffer limit for a paused request (both 413).
    ("oversize-chunked", "POST",
     ([("Content-Type", FORM), ("Transfer-Encoding", "chunked")],
      chunked(ANY_FORM, *[b"&pad=" + b"x" * 65536] * 17)), {"filter", "envoy"}, 413, False),
]


@pytest.mark.parametrize("method,headers_body,layers,status,leaks_directly",
                         [c[1:] for c in BODIES], ids=[c[0] for c in BODIES])
def test_body_tricks(proxy, store, backend, tokens, method, headers_body, layers, status,
                     leaks_directly, envoy_mode):
    headers, body = headers_body
    target = fill(f"/api/v1/query?{T}", store)
    before = backend_snapshot(proxy)
    answer = raw_one(proxy.url, build(method, target, body, tokens["alice"], headers))
    assert answer.status == status, answer
    outcome = assert_refused_or_confined(answer, layers=layers)
    if outcome in ("filter", "envoy"):
        assert_not_served(proxy, before, envoy_mode)
    if leaks_on(backend, leaks_directly):
        assert_leaks_directly(raw_one(store.url, build(method, target, body, None, headers)))


def test_content_length_shorter_than_body_smuggles_nothing(proxy, store, tokens):
    # The bytes after the declared length are read as a second request on the same
    # connection: it passes the filter like any other and, without a token, gets 401.
    first = f"query={ANY_ENCODED}".encode()
    smuggled = request_bytes("GET", fill(f"/api/v1/query?query={ANY_ENCODED}&{T}", store))
    head = request_bytes("POST", fill(f"/api/v1/query?{T}", store),
                         auth(tokens["alice"]) + [("Content-Type", FORM),
                                                  ("Content-Length", str(len(first)))])
    head = head.replace(b"Connection: close\r\n", b"")
    answers = raw_exchange(proxy.url, head + first + smuggled, expect=2)
    assert [a.status for a in answers] == [200, 401], answers
    assert assert_refused_or_confined(answers[0]) == "confined"
    assert assert_refused_or_confined(answers[1]) == "filter"


def test_content_length_longer_than_body_is_never_forwarded(proxy, store, tokens, envoy_mode):
    # The body never completes (the client half-closes): nothing may reach the backend.
    before = backend_snapshot(proxy)
    data = build("POST", fill(f"/api/v1/query?{T}", store), None, tokens["alice"],
                 [("Content-Type", FORM), ("Content-Length", "500")]) + ANY_FORM
    for answer in raw_exchange(proxy.url, data, expect=None, shut_write=True):
        assert answer.status >= 400, answer
        assert_refused_or_confined(answer)
    assert_not_served(proxy, before, envoy_mode)


# ---------------------------------------------------------------------------- path tricks

# (id, target, layers, status). Envoy merges slashes and resolves dot segments before
# the filter sees the path (envoy/envoy.yaml); the filter refuses whatever is left.
PATHS = [
    ("double-slash-prefix", f"//api/v1/query?query={ANY_ENCODED}&{T}", {"confined"}, 200),
    ("double-slash-inside", f"/api//v1/query?query={ANY_ENCODED}&{T}", {"confined"}, 200),
    ("dot-dot", f"/api/v1/../v1/query?query={ANY_ENCODED}&{T}", {"confined"}, 200),
    ("dot", f"/api/v1/./query?query={ANY_ENCODED}&{T}", {"confined"}, 200),
    ("encoded-dot-dot", f"/api/v1/%2e%2e/v1/query?query={ANY_ENCODED}&{T}", {"confined"}, 200),
    ("dot-dot-to-labels", f"/api/v1/label/../labels?{W}", {"confined"}, 200),
    ("upper-case", f"/API/v1/query?query={ANY_ENCODED}&{T}", {"filter"}, 403),
    ("trailing-slash", f"/api/v1/query/?query={ANY_ENCODED}&{T}", {"filter"}, 403),
    ("encoded-slash", f"/api/v1%2Fquery?query={ANY_ENCODED}&{T}", {"filter"}, 400),
    ("encoded-slash-lower", f"/api%2fv1/series?match[]={ANY_ENCODED}&{W}", {"filter"}, 400),
    ("encoded-slash-in-label-name", f"/api/v1/label/client_id%2Fvalues?{W}", {"filter"}, 400),
    ("encoded-question-mark", f"/api/v1/query%3Fquery={ANY_ENCODED}&{T}", {"filter"}, 403),
    ("encoded-letter", f"/api/v1/qu%65ry?query={ANY_ENCODED}&{T}", {"confined"}, 200),
    ("encoded-nul", f"/api/v1/query%00?query={ANY_ENCODED}&{T}", {"envoy"}, 400),
    ("path-parameter", f"/api/v1/query;x=1?query={ANY_ENCODED}&{T}", {"filter"}, 400),
    # Envoy's path normalisation turns `\` into `/`.
    ("backslash", f"/api\\v1/query?query={ANY_ENCODED}&{T}", {"confined"}, 200),
    ("prometheus-prefix", f"/prometheus/api/v1/query?query={ANY_ENCODED}&{T}", {"confined"}, 200),
    ("prometheus-prefix-double-slash", f"/prometheus//api/v1/series?match[]={ANY_ENCODED}&{W}",
     {"confined"}, 200),
    ("prometheus-twice", f"/prometheus/prometheus/api/v1/query?query={ANY_ENCODED}&{T}",
     {"filter"}, 403),
    ("absolute-form", f"http://127.0.0.1/api/v1/query?query={ANY_ENCODED}&{T}", {"confined"}, 200),
    ("fragment", f"/api/v1/query#x?query={ANY_ENCODED}&{T}", {"envoy"}, 400),
]


# Istio's default path normalization (meshConfig.pathNormalization BASE) resolves dot
# segments but does not merge slashes: the filter refuses what is left of `//` itself.
ISTIO_PATHS = {
    "double-slash-prefix": ({"filter"}, 400),
    "double-slash-inside": ({"filter"}, 400),
    "prometheus-prefix-double-slash": ({"filter"}, 400),
}


@pytest.mark.parametrize("case", [c[0] for c in PATHS])
def test_path_tricks(proxy, store, backend, tokens, case, envoy_mode):
    _, target, layers, status = next(c for c in PATHS if c[0] == case)
    if backend == "prometheus" and target.startswith("/prometheus/"):
        # VictoriaMetrics' prefix: Prometheus serves no such path, the filter refuses it.
        layers, status = {"filter"}, 403
    if envoy_mode == "istio":
        # The `//` is refused first, whatever the path.
        layers, status = ISTIO_PATHS.get(case, (layers, status))
    answer = raw_one(proxy.url, build("GET", fill(target, store), None, tokens["alice"]))
    assert answer.status == status, answer
    assert_refused_or_confined(answer, layers=layers)


# Paths VictoriaMetrics serves that would leak other tenants' data, statistics or
# internals, or write and delete; `/graphite/...` speaks another query language.
SIDE_DOORS = [
    "/api/v1/export/native", "/api/v1/export/csv", "/api/v1/status/top_queries",
    "/api/v1/status/active_queries", "/api/v1/series/count", "/api/v1/import",
    "/api/v1/import/prometheus", "/api/v1/import/native", "/api/v1/import/csv",
    "/api/v1/write", "/api/v1/admin/tsdb/delete_series", "/api/v1/admin/tsdb/snapshot",
    "/snapshot/create", "/snapshot/list", "/vmui", "/vmui/", "/graph", "/metrics", "/flags",
    "/internal/force_flush", "/internal/force_merge", "/internal/resetRollupResultCache",
    "/graphite/metrics/find", "/graphite/metrics/expand", "/graphite/tags",
    "/graphite/tags/findSeries", "/graphite/tags/autoComplete/tags", "/graphite/render",
    "/metrics/find", "/tags", "/prometheus/api/v1/export/native",
    "/prometheus/api/v1/status/top_queries", "/prometheus/api/v1/series/count",
    "/prometheus/metrics", "/debug/pprof/heap", "/-/reload", "/api/v1/status/config",
    "/api/v1/status/flags", "/api/v1/targets", "/influx/write", "/datadog/api/v1/series",
    "/api/v1/query_range/", "/api/v1/labels/", "/federate/",
]
SIDE_DOOR_QUERY = f"match[]={ANY_ENCODED}&query=*&target=*&{W}"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_backend_side_doors_are_403_and_never_forwarded(proxy, store, tokens, method):
    before = backend_requests(proxy)
    for path in SIDE_DOORS:
        target = fill(f"{path}?{SIDE_DOOR_QUERY}", store)
        body = fill(SIDE_DOOR_QUERY, store) if method == "POST" else None
        answer = raw_one(proxy.url, build(method, target, body, tokens["alice"]))
        assert answer.status == 403, (path, answer)
        assert_refused_or_confined(answer, layers={"filter"})
    assert backend_requests(proxy) == before


# Read-only side doors that, asked directly, answer with other tenants' data: the 403s
# above are what keeps it from alice. (Writing ones are never sent to the backend.)
LEAKY_READS = ["/api/v1/export/native", "/api/v1/export/csv?format=__name__,client_id",
               "/api/v1/series/count", "/graphite/metrics/find",
               "/prometheus/api/v1/export/native"]


def test_side_doors_do_leak_when_asked_directly(vm):
    for path in LEAKY_READS:
        target = fill(f"{path}{'&' if '?' in path else '?'}{SIDE_DOOR_QUERY}", vm)
        answer = raw_one(vm.url, build("GET", target, None, None))
        assert answer.status == 200, (path, answer)
        counted = path.endswith("/count") and answer.json()["data"][0] > 4
        assert counted or b"bob_only_total" in answer.body or b"2000" in answer.body, \
            (path, answer)


# ---------------------------------------------------------------------------- header tricks


def jwt_payload(claims: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")


# (id, headers in place of alice's own, layers, status)
HEADERS = [
    ("account-and-project-id", lambda t: [("Authorization", f"Bearer {t['alice']}"),
                                          ("AccountID", "2000"), ("ProjectID", "0")],
     {"confined"}, 200),
    ("forged-jwt-payload-header", lambda t: [("Authorization", f"Bearer {t['alice']}"),
                                             ("x-jwt-payload", jwt_payload({"client_id": "2000"}))],
     {"confined"}, 200),
    ("two-authorization-alice-first", lambda t: [("Authorization", f"Bearer {t['alice']}"),
                                                 ("Authorization", "Bearer x")], {"filter"}, 401),
    ("two-authorization-alice-second", lambda t: [("Authorization", "Bearer x"),
                                                  ("Authorization", f"Bearer {t['alice']}")],
     {"filter"}, 401),
    ("two-authorization-alice-and-bob", lambda t: [("Authorization", f"Bearer {t['alice']}"),
                                                   ("Authorization", f"Bearer {t['bob']}")],
     {"filter"}, 401),
    ("two-tokens-in-one-header", lambda t: [("Authorization",
                                             f"Bearer {t['alice']} {t['bob']}")], {"filter"}, 401),
    ("non-utf8-token", lambda t: [("Authorization", f"Bearer {t['alice']}".encode() + b"\xff")],
     {"filter"}, 401),
    ("latin1-token", lambda t: [("Authorization", b"Bearer caf\xe9")], {"filter"}, 401),
    ("long-token", lambda t: [("Authorization", "Bearer " + "a" * 9000)], {"filter"}, 401),
    ("huge-token", lambda t: [("Authorization", "Bearer " + "a" * 100_000)], {"envoy"}, 431),
    ("bearer-alone", lambda t: [("Authorization", "Bearer")], {"filter"}, 401),
    ("bearer-and-blanks", lambda t: [("Authorization", "Bearer    ")], {"filter"}, 401),
    ("bearer-tab-token", lambda t: [("Authorization", f"Bearer\t{t['alice']}")], {"filter"}, 401),
    # Envoy's codec unfolds an obs-fold continuation line into one value.
    ("folded-header", lambda t: [("Authorization", f"Bearer\r\n {t['alice']}")],
     {"confined"}, 200),
    ("no-authorization", lambda t: [], {"filter"}, 401),
]


@pytest.mark.parametrize("make_headers,layers,status", [c[1:] for c in HEADERS],
                         ids=[c[0] for c in HEADERS])
def test_header_tricks(proxy, store, tokens, make_headers, layers, status):
    before = backend_requests(proxy)
    target = fill(f"/api/v1/query?query={ANY_ENCODED}&{T}", store)
    answer = raw_one(proxy.url, build("GET", target, None, None, make_headers(tokens)))
    assert answer.status == status, answer
    outcome = assert_refused_or_confined(answer, layers=layers)
    if outcome != "confined":
        assert backend_requests(proxy) == before
        for token in tokens.values():
            assert token not in answer.text
