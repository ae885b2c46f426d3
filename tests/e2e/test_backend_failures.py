"""Failures of the backend: VictoriaMetrics down, or answering nothing in time.

Envoy answers these itself, and its own answers are plain text; Grafana needs
Prometheus' JSON error shape to show the user anything useful. The committed config maps
them (`local_reply_config`): 503 `unavailable` when the backend cannot be reached, 504
`timeout` when it does not answer in time. The filter's own refusals must keep their
body: the mapping is keyed on Envoy's upstream response flags, which they do not carry.
Found by the soak (tests/soak/soak.py) restarting VictoriaMetrics under load.

Istio generates no `local_reply_config`: in the `istio` mode Envoy's own answers stay
plain text (docs/kubernetes.md says how to map them there), and the tests check that
they come from Envoy, with the same status, without the token.
"""

from __future__ import annotations

import socket

import envoy_config
import pytest
from conftest import assert_envoys_own_answer, assert_prometheus_error, call
from procs import free_port


def proxy_with_backend_port(envoy_factory, port: int, route_timeout: str | None = None):
    config = envoy_factory.config()
    ports = config.pop("_ports")
    config = envoy_config.set_backend_port(config, port)
    if route_timeout is not None:
        manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        for route in manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]:
            route["route"]["timeout"] = route_timeout
            # As Istio writes a VirtualService timeout: the stream limit goes.
            route["route"].pop("max_stream_duration", None)
    return envoy_factory.start({**config, "_ports": ports}, "envoy-backend").wait_ready()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_backend_down_gives_503_unavailable_in_prometheus_shape(envoy_factory, oidc, method,
                                                                 envoy_mode):
    proxy = proxy_with_backend_port(envoy_factory, free_port())  # nobody listens there
    token = oidc.login("alice")
    response = call(proxy, method, "/api/v1/query", token, {"query": "up"})
    body = assert_envoys_own_answer(response, 503, "unavailable", envoy_mode, secret=token)
    assert body is None or body["error"].startswith("backend unavailable"), body


def test_backend_that_never_answers_gives_504_timeout_in_prometheus_shape(envoy_factory, oidc,
                                                                        envoy_mode):
    # A socket that is listening but never accepts: the kernel completes the connection,
    # Envoy sends the request, and no answer ever comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        proxy = proxy_with_backend_port(envoy_factory, black_hole.getsockname()[1],
                                        route_timeout="1s")
        token = oidc.login("bob")
        response = call(proxy, "GET", "/api/v1/query", token, {"query": "up"})
    body = assert_envoys_own_answer(response, 504, "timeout", envoy_mode, secret=token)
    assert body is None or body["error"].startswith("backend timed out"), body


def test_the_filters_own_refusals_keep_their_body(envoy_factory, oidc):
    # Control for the mapping: a refusal by the filter is not rewrapped, even with the
    # backend down, and even when it is the filter's own 503 (identity provider down).
    proxy = proxy_with_backend_port(envoy_factory, free_port())
    body = assert_prometheus_error(call(proxy, "GET", "/api/v1/query", None, {"query": "up"}),
                                   401, "unauthorized")
    assert body["error"] == "missing Authorization header"
    token = oidc.login("alice")
    body = assert_prometheus_error(call(proxy, "GET", "/api/v1/query", token, {"query": "sum("}),
                                   400, "bad_data", secret=token)
    assert not body["error"].startswith("backend"), body

    config = envoy_factory.config(oidc_port=free_port())  # no provider there either
    idp_down = envoy_factory.start(config, "envoy-idp-down").wait_ready()
    body = assert_prometheus_error(call(idp_down, "GET", "/api/v1/query", token,
                                        {"query": "up"}), 503, "unavailable", secret=token)
    assert not body["error"].startswith("backend"), body
