"""Bad plugin configurations: Envoy refuses to start, and its log names the wrong field.

Each case starts a real Envoy on envoy/envoy.yaml with one defect in the plugin's JSON;
the filter's `on_configure` must return false, so that Envoy (FAIL_CLOSED) exits instead
of serving. The committed configs themselves must pass `envoy --mode validate`.
"""

from __future__ import annotations

import json
import subprocess

import envoy_config
import jwt_keys
import pytest
from conftest import filter_config
from services import envoy_binary


def edited(config: dict, edit) -> dict:
    plugin = envoy_config.plugin_config(config)
    edit(plugin)
    return envoy_config.with_plugin_config(config, plugin)


CASES = {
    # id: (edit of the plugin JSON, words one of which the log must contain)
    "unknown-top-level-field": (lambda p: p.update(tenant_labl="client_id"), ["tenant_labl"]),
    "unknown-identity-field": (lambda p: p["identity"].update(timeout=5), ["timeout"]),
    "wrong-type": (lambda p: p["identity"].update(timeout_ms="2000"), ["timeout_ms"]),
    "wrong-type-top-level": (lambda p: p.update(max_body_bytes=-1), ["max_body_bytes"]),
    "missing-tenant-label": (lambda p: p.pop("tenant_label"), ["tenant_label"]),
    "missing-claim": (lambda p: p["identity"].pop("claim"), ["claim"]),
    "missing-cluster": (lambda p: p["identity"].pop("cluster"), ["cluster"]),
    "unknown-source": (lambda p: p["identity"].update(source="ldap"), ["source", "ldap"]),
    "bad-on-conflict": (lambda p: p.update(on_conflict="xor"), ["on_conflict", "xor"]),
    "claim-wrong-type": (lambda p: p["identity"].update(claim=42), ["claim"]),
    # Prometheus' remote-write receiver ignores extra_label: nothing would confine a write.
    "writes-on-prometheus": (
        lambda p: p.update(backend="prometheus", dialect="promql",
                           victoriametrics_extra_label=False, writes="victoriametrics"),
        ["writes"]),
    "write-claim-with-writes-denied": (
        lambda p: p["identity"].update(write_tenant_claim="w"), ["write_tenant_claim"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_envoy_refuses_a_bad_plugin_config_and_names_the_field(envoy_factory, case):
    edit, words = CASES[case]
    proxy = envoy_factory.start(edited(envoy_factory.config(), edit), f"envoy-bad-{case}")
    code = proxy.wait_exit(timeout_s=60)
    log = proxy.proc.log()
    assert code != 0, log[-2000:]
    # Only the filter's own message counts, not Envoy echoing the config back.
    lines = [line for line in log.splitlines() if "[wasm]" in line or "wasm log" in line]
    assert any(word in line for line in lines for word in words), \
        f"no log line names {words}:\n" + "\n".join(lines[-20:])


@pytest.mark.parametrize("text", ["", "{", "[]", '"client_id"', "null"])
def test_envoy_refuses_a_plugin_config_that_is_not_a_json_object(envoy_factory, text):
    proxy = envoy_factory.start(envoy_config.with_plugin_config(envoy_factory.config(), text),
                                "envoy-bad-json")
    assert proxy.wait_exit(timeout_s=60) != 0, proxy.proc.log_tail()


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy.jwt.yaml", "envoy.istio-shaped.yaml",
                                      "envoy.writes.yaml"])
def test_committed_config_passes_envoy_validate(vm, oidc, wasm, tmp_path, template):
    # As committed, whatever the session's mode.
    (tmp_path / "jwks.json").write_text(jwt_keys.SigningKey("validate").jwks())
    config = filter_config(vm, oidc.port, wasm, template, JWT_ISSUER=jwt_keys.ISSUER,
                           JWKS_PATH=tmp_path / "jwks.json")
    config.pop("_ports")
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
