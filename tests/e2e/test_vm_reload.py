"""A VM that traps, under Envoy's `failure_policy`: FAIL_RELOAD recovers, FAIL_CLOSED does not.

Some deep PromQL once overflowed V8's stack in `proxy_on_request_headers`. With
`FAIL_CLOSED`, the worker whose VM trapped then answered 503 (Envoy's, `wasm_fail_stream`) to every
tenant until Envoy restarted. `FAIL_RELOAD` (all the committed configs) replaces the
trapped VM at the worker's next request. Here the trap is made on purpose: the
debug-only `debug_trap_marker` makes the module trap in `proxy_on_request_headers` when
a request carries the marker in `x-promql-tenant-filter-debug-trap`.

Requests go out one connection each, and the listener's per-worker connection counters
tell which of Envoy's two workers took each one. Every Envoy started here traps on
purpose, so each is marked `expect_traps` for the suite's check that no Envoy log shows a
Wasm trap.
"""

from __future__ import annotations

import re
import time

import envoy_config
import pytest
import seed
from conftest import assert_envoys_own_answer, assert_prometheus_error, call
from procs import wait_until
from test_cache import connections_per_worker

MARKER = "vm-reload-e2e-5c1f0b7d9a3e"
TRAP_HEADER = "x-promql-tenant-filter-debug-trap"
USER_TENANT = {"alice": seed.ALICE_TENANT, "bob": seed.BOB_TENANT}
# Envoy reloads a trapped VM at most once per reload backoff (1 s base, jittered up to
# 1.5 s, since that worker's VM was last loaded); the rest is slack for a loaded machine.
RECOVERY_S = 15
# Enough fresh connections that both workers get some (each lands on either).
MAX_ROUNDS = 40
# The recovery loop: a round (one request per tenant) every ROUND_PAUSE_S, for at most
# RECOVERY_S and at most RECOVERY_ROUNDS rounds.
ROUND_PAUSE_S = 0.05
RECOVERY_ROUNDS = 300
# What V8 reports for the module's deliberate trap (a wasm `unreachable`), and what the
# module logs just before it.
TRAP_LOG = "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"
MARKER_LOG = "debug_trap_marker received, trapping this VM"
CONFIGURED_LOG = "promql_tenant_filter: configured, tenant label"
# Envoy's reload statistics are `wasm.<plugin name>.vm_reload_*` (Istio names the plugin
# `<namespace>.<name>`).
RELOAD_STATS = "wasm.{plugin}.vm_reload_"


def start_trapping_envoy(envoy_factory, failure_policy: str, name: str, expect_traps=True):
    """envoy/envoy.yaml with the marker set and the given failure policy."""
    config = envoy_factory.config()
    plugin = envoy_config.plugin_config(config)
    plugin["debug_trap_marker"] = MARKER
    config = {**envoy_config.with_plugin_config(config, plugin), "_ports": config["_ports"]}
    envoy_config.wasm_plugin(config)["failure_policy"] = failure_policy
    proxy = envoy_factory.start(config, name)
    proxy.plugin_name = envoy_config.wasm_plugin(config)["name"]
    proxy.expect_traps = expect_traps
    return proxy.wait_ready()


def on_one_connection(proxy, send):
    """Sends one request on a connection of its own; returns (worker index, response)."""
    before = connections_per_worker(proxy)
    response = send()
    after = connections_per_worker(proxy)
    workers = [i for i, (b, a) in enumerate(zip(before, after)) if a != b]
    assert len(workers) == 1, (before, after)
    return workers[0], response


def query_as(proxy, vm, token):
    # POST, as Grafana sends it: the form body goes through the (new) VM too.
    return call(proxy, "POST", "/api/v1/query", token,
                {"query": '{__name__=~".+"}', "time": vm.seed_s})


def assert_confined(response, user):
    assert response.status_code == 200, (response.status_code, response.text[:300])
    got = {seed.as_key(s["metric"]) for s in response.json()["data"]["result"]}
    assert got == seed.keys_of(USER_TENANT[user])


def trap(proxy, token):
    """The marker request, on a connection of its own: (worker index, response)."""
    return on_one_connection(proxy, lambda: call(
        proxy, "GET", "/api/v1/query", token, {"query": "up"}, headers={TRAP_HEADER: MARKER}))


def assert_the_trap_request_is_refused(response, envoy_mode):
    # What the client gets: Envoy's own 503 for a failed stream ("wasm_fail_stream"), not
    # the filter's refusal (the VM is gone by then), which the configs' local_reply_config
    # puts in Prometheus' JSON shape like every other refusal (plain under Istio).
    body = assert_envoys_own_answer(response, 503, "unavailable", envoy_mode)
    assert body is None or "reloaded" in body["error"], body


def log_lines(proxy) -> list[tuple[str, str]]:
    """(thread id, line) of every line of Envoy's log that has one."""
    found = []
    for line in proxy.proc.log().splitlines():
        m = re.match(r"\[[^]]*\]\[(\d+)\]", line)
        if m:
            found.append((m.group(1), line))
    return found


def reload_stats(proxy) -> dict[str, int]:
    prefix = RELOAD_STATS.format(plugin=proxy.plugin_name)
    return {name[len(prefix):]: value for name, value in proxy.counters().items()
            if name.startswith(prefix)}


def test_fail_reload_replaces_the_trapped_vm(envoy_factory, vm, oidc, tokens, envoy_mode):
    proxy = start_trapping_envoy(envoy_factory, "FAIL_RELOAD", "envoy-fail-reload")
    # Both tenants known before the trap: their identities sit in the shared level.
    for user in USER_TENANT:
        assert_confined(query_as(proxy, vm, tokens[user]), user)
    calls_before = oidc.userinfo_calls()
    hits_before = proxy.filter_counter("cache_hits")

    trapped, answer = trap(proxy, tokens["alice"])
    assert_the_trap_request_is_refused(answer, envoy_mode)
    wait_until(lambda: TRAP_LOG in proxy.proc.log(), "Envoy to log the trap", timeout_s=10)

    # Every tenant on every worker is served again, confined, within the bound. On the
    # trapped worker a 503 is allowed only before its VM is back (the reload backoff).
    served: set[tuple[str, int]] = set()
    wanted = {(user, w) for user in USER_TENANT for w in range(proxy.concurrency)}
    started = time.monotonic()
    recovered_after_s = None
    for _ in range(RECOVERY_ROUNDS):
        if served >= wanted or time.monotonic() - started > RECOVERY_S:
            break
        time.sleep(ROUND_PAUSE_S)
        for user in USER_TENANT:
            worker, r = on_one_connection(proxy, lambda: query_as(proxy, vm, tokens[user]))
            if r.status_code == 503 and worker == trapped and recovered_after_s is None:
                assert_the_trap_request_is_refused(r, envoy_mode)  # still Envoy's, not the filter's
                continue
            assert_confined(r, user)
            served.add((user, worker))
            if worker == trapped and recovered_after_s is None:
                recovered_after_s = time.monotonic() - started
    assert served >= wanted, f"not every tenant served on every worker in {RECOVERY_S}s: {served}"

    # Envoy's own account: one reload, and it worked; requests that came to the trapped
    # worker sooner than the backoff allowed counted as `backoff` (and got the 503).
    stats = reload_stats(proxy)
    assert stats.get("success") == 1 and stats.get("failure") == 0, stats
    print(f"trapped worker {trapped} served again after {recovered_after_s:.2f}s; {stats}")
    # The replacement VM ran the plugin's on_configure on the trapped worker's thread,
    # after the trap (the worker's first VM had done so at start).
    lines = log_lines(proxy)
    trap_at = next(i for i, (_, line) in enumerate(lines) if TRAP_LOG in line)
    thread = lines[trap_at][0]
    assert any(MARKER_LOG in line for t, line in lines[:trap_at] if t == thread)
    assert any(CONFIGURED_LOG in line for t, line in lines[trap_at:] if t == thread), (
        "no on_configure after the trap on its thread: was the VM replaced?")

    # The identity cache: the new VM starts with an empty first level but finds both
    # tenants in shared data, which outlives VMs: not one new /userinfo call.
    assert oidc.userinfo_calls() == calls_before
    assert proxy.filter_counter("cache_hits") > hits_before
    # And it caches anew: a fresh token, asked on both workers, costs one call.
    fresh = oidc.login("alice")
    calls_before = oidc.userinfo_calls()
    workers_seen = set()
    for _ in range(MAX_ROUNDS):
        worker, r = on_one_connection(proxy, lambda: query_as(proxy, vm, fresh))
        assert_confined(r, "alice")
        workers_seen.add(worker)
        if len(workers_seen) == proxy.concurrency:
            break
    assert len(workers_seen) == proxy.concurrency, workers_seen
    assert oidc.userinfo_calls() - calls_before == 1


def test_fail_closed_leaves_the_trapped_worker_refusing_everyone(envoy_factory, vm, tokens,
                                                               envoy_mode):
    """The contrast, and why the configs say FAIL_RELOAD."""
    proxy = start_trapping_envoy(envoy_factory, "FAIL_CLOSED", "envoy-fail-closed")
    for user in USER_TENANT:
        assert_confined(query_as(proxy, vm, tokens[user]), user)
    trapped, answer = trap(proxy, tokens["alice"])
    assert_the_trap_request_is_refused(answer, envoy_mode)
    wait_until(lambda: TRAP_LOG in proxy.proc.log(), "Envoy to log the trap", timeout_s=10)

    def round_until_both_workers_seen(label: str) -> None:
        seen = set()
        for _ in range(MAX_ROUNDS):
            for user in USER_TENANT:
                worker, r = on_one_connection(proxy, lambda: query_as(proxy, vm, tokens[user]))
                seen.add(worker)
                if worker == trapped:
                    # Every tenant, every time: the worker is lost until Envoy restarts.
                    assert_the_trap_request_is_refused(r, envoy_mode)
                else:
                    assert_confined(r, user)
            if len(seen) == proxy.concurrency:
                return
        pytest.fail(f"{label}: requests never reached both workers: {seen}")

    round_until_both_workers_seen("right after the trap")
    # Well past any reload backoff, still lost: nothing replaces the VM.
    time.sleep(2)
    round_until_both_workers_seen("two seconds later")
    assert set(reload_stats(proxy).values()) <= {0}, reload_stats(proxy)


def test_the_marker_traps_nothing_when_it_is_wrong_or_unset(envoy, envoy_factory, vm, tokens):
    """The committed config has no marker: the header is just a header. With a marker set,
    any other value is too."""
    for proxy, value in ((envoy, MARKER),
                         (start_trapping_envoy(envoy_factory, "FAIL_RELOAD", "envoy-wrong-marker",
                                               expect_traps=False), MARKER + "x")):
        r = call(proxy, "POST", "/api/v1/query", tokens["bob"],
                 {"query": '{__name__=~".+"}', "time": vm.seed_s}, headers={TRAP_HEADER: value})
        assert_confined(r, "bob")
        assert TRAP_LOG not in proxy.proc.log()
    # A request the filter refuses anyway still gets the filter's JSON, not a trap.
    r = call(envoy, "GET", "/api/v1/query", None, {"query": "up"}, headers={TRAP_HEADER: MARKER})
    assert_prometheus_error(r, 401, "unauthorized")
