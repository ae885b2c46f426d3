"""The request lifecycle in real Envoy, with and without `allow_on_headers_stop_iteration`
(the session's `envoy_mode`): what Envoy does with a POST body around the filter's pause,
and what reaches the backend, to the byte.

A `BackendSpy` sits between Envoy and VictoriaMetrics and keeps every byte Envoy sent.
Each finding of docs/request-lifecycle.md that matters has a test here:
- chunks that arrive while the request is paused for its identity, before, during and
  after the callout: the body is judged whole and the backend gets only the rewritten one;
- a body the filter refuses: with the setting the backend gets nothing; without it, the
  headers went on ahead of the body, and the backend gets them and not one byte of body;
- a client that goes away mid-body: nothing of its body reaches the backend, and the
  filter keeps serving the same token;
- a body over Envoy's buffer limit: Envoy's own 413 while the filter buffers it, or, for a
  body Envoy held during the callout (watermark, no error), the filter's 408 once it stops
  growing, instead of a request that hangs forever (Istio disables the stream idle timeout).
"""

from __future__ import annotations

import socket
import time

import envoy_config
import pytest
from adversary import (ANY_ENCODED, FORM, Answer, _parse_responses,
                       assert_refused_or_confined, refusing_layer, request_bytes)
from services import BackendSpy, IdpRelay

# How long the provider takes to answer, when a test needs the body to arrive meanwhile.
IDP_DELAY_S = 0.6


@pytest.fixture
def spy(vm):
    spy = BackendSpy(vm.port)
    yield spy
    spy.stop()


@pytest.fixture
def slow_idp(oidc):
    relay = IdpRelay(oidc.url)
    relay.delay_s = IDP_DELAY_S
    yield relay
    relay.stop()


def start(envoy_factory, spy, idp, name, buffer_limit: int | None = None):
    config = envoy_factory.config(oidc_port=idp.port)
    ports = config.pop("_ports")
    config = envoy_config.set_backend_port(config, spy.port)
    if buffer_limit is not None:
        config["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = \
            buffer_limit
    return envoy_factory.start({**config, "_ports": ports}, name).wait_ready()


def send_in_parts(url: str, parts: list[bytes], pause_s: float, timeout_s: float = 5,
                  close_after: bool = False) -> list[Answer]:
    """Sends `parts` on one connection with `pause_s` between them; then reads one
    answer, or (`close_after`) closes the connection without reading."""
    host, port = url.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        for i, part in enumerate(parts):
            if i:
                time.sleep(pause_s)
            sock.sendall(part)
        if close_after:
            return []
        received = b""
        while not _parse_responses(received, complete_only=True):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return _parse_responses(received)


def form_post(vm, token: str, body: bytes, path: str = "/api/v1/query_range") -> bytes:
    return request_bytes("POST", path, [("Authorization", f"Bearer {token}"),
                                        ("Content-Type", FORM),
                                        ("Content-Length", str(len(body)))])


def grafana_form(vm) -> bytes:
    """What Grafana's Prometheus data source POSTs for a range query."""
    return (f"query={ANY_ENCODED}&start={vm.start_s}&end={vm.seed_s + 60}&step=30"
            .encode())


def assert_framed(received, envoy_mode: str) -> None:
    """How the rewritten body's end reaches the backend. Where Envoy hands the body to the
    filter while the headers wait, it is judged before they go, and they go with its
    exact Content-Length, as the client framed it. Without the setting the headers go
    first, so no length can go with them: Envoy sends the body chunked."""
    if envoy_mode == "stop_iteration":
        assert received.headers.get("content-length") == str(len(received.body)), \
            received.headers
        assert "transfer-encoding" not in received.headers, received.headers
    else:
        assert "content-length" not in received.headers, received.headers
        assert received.headers.get("transfer-encoding", "").lower() == "chunked", \
            received.headers


def cache(proxy, token: str) -> None:
    from conftest import call
    assert call(proxy, "GET", "/api/v1/metadata", token).status_code == 200


@pytest.mark.parametrize("cached", [False, True], ids=["identity-looked-up", "identity-cached"])
def test_chunks_arriving_around_the_pause_reach_the_backend_only_rewritten(
        envoy_factory, vm, oidc, spy, slow_idp, cached, envoy_mode):
    proxy = start(envoy_factory, spy, slow_idp, "envoy-chunks")
    token = oidc.login("alice")
    if cached:
        cache(proxy, token)
    body = grafana_form(vm)
    # The headers with a first chunk, a chunk while the callout is out, the rest after it.
    parts = [form_post(vm, token, body) + body[:7], body[7:30], body[30:]]
    before = len(spy.requests())
    [answer] = send_in_parts(proxy.url, parts, pause_s=IDP_DELAY_S / 2 + 0.05)
    assert assert_refused_or_confined(answer) == "confined", answer
    [received] = spy.requests()[before:]
    assert received.method == "POST" and received.complete
    assert_framed(received, envoy_mode)
    assert received.body != body
    assert b"client_id%3D%221999%22" in received.body, received.body
    assert b"start=" in received.body and b"step=30" in received.body


@pytest.mark.parametrize("cached", [False, True], ids=["identity-looked-up", "identity-cached"])
def test_a_refused_body_never_reaches_the_backend(envoy_factory, vm, oidc, spy, slow_idp,
                                                 cached, envoy_mode):
    proxy = start(envoy_factory, spy, slow_idp, "envoy-refused-body")
    token = oidc.login("alice")
    if cached:
        cache(proxy, token)
    body = b"query=sum(&start=1&end=2&step=30"
    before = len(spy.requests())
    [answer] = send_in_parts(proxy.url, [form_post(vm, token, body) + body], pause_s=0)
    assert answer.status == 400 and refusing_layer(answer) == "filter", answer
    time.sleep(0.3)  # the relay sees the connection close
    received = spy.requests()[before:]
    if envoy_mode == "stop_iteration":
        # Envoy handed the body over with the headers held: judged before either went on.
        assert received == [], received
    else:
        # The headers went on when the identity was known, ahead of the body: Envoy reset
        # that request when the filter refused the body.
        assert all(r.body == b"" and not r.complete for r in received), received


@pytest.mark.parametrize("cached", [False, True], ids=["identity-looked-up", "identity-cached"])
def test_a_client_leaving_mid_body_leaves_nothing_behind(envoy_factory, vm, oidc, spy, slow_idp,
                                                        cached):
    proxy = start(envoy_factory, spy, slow_idp, "envoy-client-leaves")
    token = oidc.login("alice")
    if cached:
        cache(proxy, token)
    body = grafana_form(vm)
    before = len(spy.requests())
    send_in_parts(proxy.url, [form_post(vm, token, body) + body[:20]], pause_s=0,
                  close_after=True)
    time.sleep(IDP_DELAY_S + 0.5)
    assert all(r.body == b"" and not r.complete for r in spy.requests()[before:])
    # The filter serves the same token as before.
    [answer] = send_in_parts(proxy.url, [form_post(vm, token, body) + body], pause_s=0)
    assert assert_refused_or_confined(answer) == "confined", answer


def test_a_body_over_envoys_buffer_limit_is_refused_not_hung(envoy_factory, vm, oidc, spy,
                                                             slow_idp, envoy_mode):
    # A listener buffer of 64 KiB under a max_body_bytes of 1 MiB, and a 200 KiB form.
    proxy = start(envoy_factory, spy, slow_idp, "envoy-small-buffer", buffer_limit=65536)
    body = grafana_form(vm) + b"&pad=" + b"x" * (200 * 1024)
    before = len(spy.requests())
    for cached in (False, True):
        token = oidc.login("alice")
        if cached:
            cache(proxy, token)
        started = time.monotonic()
        [answer] = send_in_parts(proxy.url, [form_post(vm, token, body) + body], pause_s=0,
                                 timeout_s=20)
        if envoy_mode == "istio" and not cached:
            # Envoy held the body during the callout, pausing the client at its buffer
            # limit without an error; once the headers go on, the body the filter holds is
            # over the limit and Envoy reads no more: the filter refuses it when it stalls.
            assert answer.status == 408 and refusing_layer(answer) == "filter", answer
            assert answer.json()["errorType"] == "timeout"
            assert time.monotonic() - started < 15
        else:
            # The filter buffers the body as it comes; past the limit Envoy answers itself.
            assert answer.status == 413 and refusing_layer(answer) == "envoy", answer
    assert all(r.body == b"" for r in spy.requests()[before:])


def timed_post(spy, vm, token: str, url: str, envoy_mode: str | None = None) -> float:
    """Grafana's form POST to `url`, headers and body in one write; checks the backend
    got it confined (and, given `envoy_mode`, framed as `assert_framed` says) and
    returns how long the answer took, in seconds."""
    body = grafana_form(vm)
    before = len(spy.requests())
    started = time.monotonic()
    [answer] = send_in_parts(url, [form_post(vm, token, body) + body], pause_s=0,
                             timeout_s=8)
    took = time.monotonic() - started
    assert assert_refused_or_confined(answer) == "confined", answer
    [received] = spy.requests()[before:]
    assert b"client_id%3D%221999%22" in received.body, received.body
    if envoy_mode is not None:
        assert_framed(received, envoy_mode)
    return took


def test_a_worker_never_waits_on_a_wrong_guess_about_its_envoy(envoy_factory, vm, oidc, spy,
                                                               envoy_mode):
    """A worker learns from its requests whether Envoy hands bodies to held requests,
    and then skips the turn that would show it (src/lifecycle.rs). Only a body reaching
    a held request may teach it that: without the setting (Istio) none ever does. Were
    a worker taught wrongly, the next POST's headers would wait for the root's tick,
    a second or more. So, in each mode, on one worker, POSTs after the first (which
    looks the token up) are each served at once."""
    config = envoy_factory.config()
    ports = config.pop("_ports")
    config = envoy_config.set_backend_port(config, spy.port)
    proxy = envoy_factory.start({**config, "_ports": ports}, "envoy-learns",
                                concurrency=1).wait_ready()
    token = oidc.login("alice")
    timed_post(spy, vm, token, proxy.url)
    took = [timed_post(spy, vm, token, proxy.url, envoy_mode) for _ in range(6)]
    assert max(took) < 0.9, took


def test_listeners_with_and_without_the_setting_in_one_envoy_are_both_served(
        envoy_factory, vm, oidc, spy, envoy_mode):
    """A worker that saw a body arrive while its headers were held skips the turn for
    the next POSTs (src/lifecycle.rs). Two listeners, one with
    `allow_on_headers_stop_iteration` and one without, on one Envoy worker: whatever
    the order, each POST is served and rewritten, and none waits for long.

    Envoy 1.40 gives each listener its own root here (the plugin key has the name, the
    direction and the listener's metadata, but the two still got two roots), so the
    listener without the setting never sees the other's knowledge. Were the root
    shared, such a POST would wait for the root's tick (1 to 3 s) once, and the worker
    would take turns again: the `< 4` bound allows that, the unit and host tests
    (`a_worker_shown_a_held_body_skips_turns_until_one_goes_without`) check it."""
    if envoy_mode != "stop_iteration":
        pytest.skip("builds both listeners from the stop_iteration template; runs once")
    from procs import free_port
    config = envoy_factory.config()
    listen, admin = config.pop("_ports")
    config = envoy_config.set_backend_port(config, spy.port)
    other = envoy_config.without_stop_iteration(config)["static_resources"]["listeners"][0]
    other["name"] = f"{other['name']}-without-the-setting"
    other_port = free_port()
    other["address"]["socket_address"]["port_value"] = other_port
    config["static_resources"]["listeners"].append(other)
    # One worker, so that both listeners' requests run on the same thread.
    proxy = envoy_factory.start({**config, "_ports": (listen, admin)}, "envoy-mixed",
                                concurrency=1).wait_ready()
    token = oidc.login("alice")
    with_setting, without = proxy.url, f"http://127.0.0.1:{other_port}"

    def post(url: str) -> float:
        took = timed_post(spy, vm, token, url,
                          "stop_iteration" if url == with_setting else "istio")
        assert took < 4, (url, took)
        return took

    post(with_setting)                 # looks the token up; the body comes while held
    for url in [with_setting, without, without, with_setting, without, with_setting]:
        took = post(url)
        if url == with_setting:
            assert took < 1, took      # learned: the body came with the headers
