"""`vlm serve` in a child process: what the tests and `vlm bench serve` talk to over real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Start with `start()` (returns once /readyz answers 200), stop with `stop()` or `kill()` (SIGKILL)."""

    def __init__(self, checkpoint: str | Path, index: str | Path, *extra_args: str, port: int | None = None,
                 log_path: str | Path | None = None, preexec_fn: Callable[[], None] | None = None):
        """`preexec_fn` runs in the child before `vlm serve` starts (the fault tests set a file-size limit or
        drop root there)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "vlm.cli", "serve", "--checkpoint", str(checkpoint), "--index", str(index),
                     "--port", str(self.port), "--log-level", "warning", *extra_args]
        self.log_path = Path(log_path) if log_path else None
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120, until: str = "/readyz") -> ServerProcess:
        """Start and wait until `until` answers 200 (`/healthz`: the process is up, loaded or not)."""
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 (owned by the child)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=self.preexec_fn)  # noqa: PLW1509 (set by tests, no threads)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vlm serve exited with {self.process.returncode}; log: {self.log_path}")
            try:
                if httpx.get(f"{self.url}{until}", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"vlm serve not ready after {timeout} s; log: {self.log_path}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash or an OOM kill."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 15) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
