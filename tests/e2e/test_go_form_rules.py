"""End-to-end: Go's form rules (issue #10, part 1; the table of docs/security.md, "Class 1").

Both backends are Go programs and read a request through `net/http`'s `ParseForm`,
`FormValue` and `mime.ParseMediaType`. Each rule below is one way that reading can differ
from a naive one, sent as alice, byte for byte (a raw socket), through the real Envoy and
VictoriaMetrics with `victoriametrics_extra_label: false`, so that nothing but the filter's
own reading keeps tenants apart. Each answer must be the refusal the rule names (in
Prometheus' error shape, from the filter, never forwarded) or hold alice's data only.
`Content-Length` shorter or longer than the body is the adversarial suite's
(`test_adversarial_http.py`, with and without `extra_label`).

Self-check: the same bytes, without a token, go through the same Envoy config with the
wasm filter removed (`envoy_config.without_wasm`). Where a rule is marked as leaking, they
must expose other tenants' data there: that is the request Go reads differently, and the
filter's refusal is what stops it. The Rust test tests/go_form_rules.rs checks the same
rules against Go itself (the Go form oracle).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import envoy_config
import pytest
from adversary import (ANY_ENCODED, FORM, assert_leaks_directly, assert_not_served,
                       assert_refused_or_confined, backend_snapshot, raw_one,
                       request_bytes)
from conftest import filter_config, launch

ALICE_MATCH = b"match[]=alice_only_total"
LABEL_VALUES = "/api/v1/label/client_id/values"
MULTIPART = (b"--XyZ\r\nContent-Disposition: form-data; name=\"match[]\"\r\n\r\n"
             + b'{__name__=~".+"}' + b"\r\n--XyZ--\r\n")
# A query string with more parameters than the filter forwards (MAX_FORWARDED_PARAMS).
MANY = "&".join(["pad=1"] * 1000)


@dataclass
class Rule:
    """One of Go's form rules, as a request through Envoy.

    `status` is the filter's refusal, or 200 for an answer confined to alice; `leaks`
    says that the same bytes, unfiltered, expose other tenants' data."""

    id: str
    method: str = "POST"
    target: str = LABEL_VALUES
    headers: list[tuple] = field(default_factory=lambda: [("Content-Type", FORM)])
    body: bytes = ALICE_MATCH
    status: int = 415
    leaks: bool = False
    chunked: bool = False  # the body framed with Transfer-Encoding: chunked


def content_type(value: str | bytes) -> list[tuple]:
    return [("Content-Type", value)]


RULES = [
    # mime.ParseMediaType: a repeated parameter is an error and Go reads no body (Go
    # 1.20 and later accept equal repeats). The example.
    Rule("ct-repeated-parameter", headers=content_type(f"{FORM}; a=1; a=2"), leaks=True),
    Rule("ct-repeated-parameter-other-case",
         headers=content_type(f"{FORM}; charset=utf-8; CHARSET=latin1"), leaks=True),
    Rule("ct-repeated-equal-parameter", headers=content_type(f"{FORM}; a=1; a=1"), leaks=True),
    # A broken parameter: Go still returns the type, reads the body and reports an error
    # (Prometheus' /series and /federate refuse on it, VictoriaMetrics does not).
    Rule("ct-parameter-without-value", headers=content_type(f"{FORM}; charset")),
    Rule("ct-unterminated-quote", headers=content_type(f'{FORM}; charset="utf-8')),
    Rule("ct-empty-parameter", headers=content_type(f"{FORM};;")),
    # Envoy joins repeated Content-Type headers with a comma: Go reads no body from
    # "form,text/plain", and reads it with an error when a parameter comes first.
    Rule("ct-two-headers", headers=[("Content-Type", FORM), ("Content-Type", "text/plain")],
         leaks=True),
    Rule("ct-two-headers-with-parameter",
         headers=[("Content-Type", f"{FORM}; charset=utf-8"), ("Content-Type", "text/plain")]),
    Rule("ct-quoted-type", headers=content_type(f'"{FORM}"'), leaks=True),
    # Go 1.25.0 took `{` and `}` out of the token alphabet; a later point release put
    # them back.
    Rule("ct-braces", headers=content_type(f"{FORM}; a={{b}}")),
    Rule("ct-text-plain", headers=content_type("text/plain"), leaks=True),
    Rule("ct-none", headers=[], leaks=True),
    # FormValue reads multipart bodies (ParseMultipartForm); the filter does not.
    Rule("ct-multipart", headers=content_type("multipart/form-data; boundary=XyZ"),
         body=MULTIPART, leaks=True),
    # What Go reads as a form, and the filter too.
    Rule("ct-case-spaces-quotes",
         headers=content_type('APPLICATION/X-WWW-FORM-URLENCODED ; charset="UTF-8" ;'),
         status=200),
    Rule("ct-unicode-space", headers=content_type(f"{FORM};\u00a0charset=utf-8".encode()),
         status=200),
    Rule("ct-dotted-capital-i",
         headers=content_type("appl\u0130cation/x-www-form-urlencoded".encode()), status=200),
    # ParseForm reads the body of POST, PUT and PATCH only.
    Rule("get-with-body", method="GET", status=400, leaks=True),
    Rule("put-with-body", method="PUT", status=405),
    Rule("patch-with-body", method="PATCH", status=405),
    Rule("delete-with-body", method="DELETE", status=405, leaks=True),
    # url.ParseQuery drops a pair with a `;` (Go 1.17 and later; older Go split on it)
    # or a bad escape, keeps the others, and reports an error FormValue ignores.
    Rule("semicolon-in-url", method="GET",
         target=f"{LABEL_VALUES}?match[]=alice_only_total;x=1", headers=[], body=b"",
         status=400, leaks=True),
    Rule("semicolon-in-body", body=ALICE_MATCH + b";x=1", status=400, leaks=True),
    Rule("bad-escape-in-url", method="GET", target=f"{LABEL_VALUES}?match[]=alice_only_total%zz",
         headers=[], body=b"", status=400, leaks=True),
    Rule("bad-escape-in-body", body=ALICE_MATCH + b"%zz", status=400, leaks=True),
    # Go keeps bytes that are not UTF-8; the filter does not guess.
    Rule("not-utf8-once-decoded", body=ALICE_MATCH + b"%ff", status=400),
    # Empty pairs are skipped, `=x` is a parameter named "", `+` is a space.
    Rule("empty-pairs-and-plus", body=b"&&=x&" + ALICE_MATCH + b"&+match[]=x&", status=200),
    Rule("encoded-names", body=b"m%61tch%5b%5d=alice_only_total", status=200),
    # r.Form holds the body's values before the URL's; FormValue takes the first.
    Rule("body-before-url", target="/api/v1/query?query=alice_only_total",
         body=b"query=" + ANY_ENCODED.encode() + b"&query=x", status=200, leaks=True),
    # Prometheus reads match[] only, VictoriaMetrics also match.
    Rule("match-alias-alone", method="GET", target="/api/v1/labels?match=alice_only_total",
         headers=[], body=b"", status=200),
    # Go 1.24.12, 1.25.6 and 1.26 drop every parameter past 10,000 in one place.
    Rule("too-many-url-params", method="GET",
         target=f"{LABEL_VALUES}?match[]=alice_only_total&{MANY}", headers=[], body=b"",
         status=400),
    Rule("too-many-body-params", body=ALICE_MATCH + b"&" + MANY.encode(), status=400),
    # Envoy hands the filter the whole body, however it was framed.
    Rule("chunked-body", headers=[("Content-Type", FORM), ("Transfer-Encoding", "chunked")],
         body=b"match[]=" + ANY_ENCODED.encode(), chunked=True, status=200, leaks=True),
]


@pytest.fixture(scope="module")
def unfiltered(workdir, vm, oidc, wasm):
    """The committed Envoy config without the wasm filter: what reaches VictoriaMetrics
    when nothing reads the request for it."""
    proxy = launch(workdir, "envoy-unfiltered",
                   envoy_config.without_wasm(filter_config(vm, oidc.port, wasm)))
    try:
        yield proxy.wait_ready()
    finally:
        proxy.stop()


def window(vm) -> str:
    return f"start={vm.start_s}&end={vm.seed_s + 60}&time={vm.seed_s}"


def with_window(target: str, vm) -> str:
    return f"{target}{'&' if '?' in target else '?'}{window(vm)}"


def chunk(body: bytes) -> bytes:
    half = len(body) // 2
    return b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (body[:half], body[half:]))\
        + b"0\r\n\r\n"


def build(rule: Rule, vm, token: str | None) -> bytes:
    headers = list(rule.headers)
    if token is not None:
        headers.insert(0, ("Authorization", f"Bearer {token}"))
    body = rule.body
    if rule.chunked:
        body = chunk(body)
    elif body:
        headers.append(("Content-Length", str(len(body))))
    return request_bytes(rule.method, with_window(rule.target, vm), headers, body)


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_go_form_rule(envoy_without_vm_label, unfiltered, vm, tokens, rule, envoy_mode):
    proxy = envoy_without_vm_label
    before = backend_snapshot(proxy)
    answer = raw_one(proxy.url, build(rule, vm, tokens["alice"]))
    assert_refused_or_confined(answer)  # a leak is reported as one, whatever was expected
    assert answer.status == rule.status, answer
    if rule.status == 200:
        assert assert_refused_or_confined(answer) == "confined"
    else:
        assert_refused_or_confined(answer, layers={"filter"})
        assert_not_served(proxy, before, envoy_mode)
    if rule.leaks:
        assert_leaks_directly(raw_one(unfiltered.url, build(rule, vm, None)))


def test_form_body_over_gos_limit(envoy_factory, unfiltered, vm, tokens, envoy_mode):
    """Go's ParseForm reads nothing of a form body over 10 MiB. With `max_body_bytes`
    (and Envoy's buffer) above that, the filter refuses what it would forward larger."""
    limit = 16 << 20
    config = envoy_factory.config()
    plugin = envoy_config.plugin_config(config)
    plugin.update(victoriametrics_extra_label=False, max_body_bytes=limit)
    config = envoy_config.with_plugin_config(config, plugin)
    config["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 2 * limit
    proxy = envoy_factory.start(config, name="envoy-big-bodies").wait_ready()

    body = ALICE_MATCH + b"&pad=" + b"x" * (10 << 20)
    headers = [("Content-Type", FORM), ("Content-Length", str(len(body)))]
    target = with_window(LABEL_VALUES, vm)
    before = backend_snapshot(proxy)
    answer = raw_one(proxy.url, request_bytes(
        "POST", target, [("Authorization", f"Bearer {tokens['alice']}"), *headers], body))
    assert answer.status == 413, answer
    assert_refused_or_confined(answer, layers={"filter"})
    # Under Istio the headers may have gone on ahead of the body (docs/request-lifecycle.md).
    assert_not_served(proxy, before, envoy_mode)
    # Unfiltered, VictoriaMetrics ignores the body, match[] and all.
    assert_leaks_directly(raw_one(unfiltered.url, request_bytes("POST", target, headers, body)))
    # Just under the limit, the same body is read and confined.
    body = ALICE_MATCH + b"&pad=" + b"x" * ((10 << 20) - 100)
    answer = raw_one(proxy.url, request_bytes(
        "POST", target, [("Authorization", f"Bearer {tokens['alice']}"), ("Content-Type", FORM),
                         ("Content-Length", str(len(body)))], body))
    assert assert_refused_or_confined(answer) == "confined", answer
