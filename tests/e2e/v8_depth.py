"""Measures how deep a query (or a claims answer) may nest before the filter traps in V8.

Not a test: a measurement, run by hand (`.venv/bin/python tests/e2e/v8_depth.py`),
whose figures are in docs/security.md ("Recursion"). The filter refuses queries deeper
than `MAX_NESTING` long before they reach V8's limit; to find that limit, this builds the
module from the current sources with the caps lifted (`MAX_NESTING` and
`MAX_BINARY_OPERATORS` raised, serde_json's recursion limit off) into
target/v8-depth/, starts the real Envoy (one worker), VictoriaMetrics and OIDC provider
as the end-to-end tests do, and for each recursive form finds by bisection the largest
size that is answered without a Wasm trap. A trap takes the worker's VM down
(FAIL_CLOSED), so each trap is followed by a fresh Envoy.

The forms are those of tests/recursion.rs and tests/e2e/test_hostile_depth.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))

import envoy_config  # noqa: E402
from procs import free_port, stop_all  # noqa: E402
from services import Envoy, IdpRelay, OidcProvider, VictoriaMetrics  # noqa: E402
from test_hostile_depth import FORMS, form_body, wasm_traps  # noqa: E402

REPO = envoy_config.REPO
BUILD = REPO / "target/v8-depth"
# The body a probe may carry stays under Envoy's 1 MiB buffer limit.
MAX_BODY = 1_000_000


def uncapped_module() -> Path:
    """The module built from the working tree with every depth cap lifted."""
    src = BUILD / "src-tree"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for name in ("Cargo.toml", "Cargo.lock"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src")
    (src / "benches").mkdir()
    for bench in (REPO / "benches").glob("*.rs"):
        shutil.copy(bench, src / "benches" / bench.name)
    lexer = src / "src/promql/lexer.rs"
    text = lexer.read_text()
    text = re.sub(r"pub const MAX_NESTING: usize = \d+;", "pub const MAX_NESTING: usize = 10_000_000;", text)
    text = re.sub(r"pub const MAX_BINARY_OPERATORS: usize = \d+;",
                  "pub const MAX_BINARY_OPERATORS: usize = 10_000_000;", text)
    lexer.write_text(text)
    # serde_json stops at 128 levels; lift that too, to see where V8 would stop.
    cargo = src / "Cargo.toml"
    cargo.write_text(cargo.read_text().replace('serde_json = "1"',
                                               'serde_json = { version = "1", features = ["unbounded_depth"] }'))
    identity = src / "src/identity.rs"
    text = identity.read_text()
    text = text.replace("serde_json::from_slice::<Value>(", "unbounded_json(")
    text += '''
fn unbounded_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let v = Value::deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}
'''
    identity.write_text(text)
    env = {**os.environ, "CARGO_TARGET_DIR": str(BUILD / "target")}
    subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1", "--lib"],
                   cwd=src, env=env, check=True)
    return BUILD / "target/wasm32-wasip1/release/promql_tenant_filter.wasm"


class Stand:
    def __init__(self, wasm: Path, workdir: Path):
        self.wasm, self.workdir = wasm, workdir
        self.vm = VictoriaMetrics(workdir)
        self.oidc = OidcProvider(workdir, {"alice": {"client_id": "1999"}})
        self.token = self.oidc.login("alice")
        self.relay = IdpRelay(self.oidc.url)
        self.proxies: dict[str, Envoy] = {}
        self.count = 0

    def proxy(self, dialect: str) -> Envoy:
        if dialect not in self.proxies:
            self.count += 1
            listen, admin = free_port(), free_port()
            config = envoy_config.render(
                envoy_config.ENVOY_DIR / "envoy.yaml", LISTEN_PORT=listen, ADMIN_PORT=admin,
                OIDC_PORT=self.relay.port, BACKEND_PORT=self.vm.port, WASM_PATH=self.wasm)
            plugin = envoy_config.plugin_config(config)
            plugin["dialect"] = dialect
            plugin["max_body_bytes"] = MAX_BODY + 4096
            plugin["identity"]["cache_ttl_s"] = 0
            plugin["identity"]["negative_cache_ttl_s"] = 0
            plugin["identity"]["failure_cache_ttl_s"] = 0
            config = envoy_config.with_plugin_config(config, plugin)
            self.proxies[dialect] = Envoy(self.workdir, f"envoy-{self.count}", config,
                                          admin_port=admin, listen_port=listen,
                                          concurrency=1).wait_ready()
        return self.proxies[dialect]

    def survives(self, dialect: str, body: str) -> bool:
        """Whether the filter answers `body` (a query form) without trapping."""
        proxy = self.proxy(dialect)
        try:
            r = requests.post(proxy.url + "/api/v1/query", data=body.encode(), timeout=10,
                              headers={"Authorization": "Bearer " + self.token,
                                       "Content-Type": "application/x-www-form-urlencoded"})
            answered = r.status_code < 500
        except requests.RequestException:
            answered = False
        trapped = bool(wasm_traps(proxy.proc.log()))
        if trapped or not answered:
            proxy.stop()
            del self.proxies[dialect]
            return False
        return True

    def stop(self) -> None:
        self.relay.stop()
        for proxy in self.proxies.values():
            proxy.stop()
        self.oidc.stop()
        self.vm.stop()


def largest(ok, low: int, high: int) -> int:
    """Largest n in [low, high] with ok(n), assuming ok is monotonic and ok(low)."""
    while low < high:
        mid = (low + high + 1) // 2
        if ok(mid):
            low = mid
        else:
            high = mid - 1
    return low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wasm", type=Path, help="a module to measure instead of building one")
    parser.add_argument("--all-dialects", action="store_true",
                        help="measure each form in every dialect that takes it")
    parser.add_argument("--max-size", type=int, default=20_000,
                        help="the largest size tried (the lexer is quadratic in depth once "
                             "uncapped, so far beyond V8's limit a probe takes minutes)")
    args = parser.parse_args()
    wasm = args.wasm or uncapped_module()
    workdir = Path(tempfile.mkdtemp(prefix="v8-depth-"))
    stand = Stand(wasm, workdir)
    results = []
    try:
        for form in FORMS:
            # The dialects share the recursive code; one is measured unless asked.
            for dialect in form.dialects if args.all_dialects else form.dialects[:1]:
                fits = (MAX_BODY - 100) // max(1, len(form_body(form.query(1))) - len(form_body(form.query(0))))
                def ok(n, form=form, dialect=dialect):
                    return stand.survives(dialect, form_body(form.query(n)))
                high = min(fits, args.max_size)
                top = largest(ok, 1, high)
                results.append((form.name, dialect, top, "limit not reached" if top == high else "traps at " + str(top + 1)))
                print(f"{form.name:28} {dialect:9} {results[-1][3]:>24}  (largest that works: {top})", flush=True)

        # Claims: a userinfo answer nested d levels deep.
        def claims_ok(d: int) -> bool:
            body = json.dumps({"client_id": "1999", "x": None}).encode()
            nested = b'{"client_id":"1999","x":' + b"[" * d + b"]" * d + b"}"
            stand.relay.answer = (200, nested if d else body, "application/json")
            return stand.survives("promql", "query=up")
        top = largest(claims_ok, 1, args.max_size)
        stand.relay.answer = None
        print(f"{'claims JSON (userinfo)':28} {'-':9} {'traps at ' + str(top + 1):>24}  (largest that works: {top})")
        print(f"logs: {workdir}")
    finally:
        stand.stop()
        stop_all()


if __name__ == "__main__":
    main()
