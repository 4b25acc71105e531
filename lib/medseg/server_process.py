"""Real services as child processes, for tests, benchmarks and scripts.

``LabelServer`` runs the very command users run (``monailabel start_server --app ...``),
so tests and benchmarks exercise the real server, not a stand-in. ``ChildProcess`` is
the part every service shares (Orthanc in the tests too): its own process group, so
stopping it also ends the task processes it started, and its output in a log file that
error messages quote.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildProcess:
    """A command in its own process group with its output in ``log_path``."""

    what = "process"

    def __init__(self, cmd: list[str], log_path: Path, cwd: Path | None = None, env: dict | None = None):
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                     start_new_session=True)

    def wait_ready(self, is_ready: Callable[[], bool], timeout_s: float, poll_s: float = 0.5) -> None:
        """Return once ``is_ready()`` is true; stop the process and raise if it exits or times out."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.what} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if is_ready():
                    return
            except requests.RequestException:
                pass  # not listening yet
            time.sleep(poll_s)
        self.stop()
        raise RuntimeError(f"{self.what} not ready after {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 20) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self.log.closed:
            self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class LabelServer(ChildProcess):
    """``monailabel start_server`` for ``app_dir`` over ``studies`` (a folder or a DICOMweb URL) on a free port."""

    what = "server"

    def __init__(self, app_dir: Path, studies: str | Path, conf: dict[str, str], log_dir: Path,
                 timeout_s: float = 180, log_name: str | None = None, env: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = ["monailabel", "start_server", "--app", str(app_dir), "--studies", str(studies),
               "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in conf.items():
            cmd += ["--conf", key, str(value)]
        # The monailabel launcher of this interpreter's environment, whatever PATH says.
        env = dict(os.environ, **(env or {}),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        super().__init__(cmd, Path(log_dir) / (log_name or f"server-{self.port}.log"), env=env)
        # headers: what /info/ needs to answer (a token, when the server has authentication on).
        self.wait_ready(lambda: requests.get(f"{self.url}/info/", headers=headers, timeout=5).status_code == 200,
                        timeout_s, poll_s=1)

    def wait_for_task(self, kind: str, timeout_s: float = 900) -> dict:
        """The last background task of a kind (``train``, ``scoring``) once it has ended."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            status = requests.get(f"{self.url}/{kind}/", timeout=30).json()
            if status.get("status") in ("DONE", "ERROR"):
                return status
            time.sleep(2)
        raise TimeoutError(f"{kind} did not finish within {timeout_s} s")
