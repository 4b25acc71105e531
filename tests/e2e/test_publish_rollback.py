"""New weights are served only if they are not worse; old weights can be served again; a killed
training run leaves the served model alone."""
import time

import pytest
import requests

from tests.conftest import Server, make_studies
from tests.e2e.helpers import infer, put_label


@pytest.fixture(scope="module")
def gated_server(tmp_path_factory, sample_sets):
    studies = make_studies(tmp_path_factory.mktemp("publish"), sample_sets)
    srv = Server(studies, {"models": "unet3d"})
    for name in ("subject_000", "subject_001"):
        r = put_label(srv.url, name, sample_sets["studies"] / "labels" / f"{name}.nii.gz")
        assert r.status_code == 200, r.text
    yield srv
    srv.stop()


def weights(url) -> dict:
    return requests.get(f"{url}/info/", timeout=30).json()["models"]["unet3d"]["weights"]


def train(srv, **options) -> dict:
    r = requests.post(f"{srv.url}/train/unet3d", json={"max_iterations": 1, "batch_size": 1, "augment": False,
                                                       "model_selection": False, **options}, timeout=60)
    assert r.status_code == 200, r.text
    status = srv.wait_for_training()
    assert status["status"] == "DONE", status
    return requests.get(f"{srv.url}/info/", timeout=30).json()["train_stats"]["unet3d"]


def test_a_run_that_makes_validation_worse_does_not_replace_the_weights(gated_server):
    # One step at a learning rate 100x nnU-Net's wrecks the shipped weights.
    stats = train(gated_server, learning_rate=1.0)
    assert stats["published"] is False, stats
    comparison = stats["val_comparison"]
    assert comparison["current_version"] == 1
    mean = {k: sum(v.values()) / len(v) for k, v in comparison["dice_per_label"].items()}
    assert mean["candidate"] < mean["current"]
    assert weights(gated_server.url)["version"] == 1
    _, params = infer(gated_server.url, "unet3d", "subject_002")
    assert params["model_version"] == 1
    runtime = gated_server.studies / ".medseg" / "models" / "unet3d"
    assert (runtime / f"model.rejected.v{stats['version']}.pt").exists()
    assert not (runtime / "model.pt").exists()


def test_publish_always_then_roll_back_to_the_shipped_weights(gated_server):
    url = gated_server.url
    stats = train(gated_server, publish="always")
    assert stats["published"] is True
    new_version = stats["version"]
    assert weights(url)["version"] == new_version
    listing = requests.get(f"{url}/medseg/models/unet3d/versions", timeout=60).json()["versions"]
    assert [v["version"] for v in listing] == [1, new_version]
    assert [v["current"] for v in listing] == [False, True]

    r = requests.post(f"{url}/medseg/models/unet3d/versions/1/restore", timeout=60)
    assert r.status_code == 200, r.text
    assert weights(url)["version"] == 1
    _, params = infer(url, "unet3d", "subject_002")
    assert params["model_version"] == 1  # served again without a restart
    # The replaced weights stay available: rolling forward works too.
    r = requests.post(f"{url}/medseg/models/unet3d/versions/{new_version}/restore", timeout=60)
    assert r.status_code == 200 and weights(url)["version"] == new_version

    assert requests.post(f"{url}/medseg/models/unet3d/versions/99/restore", timeout=60).status_code == 404
    assert requests.get(f"{url}/medseg/models/nope/versions", timeout=60).status_code == 404
    assert weights(url)["version"] == new_version


def test_a_killed_training_run_leaves_the_served_model_working(gated_server):
    url = gated_server.url
    served = weights(url)["version"]
    r = requests.post(f"{url}/train/unet3d", json={"max_iterations": 5000, "batch_size": 1, "log_every": 1},
                      timeout=60)
    assert r.status_code == 200, r.text
    deadline = time.time() + 300
    while time.time() < deadline:
        stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["unet3d"]
        if stats.get("status") == "RUNNING" and stats.get("iteration", 0) >= 1:
            break
        time.sleep(1)
    else:
        pytest.fail(f"training did not start: {stats}")
    assert requests.delete(f"{url}/train/", timeout=60).status_code == 200
    deadline = time.time() + 60
    while time.time() < deadline:
        stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["unet3d"]
        if stats["status"] != "RUNNING":
            break
        time.sleep(1)
    assert stats["status"] == "STOPPED", stats
    assert weights(url)["version"] == served
    label, params = infer(url, "unet3d", "subject_002")
    assert params["model_version"] == served and label.shape
