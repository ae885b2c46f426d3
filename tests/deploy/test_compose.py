"""docker-compose.yaml, checked without Docker: do the pieces agree with each other?

Parses the compose file (with compose's `${VAR:-default}` interpolation, as a user without
deploy/auth0.env gets it), the Envoy config it mounts, the Grafana provisioning and the
simulator, and checks the wiring a typo would break: ports, service names, mounts, the
module's path, the OAuth URLs, the data source, the users' tenants.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import ROOT, load_yaml, wasm_filters

SERVICES = {"wasm", "victoriametrics", "oidc", "envoy", "simulator", "grafana"}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, $$."""
    def sub(m: re.Match) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        value = env.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        return value or ""
    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", sub, text)
    return text.replace("$$", "$")


def compose(env: dict[str, str] | None = None) -> dict:
    return yaml.safe_load(interpolate((ROOT / "docker-compose.yaml").read_text(), env or {}))


@pytest.fixture(scope="module")
def c() -> dict:
    return compose()


def published(service: dict) -> dict[int, int]:
    """container port -> host port, asserting every port is on the host's loopback."""
    ports = {}
    for spec in service.get("ports", []):
        host_ip, host_port, container_port = spec.split(":")
        assert host_ip == "127.0.0.1", f"{spec}: publish on 127.0.0.1 only"
        ports[int(container_port)] = int(host_port)
    return ports


def mounts(service: dict) -> dict[str, str]:
    """container path -> source (host path or volume name)."""
    result = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        result[target] = source
    return result


def command_text(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def envoy_config(c: dict) -> dict:
    source = mounts(c["services"]["envoy"])["/etc/envoy/envoy.yaml"]
    return load_yaml(ROOT / source)


def cluster_address(config: dict, name: str) -> tuple[str, int]:
    cluster = next(x for x in config["static_resources"]["clusters"] if x["name"] == name)
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    return address["socket_address"]["address"], address["socket_address"]["port_value"]


def plugin_config(config: dict) -> dict:
    return json.loads(wasm_filters(config)[0]["configuration"]["value"])


def oidc_users(c: dict) -> dict[str, dict]:
    """The users oidc-provider-mock is started with: sub -> claims."""
    words = shlex.split(command_text(c["services"]["oidc"]).replace("\\\n", " "))
    users = {}
    for i, word in enumerate(words):
        if word == "--user-claims":
            claims = json.loads(words[i + 1])
            users[claims["sub"]] = claims
    return users


def oidc_port(c: dict) -> int:
    words = shlex.split(command_text(c["services"]["oidc"]).replace("\\\n", " "))
    return int(words[words.index("--port") + 1])


def vm_port(c: dict) -> int:
    flag = next(a for a in c["services"]["victoriametrics"]["command"] if a.startswith("-httpListenAddr="))
    return int(flag.rsplit(":", 1)[1])


def grafana_env(c: dict) -> dict[str, str]:
    return c["services"]["grafana"]["environment"]


def test_services(c):
    assert set(c["services"]) == SERVICES


def test_images(c):
    s = c["services"]
    assert s["victoriametrics"]["image"].startswith("victoriametrics/victoria-metrics:")
    assert s["envoy"]["image"].startswith("envoyproxy/envoy:v1.40")
    assert s["grafana"]["image"].startswith("grafana/grafana:")
    assert s["wasm"]["image"].startswith("rust:")
    assert "oidc-provider-mock" in command_text(s["oidc"])


def test_every_published_port_is_loopback_only(c):
    for service in c["services"].values():
        published(service)


def test_wasm_builder_feeds_envoy(c):
    s = c["services"]
    assert "cargo build --release --target wasm32-wasip1 --lib" in command_text(s["wasm"])
    assert "rustup target add wasm32-wasip1" in command_text(s["wasm"])
    assert s["envoy"]["depends_on"]["wasm"]["condition"] == "service_completed_successfully"
    # The builder copies the module into a volume that envoy mounts where its config looks.
    builder_out = {v: p for p, v in mounts(s["wasm"]).items()}["wasm"]
    copy = re.search(r"cp (\S+promql_tenant_filter\.wasm) (\S+)", command_text(s["wasm"]))
    assert copy and copy.group(2).rstrip("/") == builder_out
    envoy_wasm_dir = {v: p for p, v in mounts(s["envoy"]).items()}["wasm"]
    module = wasm_filters(envoy_config(c))[0]["vm_config"]["code"]["local"]["filename"]
    assert module == f"{envoy_wasm_dir}/promql_tenant_filter.wasm"
    assert "wasm" in c["volumes"]
    # The checkout is read-only to the builder: cargo writes into its own volume.
    assert mounts(s["wasm"])["/src"] == "./" and s["wasm"]["volumes"][0].endswith(":ro")
    assert s["wasm"]["environment"]["CARGO_TARGET_DIR"] in mounts(s["wasm"])


def test_envoy_mounts_its_config_and_listens_where_published(c):
    s = c["services"]["envoy"]
    assert mounts(s)["/etc/envoy/envoy.yaml"] == "./envoy/envoy.compose.yaml"
    assert "-c /etc/envoy/envoy.yaml" in command_text(s)
    config = envoy_config(c)
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    admin = config["admin"]["address"]["socket_address"]
    assert set(published(s)) == {listener["port_value"], admin["port_value"]}
    # Inside its container Envoy must listen beyond loopback, or nothing could reach it.
    assert listener["address"] == "0.0.0.0"


def test_envoy_clusters_are_the_compose_services(c):
    config = envoy_config(c)
    assert cluster_address(config, "oidc") == ("oidc", oidc_port(c))
    assert cluster_address(config, "backend") == ("victoriametrics", vm_port(c))
    identity = plugin_config(config)["identity"]
    assert identity["source"] == "userinfo" and identity["cluster"] == "oidc"
    assert identity["authority"] == f"oidc:{oidc_port(c)}"


def test_users_carry_the_claim_the_filter_reads(c):
    users = oidc_users(c)
    claim = plugin_config(envoy_config(c))["identity"]["claim"]
    assert {sub: str(u[claim]) for sub, u in users.items()} == {"alice": "1999", "bob": "2000"}
    # Grafana logs users in by these claims.
    env = grafana_env(c)
    for u in users.values():
        assert env["GF_AUTH_GENERIC_OAUTH_LOGIN_ATTRIBUTE_PATH"] in u
        assert env["GF_AUTH_GENERIC_OAUTH_EMAIL_ATTRIBUTE_PATH"] in u


def test_simulator_writes_both_tenants_to_victoriametrics(c):
    s = c["services"]["simulator"]
    assert urlsplit(s["environment"]["VM_URL"]).netloc == f"victoriametrics:{vm_port(c)}"
    tenants = s["environment"]["TENANTS"].split(",")
    claim = plugin_config(envoy_config(c))["identity"]["claim"]
    assert sorted(tenants) == sorted(str(u[claim]) for u in oidc_users(c).values())
    script = command_text(s).split()[-1]
    app_dir, name = os.path.split(script)
    assert (ROOT / mounts(s)[app_dir] / name).is_file()
    # The label the simulator writes is the one the filter enforces.
    source = (ROOT / mounts(s)[app_dir] / name).read_text()
    assert f'{plugin_config(envoy_config(c))["tenant_label"]}="' in source


def test_grafana_oauth_urls(c):
    env = grafana_env(c)
    port = oidc_port(c)
    host_port = published(c["services"]["oidc"])[port]
    # The browser follows the authorization URL: it must be the host's published port.
    auth = urlsplit(env["GF_AUTH_GENERIC_OAUTH_AUTH_URL"])
    assert (auth.hostname, auth.port, auth.path) == ("localhost", host_port, "/oauth2/authorize")
    # Grafana's backend calls these from inside the network: the service name.
    token = urlsplit(env["GF_AUTH_GENERIC_OAUTH_TOKEN_URL"])
    api = urlsplit(env["GF_AUTH_GENERIC_OAUTH_API_URL"])
    assert (token.hostname, token.port, token.path) == ("oidc", port, "/oauth2/token")
    assert (api.hostname, api.port, api.path) == ("oidc", port, "/userinfo")
    assert env["GF_AUTH_GENERIC_OAUTH_ENABLED"] == "true"
    assert "openid" in env["GF_AUTH_GENERIC_OAUTH_SCOPES"].split()
    root = urlsplit(env["GF_SERVER_ROOT_URL"])
    grafana_host_port = published(c["services"]["grafana"])[3000]
    assert (root.hostname, root.port) == ("localhost", grafana_host_port)


def provisioning(c: dict, kind: str) -> list[dict]:
    target = "/etc/grafana/provisioning"
    directory = ROOT / mounts(c["services"]["grafana"])[target] / kind
    files = sorted(directory.glob("*.yaml"))
    assert files, f"no {kind} provisioning"
    return [load_yaml(f) for f in files]


def test_grafana_datasource_points_at_envoy_with_the_users_token(c):
    sources = [d for doc in provisioning(c, "datasources") for d in doc["datasources"]]
    assert len(sources) == 1
    ds = sources[0]
    config = envoy_config(c)
    port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy"
    assert ds["url"] == f"http://envoy:{port}"
    assert ds["jsonData"]["oauthPassThru"] is True
    assert ds["jsonData"]["httpMethod"] == "POST"


def test_grafana_dashboard_is_provisioned_over_the_simulators_metrics(c):
    providers = [p for doc in provisioning(c, "dashboards") for p in doc["providers"]]
    assert len(providers) == 1
    path = providers[0]["options"]["path"]
    host_dir = ROOT / mounts(c["services"]["grafana"])[path]
    dashboards = sorted(host_dir.glob("*.json"))
    assert dashboards
    ds_uid = [d for doc in provisioning(c, "datasources") for d in doc["datasources"]][0]["uid"]
    simulator = (ROOT / "deploy/simulator/simulator.py").read_text()
    for f in dashboards:
        dash = json.loads(f.read_text())
        exprs = []
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == ds_uid, panel["title"]
            exprs += [t["expr"] for t in panel["targets"]]
        for var in dash.get("templating", {}).get("list", []):
            assert var["datasource"]["uid"] == ds_uid
        names = {n for e in exprs for n in re.findall(r"\b([a-z_]+_(?:total|bytes|depth|bucket|seconds))\b", e)}
        assert names, f.name
        for n in names:
            assert n.removesuffix("_bucket") in simulator, f"{f.name}: {n} is not simulated"


def test_auth0_variant_sets_every_variable_compose_reads():
    text = "\n".join(line for line in (ROOT / "docker-compose.yaml").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = dict(line.split("=", 1) for line in
                   (ROOT / "deploy/auth0.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    # Compose defaults every variable to the mock setup; the Auth0 file overrides them all.
    assert used - {"GRAFANA_ADMIN_PASSWORD"} <= set(example), used - set(example)
    c = compose(example)
    env = grafana_env(c)
    domain = example["AUTH0_DOMAIN"]
    for key in ("AUTH_URL", "TOKEN_URL", "API_URL"):
        assert urlsplit(env[f"GF_AUTH_GENERIC_OAUTH_{key}"]).hostname == domain
    assert mounts(c["services"]["envoy"])["/etc/envoy/envoy.yaml"] == example["ENVOY_CONFIG"]
    # The rendered config is git-ignored: it is made from the template and the env file.
    assert "/envoy/*.local.yaml" in (ROOT / ".gitignore").read_text().split()
    template = (ROOT / "envoy/envoy.auth0.yaml").read_text()
    assert set(re.findall(r"\$\{([A-Z0-9_]+)\}", template)) <= set(example)
    # The Action's namespace and the claim the filter reads are the same name.
    action = (ROOT / "deploy/auth0/add-tenant-claim.js").read_text()
    namespace = re.search(r'const NAMESPACE = "([^"]+)"', action).group(1)
    assert example["AUTH0_CLAIM"] == f"{namespace}client_id"
