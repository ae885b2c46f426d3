"""The second identity source: `jwt_payload_header` behind Envoy's own `jwt_authn`.

The test makes an RSA key and its JWKS, starts Envoy on envoy/envoy.jwt.yaml, and signs
JWTs itself. Verified tokens confine each caller to their tenant without any /userinfo
call; tokens that jwt_authn rejects never reach the filter or VictoriaMetrics; a forged
`x-jwt-payload` header changes nothing; a token without the claim gets 403.
"""

from __future__ import annotations

import base64
import json

import jwt_keys
import pytest
import seed
from conftest import assert_prometheus_error, call


@pytest.fixture(scope="module")
def signing_key():
    return jwt_keys.SigningKey("e2e-key-1")


@pytest.fixture(scope="module")
def jwt_envoy(tmp_path_factory, workdir, vm, oidc, wasm, signing_key, envoy_mode):
    from conftest import EnvoyFactory

    jwks = tmp_path_factory.mktemp("jwks") / "jwks.json"
    jwks.write_text(signing_key.jwks())
    factory = EnvoyFactory(workdir, vm, oidc, wasm, envoy_mode)
    try:
        config = factory.config("envoy.jwt.yaml", JWT_ISSUER=jwt_keys.ISSUER, JWKS_PATH=jwks)
        yield factory.start(config, "envoy-jwt").wait_ready()
    finally:
        factory.stop()


def series(proxy, vm, token, headers=None):
    params = {"match[]": '{__name__=~".+"}', "start": vm.start_s, "end": vm.seed_s + 60}
    all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    return call(proxy, "GET", "/api/v1/series", None, params, headers=all_headers)


@pytest.mark.parametrize("sub,claim,tenant", [("alice", "1999", "1999"), ("bob", 2000, "2000")])
def test_verified_jwt_confines_to_its_tenant(jwt_envoy, vm, oidc, signing_key, sub, claim, tenant):
    before = oidc.userinfo_calls()
    response = series(jwt_envoy, vm, signing_key.token({"sub": sub, "client_id": claim}))
    assert response.status_code == 200, response.text[:300]
    assert {seed.as_key(s) for s in response.json()["data"]} == seed.keys_of(tenant)
    assert oidc.userinfo_calls() == before  # this source never calls the IdP


def test_array_claim_gives_both_tenants_and_nothing_else(jwt_envoy, vm, signing_key):
    token = signing_key.token({"sub": "ops", "client_id": ["1999", 2000]})
    response = series(jwt_envoy, vm, token)
    assert response.status_code == 200, response.text[:300]
    got = {seed.as_key(s) for s in response.json()["data"]}
    assert got == seed.keys_of("1999") | seed.keys_of("2000")


def test_forged_payload_header_changes_nothing(jwt_envoy, vm, signing_key):
    forged = base64.urlsafe_b64encode(json.dumps({"client_id": "2000"}).encode()).decode()
    token = signing_key.token({"sub": "alice", "client_id": "1999"})
    response = series(jwt_envoy, vm, token, headers={"x-jwt-payload": forged.rstrip("=")})
    assert response.status_code == 200, response.text[:300]
    assert {seed.as_key(s) for s in response.json()["data"]} == seed.keys_of("1999")


def test_forged_payload_header_without_a_jwt_is_rejected(jwt_envoy, vm):
    forged = base64.urlsafe_b64encode(b'{"client_id":"2000"}').decode().rstrip("=")
    params = {"match[]": "up", "start": vm.start_s, "end": vm.seed_s}
    response = call(jwt_envoy, "GET", "/api/v1/series", None, params,
                    headers={"x-jwt-payload": forged})
    assert response.status_code == 401


@pytest.mark.parametrize("case", ["other-key", "expired", "wrong-issuer", "wrong-audience"])
def test_jwt_rejected_by_jwt_authn_never_reaches_the_backend(jwt_envoy, vm, signing_key, case):
    claims = {"sub": "alice", "client_id": "1999"}
    if case == "other-key":
        token = jwt_keys.SigningKey(signing_key.kid).token(claims)
    elif case == "expired":
        token = signing_key.token(claims, lifetime_s=-120)
    elif case == "wrong-issuer":
        token = signing_key.token(claims, iss="someone-else")
    else:
        token = signing_key.token(claims, aud="another-service")
    before = jwt_envoy.backend_stat("upstream_rq_total")
    # jwt_authn's own answer: 401, or 403 for an audience it does not accept.
    assert series(jwt_envoy, vm, token).status_code == (403 if case == "wrong-audience" else 401)
    assert jwt_envoy.backend_stat("upstream_rq_total") == before


def test_jwt_without_the_claim_is_403(jwt_envoy, vm, signing_key):
    response = series(jwt_envoy, vm, signing_key.token({"sub": "carol"}))
    assert_prometheus_error(response, 403, "forbidden")
