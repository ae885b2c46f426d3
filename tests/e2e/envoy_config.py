"""Fill in the committed Envoy config templates and derive test variants from them.

The tests never write an Envoy config of their own: they start from `envoy/*.yaml`, fill
in the `${NAME}` placeholders, and change only what a test is about (the plugin's JSON
configuration, or the wasm filter removed for the smoke test) as structured data.

Every Envoy of the end-to-end suite runs in one of two modes (`MODES`, the session's
`envoy_mode` parameter in conftest.py):
- `stop_iteration`: the committed gateway configs, whose wasm filter sets
  `allow_on_headers_stop_iteration: true`;
- `istio`: the filter as Istio configures it, without that setting:
  `envoy/envoy.istio-shaped.yaml` carrying the committed WasmPlugin's `pluginConfig`
  (deploy/istio/wasmplugin.yaml) for the userinfo source, and the jwt config with the
  setting removed for the jwt source.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ENVOY_DIR = REPO / "envoy"
WASM_FILTER = "envoy.filters.http.wasm"
_WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
_PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")

MODES = ("stop_iteration", "istio")
ISTIO_TEMPLATE = "envoy.istio-shaped.yaml"
WASMPLUGIN = REPO / "deploy" / "istio" / "wasmplugin.yaml"


def render(template: Path, **values: object) -> dict:
    """The template with every placeholder filled in, parsed; refuses a missing value.

    Values a template has no placeholder for are ignored (envoy.jwt.yaml has no IdP)."""
    text = template.read_text()
    missing = set(_PLACEHOLDER.findall(text)) - values.keys()
    if missing:
        raise ValueError(f"{template.name}: no value for {sorted(missing)}")
    filled = _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)
    return yaml.safe_load(filled)


def _connection_manager(config: dict) -> dict:
    listener = config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def http_filters(config: dict) -> list[dict]:
    return _connection_manager(config)["http_filters"]


# The second instance of the filter in envoy/envoy.writes.yaml, on the write route.
WRITES_FILTER = "promql_tenant_filter.writes"


def _is_wasm(http_filter: dict) -> bool:
    # By type, not name: Istio names the filter after the WasmPlugin.
    return http_filter.get("typed_config", {}).get("@type") == _WASM_TYPE


def _wasm_plugin(config: dict, name: str | None = None) -> dict:
    """The first wasm filter's PluginConfig, or that of the filter `name`."""
    for http_filter in http_filters(config):
        if _is_wasm(http_filter) and name in (None, http_filter["name"]):
            return http_filter["typed_config"]["config"]
    raise KeyError(f"no wasm filter {name!r} in this config")


def wasm_plugin(config: dict) -> dict:
    """The wasm filter's `config` (a PluginConfig), to edit in place."""
    return _wasm_plugin(config)


def plugin_config(config: dict, name: str | None = None) -> dict:
    """The plugin's JSON configuration (of the first wasm filter, or of `name`), decoded."""
    return json.loads(_wasm_plugin(config, name)["configuration"]["value"])


def with_plugin_config(config: dict, plugin: dict | str, name: str | None = None) -> dict:
    """A copy of `config` whose plugin configuration (of the first wasm filter, or of
    `name`) is `plugin` (a dict, or raw text)."""
    config = copy.deepcopy(config)
    text = plugin if isinstance(plugin, str) else json.dumps(plugin)
    _wasm_plugin(config, name)["configuration"]["value"] = text
    return config


def with_identity(config: dict, **identity: object) -> dict:
    """A copy with fields of the plugin's `identity` object replaced (None deletes)."""
    plugin = plugin_config(config)
    for key, value in identity.items():
        if value is None:
            plugin["identity"].pop(key, None)
        else:
            plugin["identity"][key] = value
    return with_plugin_config(config, plugin)


def without_wasm(config: dict) -> dict:
    """A copy with the wasm filter removed: plain routing, for the harness' smoke test."""
    config = copy.deepcopy(config)
    manager = _connection_manager(config)
    manager["http_filters"] = [f for f in manager["http_filters"] if not _is_wasm(f)]
    return config


def without_stop_iteration(config: dict) -> dict:
    """A copy whose wasm filter lacks `allow_on_headers_stop_iteration`, as under Istio."""
    config = copy.deepcopy(config)
    _wasm_plugin(config).pop("allow_on_headers_stop_iteration", None)
    return config


def backend_cluster(config: dict) -> str:
    """The cluster requests are routed to: `backend`, or Istio's `inbound|<port>||`."""
    route_config = _connection_manager(config)["route_config"]
    return route_config["virtual_hosts"][0]["routes"][0]["route"]["cluster"]


def set_backend_port(config: dict, port: int) -> dict:
    """A copy with the backend moved to 127.0.0.1:`port`."""
    return set_cluster_port(config, backend_cluster(config), port)


def wasmplugin_spec() -> dict:
    """The committed WasmPlugin's `spec`."""
    return yaml.safe_load(WASMPLUGIN.read_text())["spec"]


def istio_plugin_config() -> str:
    """The committed WasmPlugin's `pluginConfig` as Istio hands it to the module: JSON
    text from Go's jsonpb, compact, keys sorted (pilot/pkg/model/extensions.go)."""
    return json.dumps(wasmplugin_spec()["pluginConfig"], sort_keys=True, separators=(",", ":"))


def render_mode(mode: str, template: str, **values: object) -> dict:
    """`template` as the suite runs it in `mode` (see the module doc)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if mode == "stop_iteration" or template not in ("envoy.yaml", "envoy.jwt.yaml"):
        return render(ENVOY_DIR / template, **values)
    if template == "envoy.jwt.yaml":
        return without_stop_iteration(render(ENVOY_DIR / template, **values))
    config = with_plugin_config(render(ENVOY_DIR / ISTIO_TEMPLATE, **values),
                                istio_plugin_config())
    # The test provider's users carry `client_id`; Auth0's namespaced claim, as the
    # WasmPlugin has it, is test_istio.py's business.
    gateway = plugin_config(render(ENVOY_DIR / template, **values))
    return with_identity(config, claim=gateway["identity"]["claim"])


def set_cluster_port(config: dict, cluster: str, port: int) -> dict:
    """A copy with `cluster`'s single endpoint moved to 127.0.0.1:`port`."""
    config = copy.deepcopy(config)
    for entry in config["static_resources"]["clusters"]:
        if entry["name"] == cluster:
            endpoint = entry["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
            return config
    raise KeyError(cluster)
