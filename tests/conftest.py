"""Shared fixtures: sample data made by the real generator, and a real MONAI Label server."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "apps" / "medseg"
# Generated data is cached across runs here (never in git).
CACHE = Path(os.environ.get("MEDSEG_TEST_CACHE", REPO / "work" / "test-cache"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, studies: Path, conf: dict[str, str] | None = None):
        self.studies = Path(studies)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.studies.parent / f"server-{self.port}.log"
        cmd = ["monailabel", "start_server", "--app", str(APP_DIR), "--studies", str(self.studies),
               "--host", "127.0.0.1", "--port", str(self.port)]
        # Uncertainty scoring runs (MC dropout, TTA) that the server would start by itself cost
        # minutes of CPU per server; tests that need them start them (tests/e2e/test_strategies.py).
        conf = {"al_auto_scoring": "false", **(conf or {})}
        for k, v in conf.items():
            cmd += ["--conf", k, v]
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait_ready(timeout_s=180)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{self.url}/info/", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout_s}s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def wait_for_training(self, timeout_s: float = 900) -> dict:
        return self.wait_for_task("train", timeout_s)

    def wait_for_task(self, kind: str, timeout_s: float = 900) -> dict:
        """The last background task of a kind (``train``, ``scoring``) once it ended."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            status = requests.get(f"{self.url}/{kind}/", timeout=10).json()
            if status.get("status") in ("DONE", "ERROR"):
                return status
            time.sleep(2)
        raise TimeoutError(f"{kind} did not finish")


@pytest.fixture(scope="session")
def sample_sets():
    """Pseudo-subjects with ground truth: 'studies' (seed 3000) and 'heldout' (the model card's test seed)."""
    from medseg.data.pseudo_subjects import SEED_HELDOUT, generate

    generate(CACHE / "studies", 3, seed=3000)
    generate(CACHE / "heldout", 1, seed=SEED_HELDOUT, prefix="heldout")
    return {"studies": CACHE / "studies", "heldout": CACHE / "heldout"}


def make_studies(root: Path, sample_sets: dict) -> Path:
    studies = root / "studies"
    studies.mkdir(parents=True)
    for folder in ("studies", "heldout"):
        for image in (sample_sets[folder] / "images").glob("*.nii.gz"):
            shutil.copyfile(image, studies / image.name)
    return studies


@pytest.fixture(scope="session")
def server(tmp_path_factory, sample_sets):
    """A real server over a temporary copy of the sample data, shared by read-mostly tests."""
    studies = make_studies(tmp_path_factory.mktemp("server"), sample_sets)
    srv = Server(studies, {"models": "unet3d"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def training_server(tmp_path_factory, sample_sets):
    """A separate server for tests that change the model, so they cannot disturb the others."""
    studies = make_studies(tmp_path_factory.mktemp("train-server"), sample_sets)
    srv = Server(studies, {"models": "unet3d"})
    yield srv
    srv.stop()
