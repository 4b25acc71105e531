"""The Slicer module's client library (slicer_extension/MedSeg/MedSegLib) against a real server.

Everything the MedSeg module does over the network, without Slicer: info, next sample, image
file, infer, a corrected label submitted with its name -> index mapping, training followed to the
end by polling, infer with the new weights, the uncertainty map, upload; and the errors a
clinician can meet: server down, server silent (timeout), refusals with the server's message.
"""
from __future__ import annotations

import math
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.server_process import free_port
from tests.conftest import REPO, Server, make_studies
from tests.e2e.helpers import TINY_TRAINING

MODULE_DIR = REPO / "slicer_extension" / "MedSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from MedSegLib import (LabelSet, MedSegClient, ServerResponseError, ServerTimeoutError,  # noqa: E402
                       ServerUnreachableError, TrainingMonitor, compose_label_array, fetch_sample_image,
                       fetch_training_state, masks_from_label_array, submit_label)



@pytest.fixture(scope="module")
def slicer_server(tmp_path_factory, sample_sets):
    srv = Server(make_studies(tmp_path_factory.mktemp("slicer-client"), sample_sets), {"models": "unet3d"})
    yield srv
    srv.stop()


def load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_round_trip_next_sample_segment_correct_submit_train_segment_again(slicer_server, tmp_path):
    client = MedSegClient(slicer_server.url, client_id="annotator-1")
    info = client.server_info()
    assert info.name == "MedSeg"
    assert info.labels == LabelSet({"grey_matter": 1, "white_matter": 2})
    assert "unet3d" in info.segmentation_models() and "unet3d" in info.trainers
    assert {"first", "random", "epistemic", "tta"} <= set(info.strategies)
    assert info.default_strategy == info.strategies[0]  # what the module preselects
    assert (info.labeled, info.total) == (0, 4)
    assert info.models["unet3d"].weights_version == 1

    # Next sample: the server's path is visible here (same machine), so no download is needed ...
    sample = client.next_sample("first")
    image_id = sample["id"]
    path, source = fetch_sample_image(client, sample, str(tmp_path / "downloads"))
    assert source == "shared" and Path(path) == slicer_server.studies / f"{image_id}.nii.gz"
    # ... and the download, used when it is not, gives the same file.
    downloaded = client.download_image(image_id, str(tmp_path / "downloads"))
    assert Path(downloaded).name == f"{image_id}.nii.gz"
    assert Path(downloaded).read_bytes() == Path(path).read_bytes()

    # Segment: a label map on the image's grid with the app's indices.
    image = nib.load(path)
    result = client.infer("unet3d", image_id, dest_dir=str(tmp_path))
    assert result.model_version == 1 and result.output == "labels" and result.latency_s > 0
    predicted_img = nib.load(result.path)
    predicted = np.asarray(predicted_img.dataobj)
    assert predicted.shape == image.shape and np.allclose(predicted_img.affine, image.affine, atol=1e-4)
    assert set(np.unique(predicted).tolist()) == {0, 1, 2}

    # Correct, as the module does: segments by name -> label map with the app's indices.
    labels = info.labels_for("unet3d")
    masks = dict(masks_from_label_array(predicted, labels))
    half = predicted.shape[2] // 2
    masks["grey_matter"][:, :, :half] = 0  # the clinician erases grey matter in half of the slices
    corrected = compose_label_array([("white_matter", masks["white_matter"]), ("grey_matter", masks["grey_matter"])],
                                    labels)
    expected = predicted.copy()
    expected[:, :, :half][expected[:, :, :half] == 1] = 0
    assert np.array_equal(corrected, expected)
    label_path = tmp_path / f"{image_id}_final.nii.gz"
    nib.save(nib.Nifti1Image(corrected, image.affine), str(label_path))

    submitted = submit_label(client, image_id, str(label_path), labels)
    assert submitted.image_id == image_id and submitted.version == 1
    stored = slicer_server.studies / "labels" / "final" / f"{image_id}.nii.gz"
    assert np.array_equal(load(stored), corrected)
    versions = client.label_versions(image_id)
    assert [v["version"] for v in versions] == [1]
    assert versions[0]["client_id"] == "annotator-1"
    assert versions[0]["params"]["label_info"] == [{"name": "grey_matter", "idx": 1},
                                                   {"name": "white_matter", "idx": 2}]
    assert client.server_info().labeled == 1

    # Train, following the progress by polling as the module's timer does.
    monitor = TrainingMonitor("unet3d")
    monitor.started(client.train_start("unet3d", TINY_TRAINING))
    seen = []
    deadline = time.time() + 600
    while time.time() < deadline:
        progress = monitor.update(*fetch_training_state(client, "unet3d"))
        seen.append(progress)
        if progress.finished:
            break
        time.sleep(1)
    assert progress.status == "DONE", progress.message
    assert progress.published is True and progress.version == 2 and progress.percent == 100
    assert set(progress.val_dice_per_label) == {"grey_matter", "white_matter"}
    assert "version 2 published" in progress.message
    running = [p for p in seen if p.running]
    assert running, "the run was never seen running"
    assert any(p.iteration for p in running), [p.message for p in seen]

    # The next Segment uses the new weights.
    again = client.infer("unet3d", image_id, dest_dir=str(tmp_path / "again"))
    assert again.model_version == 2
    assert load(again.path).shape == image.shape
    assert client.server_info().models["unet3d"].weights_version == 2

    # The uncertainty overlay: voxel entropy on the image grid, 0 .. ln(3) for 2 labels + background.
    uncertainty = client.infer("unet3d", image_id, params={"uncertainty": True}, dest_dir=str(tmp_path / "unc"))
    assert uncertainty.output == "uncertainty" and uncertainty.path != again.path
    entropy = load(uncertainty.path)
    assert entropy.shape == image.shape and entropy.dtype.kind == "f"
    assert entropy.min() >= 0 and 0 < entropy.max() <= math.log(3) + 1e-3
    assert labels.max_entropy_nats() == pytest.approx(math.log(3))


def test_upload_adds_a_volume_that_was_not_from_the_server(slicer_server, sample_sets, tmp_path):
    client = MedSegClient(slicer_server.url)
    before = client.server_info().total
    source = sample_sets["heldout"] / "images" / "heldout_000.nii.gz"
    volume_file = tmp_path / "MR Head (local).nii.gz"  # a name as Slicer would save it
    volume_file.write_bytes(source.read_bytes())
    image_id = client.upload_image(str(volume_file))
    assert image_id == "MR_Head_local"
    assert client.server_info().total == before + 1
    assert client.image_info(image_id)["name"].startswith(image_id)
    stored = next(slicer_server.studies.glob(f"{image_id}.nii*"))
    assert np.array_equal(load(stored), load(source))


def test_refusals_carry_the_servers_message_and_store_nothing(slicer_server, tmp_path):
    client = MedSegClient(slicer_server.url)
    image_id = "subject_002"
    image = nib.load(slicer_server.studies / f"{image_id}.nii.gz")
    labels = client.server_info().labels

    wrong_shape = tmp_path / "wrong_shape.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), image.affine), str(wrong_shape))
    with pytest.raises(ServerResponseError) as refused:
        submit_label(client, image_id, str(wrong_shape), labels)
    assert refused.value.status == 422
    assert "differs from the image size" in str(refused.value) and "refused to save the label" in str(refused.value)

    right_shape = tmp_path / "right_shape.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(image.shape, np.uint8), image.affine), str(right_shape))
    with pytest.raises(ServerResponseError, match="unknown label name 'csf'") as unknown:
        submit_label(client, image_id, str(right_shape), LabelSet({"csf": 1}))
    assert 400 <= unknown.value.status < 500

    assert client.label_versions(image_id) == []
    assert not (slicer_server.studies / "labels" / "final" / f"{image_id}.nii.gz").exists()

    with pytest.raises(ServerResponseError, match="'no_such_image' is not in the datastore") as missing:
        client.infer("unet3d", "no_such_image")
    assert missing.value.status == 404


def test_versions_are_listed_and_one_is_restored(slicer_server, tmp_path):
    """The module's Stored versions list and Restore: two submits, then the first one back."""
    from MedSegLib import describe_version

    client = MedSegClient(slicer_server.url, client_id="annotator-2")
    image_id = "subject_001"
    image = nib.load(slicer_server.studies / f"{image_id}.nii.gz")
    labels = client.server_info().labels
    first, second = np.zeros(image.shape, np.uint8), np.zeros(image.shape, np.uint8)
    first[10:20, 10:20, 10:20] = 1
    second[30:40, 30:40, 30:40] = 2
    for n, array in enumerate((first, second)):
        path = tmp_path / f"v{n}.nii.gz"
        nib.save(nib.Nifti1Image(array, image.affine), str(path))
        submit_label(client, image_id, str(path), labels, effort={"interactions": n + 3, "seconds": 10.0})
    versions = client.label_versions(image_id)
    assert [v["version"] for v in versions][-2:] == [versions[-2]["version"], versions[-2]["version"] + 1]
    line = describe_version(versions[-1])
    assert line.startswith(f"v{versions[-1]['version']}, ") and "by annotator-2" in line and "4 interactions" in line

    restored = client.restore_label_version(image_id, versions[-2]["version"])
    assert restored["restored_from"] == versions[-2]["version"] and restored["version"] == versions[-1]["version"] + 1
    assert np.array_equal(load(client.download_label(image_id, str(tmp_path / "final"))), first)
    assert "restored from" in describe_version(client.label_versions(image_id)[-1])
    with pytest.raises(ServerResponseError) as missing:
        client.restore_label_version(image_id, 999)
    assert missing.value.status == 404


def test_a_login_where_authentication_is_off_says_so(slicer_server):
    from MedSegLib import MedSegClientError, connect

    client = MedSegClient(slicer_server.url)
    auth_enabled, info = connect(client)
    assert auth_enabled is False and info.name == "MedSeg"
    with pytest.raises(MedSegClientError, match="authentication is off"):
        client.login("ana", "secret")
    assert client.token is None


def test_server_down_says_so():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = MedSegClient(url)
    with pytest.raises(ServerUnreachableError) as down:
        client.server_info()
    assert url in str(down.value) and "connection refused" in str(down.value)
    assert "running" in str(down.value)


@contextmanager
def silent_server():
    """A real socket that accepts connections and never answers (a hung or overloaded server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_silent_server_times_out_with_a_message():
    with silent_server() as (url, accepted):
        client = MedSegClient(url, timeout_s=1.0)
        start = time.time()
        with pytest.raises(ServerTimeoutError) as slow:
            client.server_info()
        assert time.time() - start < 10
        assert accepted, "the client should have connected"
        assert "did not answer within 1 s" in str(slow.value) and url in str(slow.value)
        # The long infer timeout is per call: a short one still applies to it when given.
        with pytest.raises(ServerTimeoutError):
            client.infer("unet3d", "subject_000", timeout_s=1.0)
