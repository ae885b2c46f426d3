"""Istio's case, end to end: the committed WasmPlugin in an Envoy shaped the way istiod
configures a sidecar for it.

The plugin's configuration is deploy/istio/wasmplugin.yaml's `pluginConfig`, unchanged,
serialized as Istio hands it to the module, in envoy/envoy.istio-shaped.yaml: no
`allow_on_headers_stop_iteration`, Istio's cluster names (the IdP's
`outbound|443||example.eu.auth0.com` from the ServiceEntry, the workload's
`inbound|<port>||`), its path normalization, no local reply mapping. The users carry the
tenant in Auth0's namespaced claim, as the plugin reads it. Grafana's default POST
queries are served, and each user sees exactly their own tenant.

The whole suite also runs in this shape (the `istio` mode); this module is what proves
that the committed file itself works.
"""

from __future__ import annotations

import json

import envoy_config
import pytest
import seed
from adversary import ANY_SERIES, Answer, assert_refused_or_confined
from conftest import call, filter_config, launch

CLAIM = "https://example.com/client_id"
USERS = {"istio-alice": seed.ALICE_TENANT, "istio-bob": seed.BOB_TENANT}


@pytest.fixture(scope="module")
def istio_envoy(workdir, vm, oidc, wasm):
    config = filter_config(vm, oidc.port, wasm, envoy_config.ISTIO_TEMPLATE)
    config = {**envoy_config.with_plugin_config(config, envoy_config.istio_plugin_config()),
              "_ports": config["_ports"]}
    proxy = launch(workdir, "envoy-istio-wasmplugin", config)
    try:
        yield proxy.wait_ready()
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def istio_tokens(oidc) -> dict[str, str]:
    for user, tenant in USERS.items():
        oidc.set_user(user, {CLAIM: tenant})
    return {user: oidc.login(user) for user in USERS}


def test_the_template_is_what_istio_generates_from_the_wasmplugin(vm, oidc, wasm):
    config = filter_config(vm, oidc.port, wasm, envoy_config.ISTIO_TEMPLATE)
    [wasm_filter] = [f for f in envoy_config.http_filters(config)
                     if f["name"].startswith("extensions.istio.io/wasmplugin/")]
    plugin = wasm_filter["typed_config"]["config"]
    assert plugin["configuration"]["value"] == envoy_config.istio_plugin_config()
    assert "allow_on_headers_stop_iteration" not in plugin
    # Istio's mapping of failStrategy (pilot/pkg/model/extensions.go).
    strategy = envoy_config.wasmplugin_spec()["failStrategy"]
    assert plugin["failure_policy"] == {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN",
                                        "FAIL_RELOAD": "FAIL_RELOAD"}[strategy]
    clusters = {c["name"] for c in config["static_resources"]["clusters"]}
    identity = json.loads(plugin["configuration"]["value"])["identity"]
    assert identity["cluster"] in clusters
    assert envoy_config.backend_cluster(config) == f"inbound|{vm.port}||"


@pytest.mark.parametrize("user", sorted(USERS))
def test_grafanas_post_queries_see_exactly_their_own_tenant(istio_envoy, vm, istio_tokens, user):
    token, tenant = istio_tokens[user], USERS[user]
    window = {"start": vm.start_s, "end": vm.seed_s + 60}
    requests_ = [
        ("/api/v1/query_range", {"query": ANY_SERIES, "step": 30, **window}),
        ("/api/v1/query", {"query": f"count by (client_id) ({ANY_SERIES})", "time": vm.seed_s}),
        ("/api/v1/query_exemplars", {"query": ANY_SERIES, **window}),
        ("/api/v1/series", {"match[]": ANY_SERIES, **window}),
        ("/api/v1/labels", window),
        ("/api/v1/label/client_id/values", window),
    ]
    for path, params in requests_:
        response = call(istio_envoy, "POST", path, token, params)
        answer = Answer.of(response)
        assert assert_refused_or_confined(answer, own=(tenant,)) == "confined", (path, answer)
    # And the data is there: each tenant's own series, every one of them.
    response = call(istio_envoy, "POST", "/api/v1/query", token,
                    {"query": ANY_SERIES, "time": vm.seed_s})
    seen = {s["metric"]["client_id"] for s in response.json()["data"]["result"]}
    assert seen == {tenant}
    response = call(istio_envoy, "POST", "/api/v1/label/client_id/values", token, window)
    assert response.json()["data"] == [tenant]
