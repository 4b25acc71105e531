"""Data-parallel training end to end: MONAI Label's multi_gpu option through REST, and torchrun.

On this CPU-only machine both run two processes with the gloo backend; on a GPU
machine the same code runs one process per GPU with NCCL.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import requests

from tests.conftest import REPO, Server, make_studies


@pytest.fixture(scope="module")
def labeled_studies(tmp_path_factory, sample_sets):
    studies = make_studies(tmp_path_factory.mktemp("ddp"), sample_sets)
    final = studies / "labels" / "final"
    final.mkdir(parents=True)
    for name in ("subject_000.nii.gz", "subject_001.nii.gz"):
        shutil.copyfile(sample_sets["studies"] / "labels" / name, final / name)
    return studies


def test_multi_gpu_option_trains_with_two_processes_through_rest(labeled_studies):
    srv = Server(labeled_studies, {"models": "unet3d"})
    try:
        r = requests.post(f"{srv.url}/train/unet3d", json={"max_iterations": 2, "batch_size": 2, "augment": False,
                                                            "multi_gpu": True, "world_size": 2,
                                                            "publish": "always"}, timeout=60)
        assert r.status_code == 200, r.text
        status = srv.wait_for_training()
        assert status["status"] == "DONE", status
        info = requests.get(f"{srv.url}/info/", timeout=30).json()
        assert info["train_stats"]["unet3d"]["processes"] == 2
        assert info["models"]["unet3d"]["weights"]["version"] == 2
    finally:
        srv.stop()


def test_torchrun_trains_and_publishes_from_rank_zero(labeled_studies, tmp_path):
    work_dir = tmp_path / "work"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medseg.train_cli", "--studies", str(labeled_studies), "--model", "unet3d",
           "--conf", "work_dir", str(work_dir),
           "--option", "max_iterations=2", "--option", "batch_size=2", "--option", "augment=false", "--option", "publish=always"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"model"')]
    assert len(results) == 1 and results[0]["version"] == 2  # one publisher: rank 0
    progress = json.loads((work_dir / "unet3d" / "train_progress.json").read_text())
    assert progress["status"] == "DONE" and progress["processes"] == 2
    assert (work_dir / "models" / "unet3d" / "model.pt").exists()
