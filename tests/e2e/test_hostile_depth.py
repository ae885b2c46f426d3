"""Hostile depth (issue #10, part 3): deep queries and deep claims, through the real Envoy.

V8's stack is far smaller than a native one, and a query that overflowed it trapped the
module in `proxy_on_request_headers` or `proxy_on_request_body`; with FAIL_CLOSED that
worker then answered 503 to every tenant until Envoy restarted. So every recursive form
of the language goes through the real Envoy and the built module at the largest size
the filter accepts (answered: 200, or a 400 for a form that is not a valid query) and one
step over it (400, in Prometheus' shape: "nests too deeply" or "too many operators"),
then at the size of the issue's example (8,000 modifiers, refused), by GET and POST,
in both dialects. The suite's fixtures then check that bob is still served on both
workers, and that no Envoy log shows a Wasm trap.

The forms and their largest sizes follow tests/recursion.rs, which checks the same table
against the engine natively; the caps come from src/promql/lexer.rs. How far below V8's
own limit they sit was measured with tests/e2e/v8_depth.py (docs/security.md).
"""

from __future__ import annotations

import json
import re
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Callable

import pytest
from conftest import assert_prometheus_error, bearer, call, filter_config, launch, send
from envoy_config import REPO, plugin_config, with_plugin_config
from services import wasm_traps

_LEXER = (REPO / "src/promql/lexer.rs").read_text()
MAX_NESTING = int(re.search(r"pub const MAX_NESTING: usize = (\d+);", _LEXER).group(1))
MAX_BINARY_OPERATORS = int(
    re.search(r"pub const MAX_BINARY_OPERATORS: usize = (\d+);", _LEXER).group(1))
# The issue's example: `x[1m]` and 8,000 more `[1m]`, 32 KB.
ISSUE_SIZE = 8000

BOTH = ("promql", "metricsql")


@dataclass(frozen=True)
class Form:
    name: str
    query: Callable[[int], str]
    largest: int
    # The dialects whose grammar takes the form (elsewhere it is a syntax error).
    dialects: tuple[str, ...] = BOTH
    # Whether the form at its largest size is a query the filter forwards.
    valid: bool = True
    # Whether VictoriaMetrics answers it with data; if not, it refuses the forwarded
    # query itself (422): duration arithmetic is Prometheus 3 syntax, `@` over a
    # selector of no series has no time to give, and 2,000 operators with their tenant
    # matchers pass its `-search.maxQueryLen` (16 KiB).
    vm_answers: bool = True


M = MAX_NESTING
FORMS = [
    Form("parentheses", lambda n: "(" * n + "x" + ")" * n, M),
    Form("unary minus", lambda n: "-" * n + "x", M),
    Form("power chain", lambda n: "x" + "^x" * n, M),
    Form("function calls", lambda n: "abs(" * n + "x" + ")" * n, M),
    Form("aggregations", lambda n: "sum(" * n + "x" + ")" * n, M),
    Form("subqueries in calls",
         lambda n: "max_over_time(" * n + "rate(x[5m])" + "[1m:1m])" * n, (M - 2) // 2),
    Form("range chain", lambda n: "x" + "[1m]" * n, M, ("promql",), valid=False),
    Form("subquery chain", lambda n: "x" + "[1m:1m]" * n, M, ("promql",), valid=False),
    Form("offset chain", lambda n: "x" + " offset 1m" * n, M, ("promql",), valid=False),
    Form("@ chain", lambda n: "x" + " @ 1" * n, M, ("promql",), valid=False),
    Form("right-nested operators", lambda n: "x + (" * n + "x" + ")" * n, M // 2),
    Form("parentheses in a range", lambda n: "x[" + "(" * n + "1m" + ")" * n + "]", M - 1,
         ("promql",), vm_answers=False),
    Form("@ with signs", lambda n: "x" + " @ -x" * n, M // 2, ("metricsql",),
         vm_answers=False),
    Form("unions", lambda n: "(x, " * n + "x" + ")" * n, M, ("metricsql",)),
    Form("operator chain", lambda n: "x" + " + x" * n, MAX_BINARY_OPERATORS,
         vm_answers=False),
    Form("duration arithmetic", lambda n: "x[1m" + "+1m" * n + "]", MAX_BINARY_OPERATORS,
         ("promql",), vm_answers=False),
]


def form_body(query: str) -> str:
    """`query=<query>` as a form body, escaping only what the form syntax needs (the
    brackets and parentheses stay as they are, so a deep query stays small)."""
    return "query=" + urllib.parse.quote(query, safe="()[]{}:@,^-*/<>!'\"~")


def too_deep(message: str) -> bool:
    return "nests too deeply" in message or "too many operators" in message


@pytest.fixture(scope="module")
def proxies(workdir, vm, oidc, wasm, envoy):
    """The session's Envoy (dialect promql) and one with dialect metricsql."""
    config = filter_config(vm, oidc.port, wasm)
    plugin = plugin_config(config)
    plugin["dialect"] = "metricsql"
    config = {**with_plugin_config(config, plugin), "_ports": config["_ports"]}
    metricsql = launch(workdir, "envoy-metricsql-depth", config)
    try:
        yield {"promql": envoy, "metricsql": metricsql.wait_ready()}
    finally:
        metricsql.stop()


def ask(proxy, method: str, query: str, token: str, vm):
    if method == "GET":
        return call(proxy, "GET", "/api/v1/query", token, {"query": query, "time": vm.seed_s})
    return send("POST", proxy.url + "/api/v1/query",
                data=(form_body(query) + f"&time={vm.seed_s}").encode(),
                headers={**bearer(token), "Content-Type": "application/x-www-form-urlencoded"})


CASES = [(form, dialect) for form in FORMS for dialect in BOTH]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("form,dialect", CASES,
                         ids=[f"{f.name.replace(' ', '-')}-{d}" for f, d in CASES])
def test_deepest_query_and_one_step_over(proxies, vm, tokens, form, dialect, method):
    proxy = proxies[dialect]
    at = ask(proxy, method, form.query(form.largest), tokens["alice"], vm)
    if form.valid and dialect in form.dialects and form.vm_answers:
        assert at.status_code == 200, (at.status_code, at.text[:300])
        assert at.json()["status"] == "success"
    elif form.valid and dialect in form.dialects:
        # Forwarded, and refused by VictoriaMetrics itself (the filter never says 422).
        assert at.status_code == 422, (at.status_code, at.text[:300])
    else:
        body = assert_prometheus_error(at, 400, "bad_data")
        assert not too_deep(body["error"]), body
    over = ask(proxy, method, form.query(form.largest + 1), tokens["alice"], vm)
    body = assert_prometheus_error(over, 400, "bad_data")
    if dialect in form.dialects:
        assert too_deep(body["error"]), body


@pytest.mark.parametrize("form,dialect", CASES,
                         ids=[f"{f.name.replace(' ', '-')}-{d}" for f, d in CASES])
def test_the_issues_size_is_refused(proxies, vm, tokens, form, dialect):
    # By POST: 8,000 modifiers percent-encoded in a URL pass Envoy's header limit.
    size = max(ISSUE_SIZE, form.largest + 1)
    answer = ask(proxies[dialect], "POST", form.query(size), tokens["alice"], vm)
    assert_prometheus_error(answer, 400, "bad_data")


# The issue's three examples, as written there.
ISSUE_EXAMPLES = {
    "range-chain": "x[1m]" + "[1m]" * ISSUE_SIZE,
    "at-after-operators": "x" + " + @ 1" * ISSUE_SIZE,
    "subquery-chain": "x" + "[1m:1m]" * ISSUE_SIZE,
}


@pytest.mark.parametrize("dialect", BOTH)
@pytest.mark.parametrize("name", ISSUE_EXAMPLES)
def test_the_issues_examples_are_refused(proxies, vm, tokens, name, dialect):
    answer = ask(proxies[dialect], "POST", ISSUE_EXAMPLES[name], tokens["alice"], vm)
    assert_prometheus_error(answer, 400, "bad_data")


# ---------------------------------------------------------------------------- claims

# The identity stand-in and an Envoy that asks it, as the adversarial identity suite has them.
from test_adversarial_identity import JSON, relay, relayed_envoy  # noqa: E402,F401


def nested(depth: int) -> bytes:
    """A userinfo answer whose `x` nests `depth` arrays deep: as deep as the JSON gets
    (the object around it is one level more)."""
    return b'{"client_id": "1999", "x": ' + b"[" * depth + b"]" * depth + b"}"


# serde_json parses at most 127 levels (the object and 126 arrays) and refuses deeper
# JSON; an answer over 64 KiB is refused before it is parsed.
@pytest.mark.parametrize("depth,status", [(126, 200), (127, 503), (ISSUE_SIZE, 503),
                                          (500_000, 503)])
def test_deep_claims_answer(relayed_envoy, relay, vm, depth, status):
    relay.answer = (200, nested(depth), JSON)
    token = f"deep-claims-{uuid.uuid4().hex}"  # a token never seen: the answer is read
    answer = call(relayed_envoy, "GET", "/api/v1/query", token,
                  {"query": "up", "time": vm.seed_s})
    if status == 200:
        assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    else:
        assert_prometheus_error(answer, status, "unavailable", secret=token)


# ---------------------------------------------------------------------------- the log check

# Lines of a real Envoy log, from a module built before the nesting cap counted modifier
# chains, after `x[1m]` and 8,000 `[1m]` by POST (copied as they were).
REAL_TRAP_LOG = """\
[2026-12-01 12:12:46.371][26732][info][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log promql_tenant_filter promql_tenant_filter: promql_tenant_filter: configured, tenant label "client_id"
[2026-12-01 12:12:46.377][26714][info][main] [source/server/server.cc:1098] starting main dispatch loop
[2026-12-01 12:12:46.439][26732][error][wasm] [source/extensions/common/wasm/wasm_vm.cc:38] Function: proxy_on_request_body failed: Uncaught RangeError: Maximum call stack size exceeded
Proxy-Wasm plugin in-VM backtrace:
  0:  0x2d261 - promql_tenant_filter::promql::check::Checker::check::h274442af031015d1
  1:  0x2db19 - promql_tenant_filter::promql::check::Checker::check::h274442af031015d1
[2026-12-01 12:12:47.133][26714][warning][main] [source/server/server.cc:1028] caught ENVOY_SIGTERM
"""

# Lines that are not traps: the filter's own warnings, and a refused query's text.
NOT_TRAPS = """\
[2026-12-01 12:12:46.371][26732][warning][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log promql_tenant_filter promql_tenant_filter: identity provider unavailable: identity provider timed out or reset
[2026-12-01 12:12:46.439][26732][info][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log promql_tenant_filter promql_tenant_filter: refused: unexpected identifier "RangeError"
"""


def test_the_log_check_catches_a_real_trap():
    traps = wasm_traps(REAL_TRAP_LOG)
    assert len(traps) == 2, traps
    assert "Function: proxy_on_request_body failed: Uncaught RangeError" in traps[0]
    assert traps[1] == "Proxy-Wasm plugin in-VM backtrace:"
    assert wasm_traps(NOT_TRAPS) == []
    panic = ("[2026-12-01 12:00:00.000][1][critical][wasm] [source/extensions/common/wasm/"
             "context.cc:1157] wasm log promql_tenant_filter: panicked at src/lib.rs:1:1:")
    assert wasm_traps(panic) == [panic]
