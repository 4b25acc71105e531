"""Shared fixtures: sample data made by the real generator, and a real MONAI Label server."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from medseg.server_process import LabelServer

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "apps" / "medseg"
# Generated data is cached across runs here (never in git).
CACHE = Path(os.environ.get("MEDSEG_TEST_CACHE", REPO / "work" / "test-cache"))


class Server(LabelServer):
    """The real server over a studies folder (or a DICOMweb URL), its log beside the folder."""

    def __init__(self, studies: Path | str, conf: dict[str, str] | None = None, log_dir: Path | None = None,
                 **kwargs):
        remote = str(studies).startswith(("http://", "https://"))
        self.studies = str(studies) if remote else Path(studies)  # a Path would fold the URL's "//"
        # Uncertainty scoring runs (MC dropout, TTA) that the server would start by itself cost
        # minutes of CPU per server; tests that need them start them (tests/e2e/test_strategies.py).
        conf = {"al_auto_scoring": "false", **(conf or {})}
        super().__init__(APP_DIR, self.studies, conf, log_dir or self.studies.parent, **kwargs)

    def wait_for_training(self, timeout_s: float = 900) -> dict:
        return self.wait_for_task("train", timeout_s)


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
