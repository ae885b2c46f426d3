"""`make demo`, run the way a user runs it, for a few seconds: its output must show isolation.

The demo starts real VictoriaMetrics, the OIDC provider and Envoy with the built filter;
this test only reads what it prints, and checks that it stopped every process it started
(its ports are free again afterwards).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from procs import free_port  # noqa: E402


def nothing_listens_on(port: int) -> bool:
    # A connect, not a bind: closed connections linger in TIME_WAIT and block a bind
    # for a while, but only a live process accepts a connection.
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_make_demo_shows_each_user_only_their_own_tenant():
    ports = {name: free_port() for name in
             ("DEMO_ENVOY_PORT", "DEMO_ADMIN_PORT", "DEMO_VM_PORT", "DEMO_OIDC_PORT")}
    env = {**os.environ, "DEMO_SECONDS": "2", **{k: str(v) for k, v in ports.items()}}
    run = subprocess.run(["make", "--no-print-directory", "demo"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    out = run.stdout
    assert run.returncode == 0, f"make demo failed ({run.returncode}):\n{out}\n{run.stderr}"

    assert "logged in through the authorization-code flow: alice, bob" in out, out
    assert "ISOLATION OK" in out and "LEAK" not in out, out
    # Every data row names alice's tenant in her column and bob's in his, and only those.
    rows = [line for line in out.splitlines() if "results, client_id" in line]
    assert len(rows) >= 4, out
    for row in rows:
        alice, bob = [cell.strip() for cell in row.split("|")[1:3]]
        assert re.search(r"^[1-9]\d* results, client_id \['1999'\]$", alice), row
        assert re.search(r"^[1-9]\d* results, client_id \['2000'\]$", bob), row
    # Ready-to-paste curl commands carry each user's token.
    assert out.count("curl -s -H 'Authorization: Bearer ") == 2, out
    assert "stopped every process the demo started" in out, out
    for name, port in ports.items():
        assert nothing_listens_on(port), f"{name} {port}: still served after the demo stopped"
