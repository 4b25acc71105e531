"""Uncertainty strategies, scoring and the uncertainty infer output through a real server (unet3d)."""
import json
import math
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.conftest import Server, make_studies
from tests.e2e.helpers import infer, put_label

LABELED = "subject_000"
UNLABELED = {"heldout_000", "subject_001", "subject_002"}


@pytest.fixture(scope="module")
def al_server(tmp_path_factory, sample_sets):
    studies = make_studies(tmp_path_factory.mktemp("al-server"), sample_sets)
    # No automatic scoring runs: the test starts the one it waits for.
    srv = Server(studies, {"models": "unet3d", "al_auto_scoring": "false"})
    r = put_label(srv.url, LABELED, sample_sets["studies"] / "labels" / f"{LABELED}.nii.gz")
    assert r.status_code == 200, r.text
    yield srv
    srv.stop()


def next_sample(url, strategy, client_id):
    t0 = time.perf_counter()
    r = requests.post(f"{url}/activelearning/{strategy}", json={"client_id": client_id}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json(), time.perf_counter() - t0


def cached_scores(server) -> dict:
    path = server.studies / ".medseg" / "uncertainty" / "unet3d_v1_epistemic.json"
    return json.loads(path.read_text())["scores"]


def test_info_lists_uncertainty_strategies_and_scoring_methods(al_server):
    info = requests.get(f"{al_server.url}/info/", timeout=30).json()
    assert {"epistemic", "tta", "random", "first"} <= set(info["strategies"])
    assert {"epistemic", "tta", "dice"} <= set(info["scoring"])
    # Exactly one is the default, listed first (clients that keep the order preselect it), with its reason.
    defaults = [name for name, s in info["strategies"].items() if s["default"]]
    assert defaults == [next(iter(info["strategies"]))]
    assert "bench/results/loop_" in info["strategies"][defaults[0]]["default_why"]


def test_strategy_answers_before_any_scoring_without_computing(al_server):
    answer, seconds = next_sample(al_server.url, "tta", "early")
    assert answer["id"] in UNLABELED
    assert answer["tta"]["scored"] is False and answer["tta"]["model"] == "unet3d"
    assert seconds < 2.0  # from the (empty) cache, no inference inline
    # Give the image back for the next tests: a new server state is not needed for that.
    reservations = al_server.studies / ".medseg" / "activelearning" / "reservations.json"
    reservations.unlink()


def test_epistemic_scoring_scores_every_unlabeled_image(al_server):
    r = requests.post(f"{al_server.url}/scoring/epistemic", json={"passes": 2}, timeout=30)
    assert r.status_code == 200, r.text
    status = al_server.wait_for_task("scoring")
    assert status["status"] == "DONE", status
    scores = cached_scores(al_server)
    assert set(scores) == UNLABELED  # the image with a final label is not scored
    for entry in scores.values():
        assert entry["passes"] == 2 and 0 <= entry["score"] <= math.log(3)


def test_two_clients_at_once_get_the_two_most_uncertain_images(al_server):
    scores = cached_scores(al_server)
    ranked = sorted(scores, key=lambda i: -scores[i]["score"])
    answers = {}
    barrier = threading.Barrier(2)

    def ask(client):
        barrier.wait()
        answers[client] = next_sample(al_server.url, "epistemic", client)

    threads = [threading.Thread(target=ask, args=(c,)) for c in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {answers[c][0]["id"] for c in answers}
    assert len(ids) == 2 and ids == set(ranked[:2])
    for answer, seconds in answers.values():
        assert answer["epistemic"]["scored"] is True and answer["epistemic"]["model_version"] == 1
        assert seconds < 2.0


def test_reserved_images_are_not_served_to_others_and_labeled_never(al_server):
    scores = cached_scores(al_server)
    third, _ = next_sample(al_server.url, "epistemic", "carol")
    assert third["id"] == min(scores, key=lambda i: scores[i]["score"])
    # Every unlabeled image is reserved now; the labeled one is still not offered.
    for strategy in ("epistemic", "tta"):
        answer, _ = next_sample(al_server.url, strategy, "dave")
        assert answer == {}
    again, _ = next_sample(al_server.url, "tta", "alice")
    assert again["id"] in UNLABELED and again["id"] != third["id"]


def test_infer_returns_non_negative_uncertainty_map_on_the_image_grid(al_server, sample_sets):
    source = nib.load(sample_sets["studies"] / "images" / "subject_001.nii.gz")
    entropy, params = infer(al_server.url, "unet3d", "subject_001", uncertainty=True)
    data = np.asarray(entropy.dataobj)
    assert params["output"] == "uncertainty"
    assert data.shape == source.shape and data.dtype == np.float32
    assert np.allclose(entropy.affine, source.affine, atol=1e-4)
    assert data.min() >= 0 and data.max() <= math.log(3) + 1e-4
    assert data.max() > 0.1  # tissue borders are uncertain
    # The background is not (the median over the whole volume mixes in the tissue, half of
    # whose voxels lie near a border on a 1.2-1.8 mm grid).
    background = np.asarray(source.dataobj) == 0
    assert background.mean() > 0.3 and np.median(data[background]) < 0.05


def test_uncertainty_map_is_never_stored_as_a_label(al_server):
    r = requests.post(f"{al_server.url}/infer/unet3d", params={"image": "subject_002"},
                      data={"params": json.dumps({"uncertainty": True, "save_label": True})}, timeout=120)
    assert r.status_code == 422, r.text
    info = requests.get(f"{al_server.url}/datastore/image/info", params={"image": "subject_002"}, timeout=30)
    assert "original" not in json.dumps(requests.get(f"{al_server.url}/datastore/", params={"output": "all"},
                                                     timeout=30).json()["objects"]["subject_002"]["labels"])
    assert info.status_code == 200
