"""Start and reliably stop the real processes of the end-to-end tests.

Every process runs in its own process group with a parent-death signal, is recorded in
a module-level registry, and is killed by the fixture that started it, by `atexit`, and
by the kernel if pytest itself dies: no test run may leave an Envoy or a
VictoriaMetrics behind.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

_PR_SET_PDEATHSIG = 1
_live: list["Proc"] = []


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if pytest is killed outright (SIGKILL,
    # CI timeout), the kernel sends SIGKILL to the child, so no atexit is needed then.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Proc:
    """One started process, its log file, and how to stop it."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        _live.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it lingers."""
        if self in _live:
            _live.remove(self)
        if self.running():
            for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # The group may hold children that outlived the leader.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid}>"


def stop_all() -> None:
    for proc in list(_live):
        proc.stop(grace_s=2.0)


atexit.register(stop_all)


def _terminate(signum, _frame):
    # Stop our processes at once, then interrupt pytest the way Ctrl-C does (pytest would
    # take a SystemExit raised inside a test for a failure and carry on); a second
    # SIGTERM kills outright.
    stop_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _terminate)


def wait_until(
    ready: Callable[[], bool],
    what: str,
    timeout_s: float = 30.0,
    proc: Proc | None = None,
    interval_s: float = 0.1,
) -> None:
    """Poll `ready` until it holds; fail early, with the log, if `proc` has died."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not ready yet (connection refused, ...)
            pass
        if proc is not None and not proc.running():
            raise RuntimeError(
                f"{proc.name} exited ({proc.popen.returncode}) before {what}:\n{proc.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = f":\n{proc.log_tail()}" if proc is not None else ""
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}{tail}")
        time.sleep(interval_s)
