"""`make bench`'s `instructions` phase: what a request costs inside real Envoy, counted
rather than timed.

Envoy (with its V8) runs under valgrind's callgrind, one worker, the filter (A) in one
process and the do-nothing filter (C) in another, on the overhead phase's config. After a
warm-up, the counters are zeroed, a fixed number of requests is sent one at a time, and
the counters are dumped. Instructions are split by where they ran: `envoy` (Envoy and
V8's runtime, host calls included), `jit` (code V8 generated: the module's functions and
V8's wrappers around them; valgrind names no object for it), and the rest (libc, the
loader, the kernel's vdso).

On a 2-core machine shared with the load generator and other work, throughput moves by
a fifth between runs; over four runs of the same do-nothing filter its total count
moved by 0.7% (its smallest part, `jit`, by 3%), so the count shows what a change to
the filter did even where the timing cannot.
It does not show what the count costs in time: Envoy's own code runs slower per
instruction beside a filter whose code and data evict its own from the caches
(docs/profiling.md).
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import requests

from procs import Proc, wait_until

# Requests counted per case, after WARM_UP uncounted ones. Under valgrind Envoy serves
# a few hundred requests a second, one at a time.
COUNTED = 300
WARM_UP = 100
# Starting Envoy under valgrind means V8 compiling the module under it: minutes.
START_TIMEOUT_S = 600


class CountedEnvoy:
    """Envoy under callgrind on `config_path`, counting nothing until `zero()`."""

    def __init__(self, workdir: Path, name: str, envoy: str, config_path: Path,
                 listen_port: int, admin_port: int):
        self.name = name
        self.url = f"http://127.0.0.1:{listen_port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.out = workdir / f"{name}.callgrind"
        self.proc = Proc(name, [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}",
            # V8 writes code and runs it: valgrind must notice code changing on the heap.
            "--smc-check=all-non-file",
            envoy, "-c", str(config_path), "--concurrency", "1",
            "--disable-hot-restart", "--log-level", "warn",
        ], workdir / f"{name}.log")
        self.dumps = 0

    def wait_ready(self) -> "CountedEnvoy":
        wait_until(lambda: requests.get(f"{self.admin_url}/ready", timeout=2).text.strip() == "LIVE",
                   f"{self.name} /ready under valgrind", timeout_s=START_TIMEOUT_S, proc=self.proc)
        return self

    def control(self, flag: str) -> None:
        subprocess.run(["callgrind_control", flag, str(self.proc.pid)], check=True,
                       capture_output=True, timeout=120)

    def counted(self, send) -> dict[str, int]:
        """Instructions by object while `send()` runs, after zeroing the counters."""
        self.control("-z")
        send()
        self.control("-d")
        self.dumps += 1
        dump = Path(f"{self.out}.{self.dumps}")
        wait_until(lambda: dump.is_file() and "totals:" in dump.read_text(errors="replace"),
                   f"{self.name} callgrind dump", timeout_s=120, proc=self.proc)
        return instructions_by_object(dump)

    def stop(self) -> None:
        self.proc.stop()


def instructions_by_object(dump: Path) -> dict[str, int]:
    """Self instructions (`Ir`) per object in a callgrind dump: envoy, jit, other."""
    objects: dict[str, str] = {}
    current = "other"
    totals: collections.Counter = collections.Counter()
    after_calls = False
    for line in dump.read_text(errors="replace").splitlines():
        named = re.match(r"(c?ob)=\((\d+)\)(?: (.*))?", line)
        if named:
            kind, ref, path = named.groups()
            if path:
                objects[ref] = path.strip()
            if kind == "ob":
                current = kind_of(objects.get(ref, ""))
            continue
        if line.startswith("calls="):
            # The next cost line is the call's inclusive cost, already counted in the
            # callee's own lines.
            after_calls = True
            continue
        if not line or line[0] not in "0123456789+-*":
            continue
        if after_calls:
            after_calls = False
            continue
        fields = line.split()
        if len(fields) >= 2:
            totals[current] += int(fields[1])
    return dict(totals)


def kind_of(path: str) -> str:
    if path.endswith("/envoy"):
        return "envoy"
    if path == "???" or path == "":
        return "jit"
    return "other"


def measure(workdir: Path, envoy: str, configs: dict[str, dict], ports: dict[str, tuple[int, int]],
            cases: list[tuple], token: str, render_params, name: str = "envoy-counted") -> dict:
    """`configs` by setup (A, C) with their (listen, admin) `ports`; `cases` as (label,
    method, path, params), or (label, method, path, params, tokens) for requests that
    take turns among several callers' tokens (`token` otherwise); `render_params`
    turning a case's params into the i-th request's. Returns instructions per request
    by case, setup and object. `name` names each setup's files in `workdir`."""
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind not found: `make bench` installs it")
    envoys = {}
    for kind, config in configs.items():
        path = workdir / f"{name}-{kind}.json"
        path.write_text(json.dumps(config, indent=2))
        envoys[kind] = CountedEnvoy(workdir, f"{name}-{kind}", envoy, path, *ports[kind])
    started = time.monotonic()
    for e in envoys.values():
        e.wait_ready()
    result: dict = {"counted": COUNTED, "start_s": round(time.monotonic() - started)}
    for label, method, path, params, *rest in cases:
        tokens = rest[0] if rest else [token]
        row = {}
        for kind, e in envoys.items():
            session = requests.Session()

            def request(i: int) -> requests.Response:
                p = render_params(params, i)
                return session.request(method, f"{e.url}{path}",
                                       params=p if method == "GET" else None,
                                       data=p if method == "POST" else None,
                                       headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"},
                                       timeout=60)

            def send(first: int, count: int) -> None:
                for i in range(first, first + count):
                    r = request(i)
                    if r.status_code != 200:
                        raise RuntimeError(f"{kind} {label}: {r.status_code} {r.text[:200]}")

            # The first request of each caller may wait on the identity provider, under
            # valgrind.
            for first in range(len(tokens)):
                wait_until(lambda: request(first).status_code == 200,
                           f"{kind} {label}: a first 200", timeout_s=180, proc=e.proc)
            send(0, WARM_UP)
            counts = e.counted(lambda: send(WARM_UP, COUNTED))
            row[kind] = {k: v / COUNTED for k, v in counts.items()}
        result[label] = row
    for e in envoys.values():
        e.stop()
    return result


def report(result: dict | None) -> list[str]:
    if not result:
        return []
    out = [f"Instructions per request inside Envoy (valgrind callgrind, one worker; {result['counted']}"
           f" requests counted per case after a warm-up; deterministic: no timing involved):",
           f"  {'case':12} {'A envoy':>9} {'A jit':>9} {'A total':>9}  {'C envoy':>9} {'C jit':>9}"
           f" {'C total':>9}  {'A - C':>8} {'A / C':>6}"]
    for label, row in result.items():
        if not isinstance(row, dict):
            continue
        a, c = row["A"], row["C"]
        ta, tc = sum(a.values()), sum(c.values())
        out.append(f"  {label:12} {a.get('envoy', 0):9,.0f} {a.get('jit', 0):9,.0f} {ta:9,.0f}"
                   f"  {c.get('envoy', 0):9,.0f} {c.get('jit', 0):9,.0f} {tc:9,.0f}"
                   f"  {ta - tc:8,.0f} {ta / tc:6.2f}")
    return out + [""]
