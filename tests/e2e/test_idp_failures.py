"""Failures of the identity provider: unreachable, too slow, or answering 5xx/429.

Each gives 503 `unavailable`, nothing reaches VictoriaMetrics (counted by its own
request counters and by Envoy's `backend` cluster), and the failure is remembered only
for `failure_cache_ttl_s`: while it lasts, the token's requests get 503 without asking
the provider again; once it ends and the provider is back, the same token works.
"""

from __future__ import annotations

import time

import envoy_config
import pytest
from adversary import backend_requests
from conftest import assert_prometheus_error, call
from procs import free_port
from services import IdpRelay


def assert_unavailable_and_backend_untouched(proxy, vm, token, attempts=3) -> float:
    """Returns the slowest answer's duration in seconds."""
    vm_before = vm.total_requests()
    slowest = 0.0
    for _ in range(attempts):
        started = time.monotonic()
        response = call(proxy, "GET", "/api/v1/query", token, {"query": "up"})
        slowest = max(slowest, time.monotonic() - started)
        assert_prometheus_error(response, 503, "unavailable", secret=token)
    assert backend_requests(proxy) == 0
    assert vm.total_requests() == vm_before
    return slowest


def test_provider_down_gives_503_and_nothing_reaches_the_backend(envoy_factory, vm, oidc):
    nobody_listens = free_port()
    proxy = envoy_factory.start(envoy_factory.config(oidc_port=nobody_listens), "envoy-idp-down")
    proxy.wait_ready()
    assert_unavailable_and_backend_untouched(proxy, vm, oidc.login("alice"))


@pytest.fixture
def relay(oidc):
    relay = IdpRelay(oidc.url)
    yield relay
    relay.stop()


# Short, so that the tests wait little for a remembered failure to end.
FAILURE_TTL_S = 1


def test_provider_slower_than_the_timeout_gives_503(envoy_factory, vm, oidc, relay):
    config = envoy_config.with_identity(envoy_factory.config(oidc_port=relay.port),
                                        timeout_ms=300, failure_cache_ttl_s=FAILURE_TTL_S)
    proxy = envoy_factory.start(config, "envoy-idp-slow").wait_ready()
    relay.delay_s = 1.5
    token = oidc.login("alice")
    slowest = assert_unavailable_and_backend_untouched(proxy, vm, token, attempts=1)
    assert slowest < 1.2, "the filter waited for the provider instead of timing out"
    assert relay.calls >= 1
    # With the provider fast again and the failure forgotten, the same token works.
    relay.delay_s = 0
    time.sleep(FAILURE_TTL_S + 1)
    response = call(proxy, "GET", "/api/v1/metadata", token)
    assert response.status_code == 200, response.text[:300]


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_provider_error_status_gives_503_and_is_remembered_briefly(envoy_factory, vm, oidc,
                                                                    relay, status):
    config = envoy_config.with_identity(envoy_factory.config(oidc_port=relay.port),
                                        failure_cache_ttl_s=FAILURE_TTL_S)
    proxy = envoy_factory.start(config, f"envoy-idp-{status}").wait_ready()
    relay.fail_status = status
    token = oidc.login("bob")
    assert_unavailable_and_backend_untouched(proxy, vm, token, attempts=3)
    # One call for the three requests, whichever workers took them: a struggling
    # provider is not asked again per request.
    assert relay.calls == 1, relay.calls
    relay.fail_status = None
    time.sleep(FAILURE_TTL_S + 1)
    response = call(proxy, "GET", "/api/v1/metadata", token)
    assert response.status_code == 200, response.text[:300]
