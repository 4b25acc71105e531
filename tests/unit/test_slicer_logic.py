"""MedSegLib's logic behind the Slicer widget that needs no server: geometry of clicks and boxes,
guided-edit bookkeeping, background jobs, one-pass label import/export tables, streamed uploads.

Slicer cannot run here, so what the widget would get wrong on first use is tested as plain Python:
the matrices Slicer hands over are built here exactly as Slicer composes them.
"""
from __future__ import annotations

import gzip
import io
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_extension" / "MedSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from MedSegLib import (AnswerTarget, BackgroundJobs, GuidedEdit, LabelMappingError, LabelSet,  # noqa: E402
                       RequestCancelledError, answer_region_kji, check_label_values, check_segment_names,
                       clamp_ijk, color_table_rows, multipart_stream, number_of_colors, parse_multipart, ras_to_ijk,
                       roi_box_ijk, roi_corners_world, roi_is_placed, segment_ids_by_value, world_to_ijk_matrix)
from MedSegLib.client import _save_stream  # noqa: E402


# ---------------------------------------------------------------- geometry
def rotation_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return m


def ijk_to_ras(spacing, origin, direction=np.eye(3)) -> np.ndarray:
    """A volume's IJK-to-RAS as Slicer builds it: direction columns scaled by spacing, then origin."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction) @ np.diag(spacing)
    m[:3, 3] = origin
    return m


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]),  # RAS, LPS
                                       np.diag([1.0, -1.0, -1.0]),  # flipped
                                       rotation_z(30)[:3, :3] @ np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0.0]])],  # oblique
                         ids=["RAS", "LPS", "flipped", "oblique"])
def test_a_click_maps_to_the_voxel_it_was_placed_on(direction):
    volume = ijk_to_ras([0.8, 0.8, 2.5], [20.0, -16.0, 7.0], direction)
    rng = np.random.default_rng(1)
    for ijk in rng.integers(0, 40, size=(20, 3)):
        ras = (volume @ np.array([*(ijk + rng.uniform(-0.4, 0.4, 3)), 1.0]))[:3]  # anywhere in the voxel
        assert ras_to_ijk(np.linalg.inv(volume), ras) == list(ijk)


def test_a_click_under_a_parent_transform_goes_through_its_inverse():
    volume = ijk_to_ras([1.0, 1.0, 2.0], [0.0, 0.0, 0.0], np.diag([-1.0, -1.0, 1.0]))
    parent = rotation_z(20)
    parent[:3, 3] = [5.0, -3.0, 12.0]  # the volume is shown moved and turned
    ijk = [12, 7, 9]
    world = (parent @ volume @ np.array([*ijk, 1.0]))[:3]
    assert ras_to_ijk(world_to_ijk_matrix(np.linalg.inv(volume), np.linalg.inv(parent)), world) == ijk
    assert ras_to_ijk(np.linalg.inv(volume), world) != ijk  # what ignoring the transform gave


def test_clicks_off_the_image_are_not_sent():
    assert clamp_ijk([0, 5, 39], (10, 10, 40)) == [0, 5, 39]
    assert clamp_ijk([-1, 5, 3], (10, 10, 40)) is None and clamp_ijk([3, 10, 3], (10, 10, 40)) is None


def test_a_box_is_sent_only_once_slicer_has_placed_it():
    assert not roi_is_placed(1, 1, (0.0, 0.0, 0.0))  # after the first corner
    assert not roi_is_placed(2, 1, (30.0, 20.0, 20.0))  # the preview point follows the mouse
    assert roi_is_placed(1, 1, (30.0, 20.0, 20.0))  # the two corners became one centre point


def test_box_corners_follow_rotation_and_parent_transforms():
    volume = ijk_to_ras([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    axis_aligned = np.eye(4)
    axis_aligned[:3, 3] = [20.0, 20.0, 10.0]
    box = roi_box_ijk(axis_aligned, (10.0, 6.0, 4.0), np.linalg.inv(volume), (64, 64, 32))
    assert box == ([15, 17, 8], [25, 23, 12])
    # Turned 45 degrees: the voxel box is the bounds of the 8 turned corners, wider than centre +/- size/2.
    turned = rotation_z(45)
    turned[:3, 3] = [20.0, 20.0, 10.0]
    corners = roi_corners_world(turned, (10.0, 6.0, 4.0))
    half_diagonal_x = np.abs(corners[:, 0] - 20).max()
    assert half_diagonal_x == pytest.approx((10 + 6) / 2 / np.sqrt(2))
    low, high = roi_box_ijk(turned, (10.0, 6.0, 4.0), np.linalg.inv(volume), (64, 64, 32))
    assert low[0] == int(np.floor(20 - half_diagonal_x + 0.5)) and high[0] == int(np.ceil(20 + half_diagonal_x - 0.5))
    assert high[0] - low[0] > 10  # centre +/- size/2 along world axes gave 10
    # A parent transform moving the ROI by 5 mm in R moves the box 5 voxels.
    parent = np.eye(4)
    parent[0, 3] = 5.0
    moved = roi_box_ijk(parent @ axis_aligned, (10.0, 6.0, 4.0), np.linalg.inv(volume), (64, 64, 32))
    assert moved == ([20, 17, 8], [30, 23, 12])


def test_box_on_an_lps_anisotropic_volume_is_clamped_to_the_image():
    volume = ijk_to_ras([0.8, 0.8, 5.0], [40.0, 30.0, -20.0], np.diag([-1.0, -1.0, 1.0]))
    centre = np.eye(4)
    centre[:3, 3] = (volume @ np.array([2.0, 30.0, 3.0, 1.0]))[:3]
    low, high = roi_box_ijk(centre, (20.0, 8.0, 12.0), np.linalg.inv(volume), (50, 60, 8))
    assert low == [0, 25, 2] and high == [14, 35, 4]  # 20 mm / 0.8 mm around i=2, cut at 0
    outside = np.eye(4)
    outside[:3, 3] = [500.0, 500.0, 500.0]
    assert roi_box_ijk(outside, (10.0, 10.0, 10.0), np.linalg.inv(volume), (50, 60, 8)) is None
    assert roi_box_ijk(centre, (0.0, 0.0, 0.0), np.linalg.inv(volume), (50, 60, 8)) is None


# ---------------------------------------------------------------- guided-edit bookkeeping
class Answer:
    def __init__(self, params):
        self.params = params


def test_answers_land_only_on_their_target_and_latest_request():
    target = AnswerTarget("img", "seg1", "lesion")
    edit = GuidedEdit(client=None, image_id="img", label="lesion", target=target, prior_path="/tmp/prior.nii.gz")
    assert edit.request() is None
    edit.add_click([1, 2, 3])
    first = edit.request()
    edit.add_click([4, 5, 6], foreground=False)  # the snapshot does not change
    assert first.params == {"foreground": [[1, 2, 3]], "background": [], "label": "lesion", "label_kind": "prior"}
    assert first.prior_path == "/tmp/prior.nii.gz" and first.depth == 1
    assert edit.is_current(first, target)  # later clicks extend it
    assert not edit.is_current(first, AnswerTarget("img", "seg1", "other_segment"))
    assert not edit.is_current(first, AnswerTarget("next_image", "seg2", "lesion"))
    second = edit.request()
    assert not edit.is_current(first, target)  # overtaken
    edit.undo()
    assert not edit.is_current(second, target)  # holds a click that was taken back
    stored = GuidedEdit(client=None, image_id="img", label="lesion", prior_tag="final", prior_path="/tmp/p.nii.gz")
    stored.add_click([1, 1, 1])
    assert stored.request().prior_path is None  # the stored label is the prior, not the segment


def test_pasted_regions_are_undone_exactly():
    edit = GuidedEdit(client=None, image_id="img", changed_region_only=True)
    segment = np.zeros((6, 8, 10), np.uint8)
    segment[1:3, 1:3, 1:3] = 1
    original = segment.copy()
    edit.add_click([5, 4, 3])
    request = edit.request()
    assert request.params["changed_region_only"] is True
    answer = Answer({"label_grid": "changed_region", "region_vox": [[2, 7], [3, 6], [1, 4]]})  # (i, j, k)
    assert edit.accept(request, (answer, 0.2)) is answer and edit.seconds_waited == pytest.approx(0.2)
    region = edit.apply(segment, np.ones((3, 3, 5), np.uint8), answer.params)
    assert region == (slice(1, 4), slice(3, 6), slice(2, 7))  # (k, j, i)
    assert segment[region].all() and segment.sum() == original.sum() + 45
    edit.add_click([0, 0, 0], foreground=False)
    request = edit.request()
    full = Answer({"label_grid": "image"})
    edit.accept(request, (full, 0.1))
    edit.apply(segment, np.zeros_like(segment), full.params)
    assert not segment.any()
    edit.undo(segment)
    assert segment[region].all()
    edit.undo(segment)
    assert np.array_equal(segment, original) and not edit.can_undo
    with pytest.raises(ValueError, match="size"):
        edit.apply(segment, np.ones((2, 2, 2), np.uint8), answer.params)
    with pytest.raises(ValueError, match="region_vox"):
        answer_region_kji({"label_grid": "changed_region", "region_vox": [[0, 99], [0, 1], [0, 1]]}, (6, 8, 10))


def test_a_moved_box_is_one_interaction_and_the_same_box_none():
    edit = GuidedEdit(client=None, image_id="img")
    assert edit.set_box([1, 2, 3], [9, 9, 9]) and not edit.set_box([1, 2, 3], [9, 9, 9])
    assert edit.set_box([2, 2, 3], [9, 9, 9]) and edit.interactions == 2
    edit.undo()
    assert edit.state.box == [[1, 2, 3], [9, 9, 9]]


# ---------------------------------------------------------------- background jobs
def wait_until(condition, timeout_s=10.0):
    deadline = time.time() + timeout_s
    while not condition() and time.time() < deadline:
        time.sleep(0.01)
    assert condition()


def test_jobs_run_on_daemon_threads_and_cancel_drops_their_answers():
    jobs = BackgroundJobs()
    release, seen = threading.Event(), []
    threads = []

    def slow(cancel=None):
        threads.append(threading.current_thread())
        release.wait(10)
        if cancel.is_set():
            raise RequestCancelledError()
        return "answer"

    jobs.submit("segment", slow, on_done=seen.append, on_error=lambda e, d: seen.append(type(e)), with_cancel=True)
    wait_until(lambda: threads)
    assert threads[0].daemon  # Slicer's exit never waits for a 30-minute inference
    assert jobs.cancel("segment") and not jobs.busy("segment") and not jobs.cancel("segment")
    jobs.submit("segment", lambda: "second", on_done=seen.append)  # free again at once
    release.set()
    wait_until(lambda: jobs.poll() or not jobs.busy())
    jobs.poll()
    assert seen == ["second"]  # the cancelled job's callbacks never ran


def test_a_callback_that_polls_again_runs_each_job_once():
    jobs = BackgroundJobs()
    seen = []

    def reenter(result):
        seen.append(result)
        jobs.poll()  # what a modal dialog in a callback does through Qt's event loop

    for name in ("a", "b", "c"):
        jobs.submit(name, lambda n=name: n, on_done=reenter)
    wait_until(lambda: all(j.finished.is_set() for j in jobs._jobs))
    jobs.poll()
    assert sorted(seen) == ["a", "b", "c"] and not jobs.busy()


def test_a_cancelled_transfer_stops_between_chunks(tmp_path):
    class Response:
        def __init__(self):
            self.reads = 0

        def read(self, n):
            self.reads += 1
            if self.reads == 3:
                cancel.set()
            return b"x" * 10

    cancel = threading.Event()
    response = Response()
    with pytest.raises(RequestCancelledError):
        _save_stream(response, str(tmp_path / "answer"), cancel)
    assert response.reads == 3


# ---------------------------------------------------------------- one-pass label import / export
def test_colour_table_and_segment_ids_follow_label_values_not_order():
    labels = LabelSet({"liver": 5, "spleen": 2, "kidney": 3})
    assert number_of_colors(labels) == 6
    assert [(v, n) for v, n, _ in color_table_rows(labels)] == [(2, "spleen"), (3, "kidney"), (5, "liver")]
    ids = {"liver": "Segment_a", "spleen": "Segment_b", "kidney": "Segment_c"}
    assert segment_ids_by_value(labels, ids) == ["", "Segment_b", "Segment_c", "", "Segment_a"]
    check_segment_names(["kidney", "liver"], labels)
    with pytest.raises(LabelMappingError, match="tumour"):
        check_segment_names(["liver", "tumour"], labels)


def test_label_values_are_checked_without_a_copy_per_label():
    labels = LabelSet({f"structure_{i}": i for i in range(1, 121)})
    array = np.zeros((40, 64, 64), np.uint8)
    array[:, :8] = 7
    array[:, 10:12] = 120
    assert check_label_values(array, labels) == ["structure_7", "structure_120"]
    array[0, 0, 0] = 121
    with pytest.raises(LabelMappingError, match="121"):
        check_label_values(array, labels)


# ---------------------------------------------------------------- streamed uploads
def test_uploads_stream_from_disk_and_parse_as_the_same_form(tmp_path):
    payload = gzip.compress(np.random.default_rng(0).integers(0, 255, 300_000, dtype=np.uint8).tobytes())
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(payload)
    content_type, body = multipart_stream({"params": '{"client_id": "x"}'}, {"label": ("ct.nii.gz", str(path))})
    chunks = []
    while True:
        chunk = body.read(65536)
        if not chunk:
            break
        assert len(chunk) <= 65536
        chunks.append(chunk)
    data = b"".join(chunks)
    assert len(data) == len(body) and len(chunks) > 3
    parts = {p.name: p for p in parse_multipart(data, content_type)}
    assert parts["label"].data == payload and parts["label"].filename == "ct.nii.gz"
    assert parts["params"].json() == {"client_id": "x"}
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    decoded = MultipartDecoder(io.BytesIO(data).read(), content_type).parts
    assert decoded[1].content == payload
