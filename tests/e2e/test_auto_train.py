"""conf auto_train_after: the server retrains by itself after K new final labels."""
import requests

from tests.conftest import Server, make_studies
from tests.e2e.helpers import put_label


def test_training_starts_after_k_new_final_labels(tmp_path_factory, sample_sets):
    studies = make_studies(tmp_path_factory.mktemp("auto-train"), sample_sets)
    # No spaces: the monailabel launcher script splits arguments on them.
    options = '{"max_iterations":1,"batch_size":1,"augment":false,"publish":"always"}'
    srv = Server(studies, {"models": "unet3d", "auto_train_after": "2", "auto_train_options": options})
    try:
        def submit(name):
            r = put_label(srv.url, name, sample_sets["studies"] / "labels" / f"{name}.nii.gz")
            assert r.status_code == 200, r.text
            return r.json()

        assert "auto_train" not in submit("subject_000")  # 1 of 2
        assert "status" not in requests.get(f"{srv.url}/train/", timeout=10).json()  # nothing started
        answer = submit("subject_001")  # 2 of 2
        assert answer["auto_train"] == {"model": "unet3d", "started": True}
        status = srv.wait_for_training()
        assert status["status"] == "DONE", status
        info = requests.get(f"{srv.url}/info/", timeout=30).json()
        assert info["train_stats"]["unet3d"]["n_labels"] == 2
        assert info["models"]["unet3d"]["weights"]["version"] == 2
        # The count starts again: one more label does not retrain.
        assert "auto_train" not in submit("subject_002")
    finally:
        srv.stop()
