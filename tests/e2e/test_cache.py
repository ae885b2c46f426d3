"""The identity cache, counted where it matters: at the identity provider.

Sequential requests with one token make one /userinfo call; 20 concurrent requests with a
fresh token make one call in all, though they land on several Envoy workers (a Grafana
dashboard opening its panels), and so do many fresh tokens at once, one call each; expired entries are asked again, so a revoked token stops working once its
entry has expired. Calls are counted in the provider's own request log, and the filter's
counters must agree with it.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import envoy_config
import pytest
from conftest import call
from procs import wait_until
from services import IdpRelay

SEQUENTIAL = 10
CONCURRENT = 20


def query(proxy, vm, token):
    # /api/v1/metadata needs the caller's identity but is answered by the filter itself:
    # these tests are about the identity cache, not about the rewrite or the backend.
    return call(proxy, "GET", "/api/v1/metadata", token)


def test_sequential_requests_make_one_userinfo_call(envoy, vm, oidc):
    token = oidc.login("alice")
    before = oidc.userinfo_calls()
    for _ in range(SEQUENTIAL):
        assert query(envoy, vm, token).status_code == 200
    assert oidc.userinfo_calls() - before == 1


def test_cached_identity_is_per_token(envoy, vm, oidc):
    # Two users, fresh tokens, interleaved: one call each, and each keeps their tenant.
    alice, bob = oidc.login("alice"), oidc.login("bob")
    before = oidc.userinfo_calls()
    for _ in range(3):
        for token, tenant in ((alice, "1999"), (bob, "2000")):
            r = call(envoy, "GET", "/api/v1/label/client_id/values", token,
                     {"start": vm.start_s, "end": vm.seed_s + 60})
            assert r.status_code == 200, r.text[:300]
            assert r.json()["data"] == [tenant]
    assert oidc.userinfo_calls() - before == 2


def connections_per_worker(proxy) -> list[int]:
    """Downstream connections each Envoy worker accepted on the listener."""
    counters = proxy.counters()
    return [counters.get(name, 0) for name in sorted(counters)
            if name.startswith("listener.") and ".worker_" in name
            and name.endswith(".downstream_cx_total")]


def test_concurrent_requests_with_a_fresh_token_share_one_call_across_workers(
        envoy_factory, vm, oidc):
    # The provider is slowed down behind a relay, so that all 20 requests are surely in
    # flight while the first /userinfo call is still open.
    relay = IdpRelay(oidc.url)
    relay.delay_s = 0.5
    try:
        proxy = envoy_factory.start(envoy_factory.config(oidc_port=relay.port), "envoy-cache")
        proxy.wait_ready()
        token = oidc.login("bob")
        before = oidc.userinfo_calls()
        start = threading.Barrier(CONCURRENT)

        def one(_):
            start.wait()
            return query(proxy, vm, token).status_code

        with ThreadPoolExecutor(CONCURRENT) as pool:
            statuses = list(pool.map(one, range(CONCURRENT)))
        assert statuses == [200] * CONCURRENT
        per_worker = connections_per_worker(proxy)
        assert len(per_worker) == proxy.concurrency and all(per_worker), per_worker
        # Every worker had requests for the token; one of them called, the others waited
        # for its answer in shared data.
        assert oidc.userinfo_calls() - before == 1
        assert relay.calls == 1
        assert proxy.filter_counter("userinfo_remote_waits") >= 1
    finally:
        relay.stop()


def test_many_fresh_tokens_at_once_make_exactly_one_call_each(envoy_factory, vm, oidc):
    # Requests for many new tokens, shuffled and concurrent over both workers: each token
    # is asked about once, whichever workers its requests land on.
    relay = IdpRelay(oidc.url)
    relay.delay_s = 0.05
    try:
        proxy = envoy_factory.start(envoy_factory.config(oidc_port=relay.port), "envoy-spread")
        proxy.wait_ready()
        tokens = [oidc.login("alice") for _ in range(30)]
        work = [t for t in tokens for _ in range(6)]
        random.Random(7).shuffle(work)
        before = oidc.userinfo_calls()
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda t: query(proxy, vm, t), work))
        refused = {r.text for r in answers if r.status_code != 200}
        assert not refused, refused
        assert all(connections_per_worker(proxy)), connections_per_worker(proxy)
        assert oidc.userinfo_calls() - before == len(tokens)
        assert proxy.filter_counter("userinfo_calls") == len(tokens)
    finally:
        relay.stop()


def test_filter_counters_agree_with_the_provider(envoy_factory, vm, oidc):
    proxy = envoy_factory.start(envoy_factory.config(), "envoy-counters").wait_ready()
    token = oidc.login("alice")
    before = oidc.userinfo_calls()
    for _ in range(SEQUENTIAL):
        assert query(proxy, vm, token).status_code == 200
    assert call(proxy, "GET", "/api/v1/query", None, {"query": "up"}).status_code == 401
    assert call(proxy, "GET", "/api/v1/query", token, {"query": "sum("}).status_code == 400
    counter = proxy.filter_counter
    assert counter("userinfo_calls") == oidc.userinfo_calls() - before == 1
    # Exact hit/miss split depends on which worker took each connection (a miss in one
    # worker's first level may still hit the shared level), so bounds only.
    assert counter("cache_misses") >= 1
    assert counter("cache_hits") >= SEQUENTIAL - 1
    assert counter("requests_allowed") == SEQUENTIAL
    assert counter("requests_denied") >= 2
    assert counter("bad_queries") == 1
    assert counter("idp_errors") == 0


@pytest.fixture
def short_cache_envoy(envoy_factory):
    config = envoy_config.with_identity(envoy_factory.config(), cache_ttl_s=2,
                                        negative_cache_ttl_s=2)
    return envoy_factory.start(config, "envoy-short-cache").wait_ready()


def test_expired_entry_is_asked_again_and_revocation_then_takes_effect(short_cache_envoy, vm, oidc):
    oidc.set_user("erin", {"client_id": "2000"})
    token = oidc.login("erin")
    before = oidc.userinfo_calls()
    assert query(short_cache_envoy, vm, token).status_code == 200
    oidc.revoke_tokens("erin")
    assert query(short_cache_envoy, vm, token).status_code == 200  # still cached
    time.sleep(2.5)
    assert query(short_cache_envoy, vm, token).status_code == 401
    assert oidc.userinfo_calls() - before == 2


def test_negative_result_is_cached(short_cache_envoy, vm, oidc):
    token = "unknown-token-for-negative-cache"
    before = oidc.userinfo_calls()
    for _ in range(5):
        assert query(short_cache_envoy, vm, token).status_code == 401
    assert oidc.userinfo_calls() - before == 1


def test_footprint_gauges_report_vm_memory_and_cache_entries(envoy_factory, vm, oidc):
    # Envoy has no memory statistic for a Wasm VM: the filter reports its linear memory
    # and its first-level cache size as gauges, summed over the workers, once a second.
    proxy = envoy_factory.start(envoy_factory.config(), "envoy-gauges").wait_ready()
    tokens = [oidc.login("alice") for _ in range(3)]
    for token in tokens:
        assert query(proxy, vm, token).status_code == 200

    def gauges():
        return (proxy.filter_counter("wasm_memory_bytes") or 0,
                proxy.filter_counter("local_cache_entries") or 0)

    wait_until(lambda: gauges()[1] >= len(tokens), "the cache gauge to count the tokens",
               timeout_s=10)
    memory, entries = gauges()
    # Whole 64 KiB Wasm pages, at least one VM's worth, and no more cache entries than
    # each worker can hold of these three tokens.
    assert memory > 0 and memory % 65536 == 0, memory
    assert len(tokens) <= entries <= len(tokens) * proxy.concurrency, entries
