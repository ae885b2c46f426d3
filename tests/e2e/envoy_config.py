"""Fill in the committed Envoy config templates and derive test variants from them.

The tests never write an Envoy config of their own: they start from `envoy/*.yaml`, fill
in the `${NAME}` placeholders, and change only what a test is about (the plugin's JSON
configuration, or the wasm filter removed for the smoke test) as structured data.
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
_PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


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


def _wasm_plugin(config: dict, name: str = WASM_FILTER) -> dict:
    for http_filter in http_filters(config):
        if http_filter["name"] == name:
            return http_filter["typed_config"]["config"]
    raise KeyError(f"no wasm filter {name!r} in this config")


def plugin_config(config: dict, name: str = WASM_FILTER) -> dict:
    """The plugin's JSON configuration of the wasm filter `name`, decoded."""
    return json.loads(_wasm_plugin(config, name)["configuration"]["value"])


def with_plugin_config(config: dict, plugin: dict | str, name: str = WASM_FILTER) -> dict:
    """A copy of `config` whose plugin configuration (of the wasm filter `name`) is
    `plugin` (a dict, or raw text)."""
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
    manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] != WASM_FILTER]
    return config


def set_cluster_port(config: dict, cluster: str, port: int) -> dict:
    """A copy with `cluster`'s single endpoint moved to 127.0.0.1:`port`."""
    config = copy.deepcopy(config)
    for entry in config["static_resources"]["clusters"]:
        if entry["name"] == cluster:
            endpoint = entry["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
            return config
    raise KeyError(cluster)
