"""PUT a label, train with a tiny budget, and see the next infer use the new weights."""
import nibabel as nib
import numpy as np
import requests

from tests.e2e.helpers import infer, put_label


def test_put_label_then_train_then_infer_uses_new_weights(training_server, sample_sets):
    url = training_server.url
    truth_path = sample_sets["studies"] / "labels" / "subject_000.nii.gz"
    r = put_label(url, "subject_000", truth_path)
    assert r.status_code == 200, r.text
    stored = training_server.studies / "labels" / "final" / "subject_000.nii.gz"
    assert np.array_equal(np.asarray(nib.load(stored).dataobj), np.asarray(nib.load(truth_path).dataobj))

    _, before = infer(url, "unet3d", "subject_001")
    assert before["model_version"] == 1

    r = requests.post(f"{url}/train/unet3d", json={"max_iterations": 2, "batch_size": 1, "augment": False,
                                                         "publish": "always"},
                      timeout=60)
    assert r.status_code == 200, r.text
    status = training_server.wait_for_training()
    assert status["status"] == "DONE", status

    published = training_server.studies / ".medseg" / "models" / "unet3d" / "model.pt"
    assert published.exists()
    label, after = infer(url, "unet3d", "subject_001")
    assert after["model_version"] == 2
    assert label.shape == nib.load(training_server.studies / "subject_001.nii.gz").shape
    info = requests.get(f"{url}/info/", timeout=30).json()
    assert info["models"]["unet3d"]["weights"]["version"] == 2
    assert info["train_stats"]["unet3d"]["status"] == "DONE"
    # One labelled image: its Dice is no validation, and the stats say so.
    assert info["train_stats"]["unet3d"]["held_out_validation"] is False
    assert "not held out" in info["train_stats"]["unet3d"]["validation_note"]
    # ... and the validation gate, which would compare two scores on the training image, is skipped.
    r = requests.post(f"{url}/train/unet3d", json={"max_iterations": 1, "batch_size": 1, "augment": False},
                      timeout=60)
    assert r.status_code == 200, r.text
    assert training_server.wait_for_training()["status"] == "DONE"
    info = requests.get(f"{url}/info/", timeout=30).json()
    stats = info["train_stats"]["unet3d"]
    assert stats["published"] is True and "no held-out validation" in stats["val_comparison"]["reason"], stats
    assert info["models"]["unet3d"]["weights"]["version"] == 3
    plan = info["models"]["unet3d"]["plan"]
    assert (published.parent / "plan.json").exists()

    # The trained weights, their plan and the label survive a server restart.
    from tests.conftest import Server

    training_server.stop()
    restarted = Server(training_server.studies, {"models": "unet3d"})
    try:
        info = requests.get(f"{restarted.url}/info/", timeout=30).json()
        assert info["models"]["unet3d"]["weights"]["version"] == 3
        assert info["models"]["unet3d"]["plan"] == plan
        assert info["datastore"]["completed"] == 1
    finally:
        restarted.stop()


def test_train_without_labels_fails_cleanly_and_keeps_serving(tmp_path_factory, sample_sets):
    from tests.conftest import Server, make_studies

    srv = Server(make_studies(tmp_path_factory.mktemp("nolabels"), sample_sets), {"models": "unet3d"})
    try:
        requests.post(f"{srv.url}/train/unet3d", json={"max_iterations": 1}, timeout=60)
        status = srv.wait_for_training()
        assert status["status"] == "ERROR"
        assert any("no image has a final label" in line for line in status["details"])
        _, params = infer(srv.url, "unet3d", "subject_000")
        assert params["model_version"] == 1
    finally:
        srv.stop()

