"""Guided editing: guidance checked against the grid, and the learning-free walk that finds the object.

Images are real NIfTI files on disk read by the real task (``InteractiveInferTask``), on
grids of every kind a scanner writes: RAS, LPS, flipped, oblique, anisotropic.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from medseg.errors import MedSegInputError
from medseg.interaction import box, interaction_from_request, points
from medseg.tasks.interactive import InteractiveInferTask, looks_like_ct, split_interactive_options
from medseg.volume_cache import VolumeCache

LABELS = {"lesion": 1, "liver": 2}
SHAPE = (48, 40, 24)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def phantom(seed=0):
    """A bright ellipsoid (the object) beside a darker block, in noise; and the object's mask."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    obj = ((i - 16) / 9) ** 2 + ((j - 20) / 8) ** 2 + ((k - 12) / 6) ** 2 <= 1
    image = np.full(SHAPE, 100.0)
    image[obj] = 300.0
    image[30:44, 8:32, 4:20] = 200.0  # another structure nearby
    return (image + rng.normal(0, 15, SHAPE)).astype(np.float32), obj


GRIDS = {
    "ras_1mm": np.diag([1.0, 1.0, 1.0, 1.0]),
    "lps": np.diag([-0.8, -0.8, 1.0, 1.0]),
    "flipped_k": np.diag([1.0, 1.0, -1.0, 1.0]),
    "anisotropic": np.diag([0.7, 0.7, 5.0, 1.0]),
}
oblique = np.eye(4)
oblique[:3, :3] = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix() @ np.diag([1.0, 1.2, 2.0])
GRIDS["oblique"] = oblique


@pytest.fixture()
def task():
    return InteractiveInferTask(LABELS, VolumeCache(64 << 20))


def write(path, array, affine):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def answer(task, request):
    out, meta = task(request)
    return np.asarray(nib.load(out).dataobj), meta


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_one_click_inside_an_object_selects_it_on_any_grid(task, tmp_path, grid):
    image, obj = phantom()
    path = write(tmp_path / "image.nii.gz", image, GRIDS[grid])
    mask, meta = answer(task, {"image": path, "foreground": [[16, 20, 12]], "label": "lesion"})
    assert mask.shape == SHAPE and set(np.unique(mask)) <= {0, 1}
    assert dice(mask > 0, obj) > 0.85, grid
    assert meta["label_names"] == {"lesion": 1} and meta["method"] == "seeded"
    assert not (mask[30:44, 8:32, 4:20] > 0).any()  # the neighbouring structure stays out


def test_a_box_alone_finds_the_object(task, tmp_path):
    image, obj = phantom(1)
    path = write(tmp_path / "image.nii.gz", image, GRIDS["anisotropic"])
    mask, _ = answer(task, {"image": path, "box": [[6, 11, 5], [26, 29, 19]]})
    assert dice(mask > 0, obj) > 0.8


def test_refining_a_prior_changes_only_the_region_around_the_click(task, tmp_path):
    image, obj = phantom(2)
    path = write(tmp_path / "image.nii.gz", image, GRIDS["ras_1mm"])
    prior = obj.copy()
    prior[38:42, 10:14, 8:12] = True  # a false island far from the object
    prior_path = write(tmp_path / "prior.nii.gz", np.where(prior, 2, 0).astype(np.uint8), GRIDS["ras_1mm"])
    mask, meta = answer(task, {"image": path, "background": [[40, 12, 10]], "label": "liver",
                               "label_file": prior_path, "label_kind": "prior"})
    assert meta["refined"]
    assert not (mask[38:42, 10:14, 8:12] > 0).any()  # the island the click was on is gone
    region = tuple(slice(a, b) for a, b in meta["region_vox"])
    outside = np.ones(SHAPE, bool)
    outside[region] = False
    assert np.array_equal((mask > 0)[outside], prior[outside])  # nothing else moved


def test_scribbles_on_the_image_grid(task, tmp_path):
    image, obj = phantom(3)
    path = write(tmp_path / "image.nii.gz", image, GRIDS["lps"])
    scribbles = np.zeros(SHAPE, np.uint8)
    scribbles[14:19, 20, 12] = 3  # MONAI Label's foreground scribble value
    scribbles[36, 10:30, 12] = 2
    scribbles[2, 2:30, 12] = 2
    scribble_path = write(tmp_path / "scribbles.nii.gz", scribbles, GRIDS["lps"])
    mask, _ = answer(task, {"image": path, "label_file": scribble_path})
    assert dice(mask > 0, obj) > 0.85


def test_a_box_drawn_on_one_slice_selects_the_object_in_3d(task, tmp_path):
    """A clinician draws the box on the slice they look at: it bounds the object in that plane, and
    the object's depth is found, not cut to the slice."""
    from medseg.interaction import deepen_flat_box

    image, obj = phantom()
    path = write(tmp_path / "image.nii.gz", image, GRIDS["ras_1mm"])
    mask, _ = answer(task, {"image": path, "box": [[6, 11, 12], [26, 29, 12]], "label": "lesion"})
    assert dice(mask > 0, obj) > 0.8 and len(np.unique(np.nonzero(mask)[2])) >= 9
    low, high = deepen_flat_box((np.array([6, 11, 12]), np.array([26, 29, 12])), (1.0, 1.0, 2.0), SHAPE)
    assert low.tolist() == [6, 11, 6] and high.tolist() == [26, 29, 18]  # 21 mm wide: 10.5 mm (6 slices) each side
    assert [c.tolist() for c in deepen_flat_box((np.array([0, 0, 1]), np.array([9, 9, 1])), (1, 1, 1), SHAPE)] == \
        [[0, 0, 0], [9, 9, 6]]  # clamped to the image


@pytest.mark.parametrize("request_, message", [
    ({"foreground": [[48, 0, 0]]}, "outside the image"),
    ({"foreground": [[-1, 0, 0]]}, "outside the image"),
    ({"foreground": [[1.5, 2, 3]]}, "whole voxel index"),
    ({"foreground": [[float("nan"), 2, 3]]}, "whole voxel index"),
    ({"foreground": [["1", 2, 3]]}, "must be a number"),
    ({"foreground": [[True, 2, 3]]}, "must be a number"),
    ({"foreground": [[1, 2]]}, "must be [i, j, k]"),
    ({"foreground": "1,2,3"}, "list of"),
    ({}, "needs guidance"),
    ({"foreground": [], "background": []}, "needs guidance"),
    ({"box": [[2, 2, 2], [10, 2, 2]]}, "a line or a point"),
    ({"box": [[2, 2, 2]]}, "two opposite corners"),
    ({"foreground": [[1, 2, 3]], "label": "spleen"}, "not one of this app's labels"),
    ({"lesion": [[1, 2, 3]]}, "need \"label\""),
])
def test_bad_guidance_is_refused_before_any_work(task, tmp_path, request_, message):
    image, _ = phantom()
    path = write(tmp_path / "image.nii.gz", image, GRIDS["ras_1mm"])
    with pytest.raises(MedSegInputError) as e:
        task({"image": path, **request_})
    assert e.value.status_code == 422 and message in e.value.detail


def test_scribbles_on_another_grid_are_refused(task, tmp_path):
    image, _ = phantom()
    path = write(tmp_path / "image.nii.gz", image, GRIDS["ras_1mm"])
    wrong = write(tmp_path / "s.nii.gz", np.zeros((48, 40, 23), np.uint8), GRIDS["ras_1mm"])
    with pytest.raises(MedSegInputError, match="not on the image's grid"):
        task({"image": path, "label_file": wrong})
    shifted = GRIDS["ras_1mm"].copy()
    shifted[0, 3] = 5.0
    wrong = write(tmp_path / "t.nii.gz", np.zeros(SHAPE, np.uint8), shifted)
    with pytest.raises(MedSegInputError, match="not on the image's grid"):
        task({"image": path, "label_file": wrong})


def test_deepedit_named_clicks_and_the_stock_roi():
    shape = (10, 10, 10)
    found = interaction_from_request({"label": "liver", "liver": [[1, 2, 3]], "lesion": [[4, 4, 4]],
                                      "roi": [8, 2, 1, 5, 0, 9]}, shape, LABELS)
    assert found.foreground_vox.tolist() == [[1, 2, 3]] and found.background_vox.tolist() == [[4, 4, 4]]
    assert found.box_vox[0].tolist() == [2, 1, 0] and found.box_vox[1].tolist() == [8, 5, 9]
    assert points([[0, 0, 9.0]], shape, "foreground").tolist() == [[0, 0, 9]]
    low, high = box([[9, 0, 0], [0, 9, 9]], shape)
    assert low.tolist() == [0, 0, 0] and high.tolist() == [9, 9, 9]


def test_request_keys_split_and_server_only_keys():
    ours, rest = split_interactive_options({"foreground": [], "liver": [], "tta": True, "prior_tag": "final"},
                                           LABELS)
    assert set(ours) == {"foreground", "liver", "prior_tag"} and rest == {"tta": True}
    with pytest.raises(MedSegInputError, match="set by the server"):
        split_interactive_options({"prior_path": "/etc/passwd"}, LABELS)
    with pytest.raises(MedSegInputError):
        split_interactive_options({"prior_tag": "../x"}, LABELS)


def test_cache_reads_an_image_once_and_again_when_it_changes(tmp_path):
    cache = VolumeCache(64 << 20)
    image, _ = phantom()
    path = write(tmp_path / "image.nii.gz", image, GRIDS["ras_1mm"])
    cache.get(path), cache.get(path)
    assert (cache.hits, cache.misses) == (1, 1)
    write(tmp_path / "image.nii.gz", image + 1, GRIDS["ras_1mm"])
    import os
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert cache.get(path).array[0, 0, 0] == pytest.approx(image[0, 0, 0] + 1)
    assert cache.stats()["images"] == 1
    small = VolumeCache(image.nbytes + 10)
    small.get(path)
    other = write(tmp_path / "other.nii.gz", image, GRIDS["ras_1mm"])
    small.get(other)
    assert small.stats()["images"] == 1  # the bound holds: the older image went


def test_simulated_clicks_go_to_the_deepest_point_of_the_largest_error():
    from medseg.pipeline.click_simulation import clicks_to_reach, deepest_point, next_click

    truth = np.zeros((30, 30, 30), bool)
    truth[5:25, 5:15, 5:25] = True
    assert deepest_point(truth, (1, 1, 1))[1] in (9, 10)  # the middle of the thin axis
    assert next_click(truth, None, (1, 1, 1))[0] == "foreground"
    predicted = truth.copy()
    predicted[5:25, 5:15, 5:10] = False  # a missed slab ...
    predicted[26:29, 26:29, 26:29] = True  # ... and a smaller false blob
    kind, point = next_click(truth, predicted, (1, 1, 1))
    assert kind == "foreground" and truth[tuple(point)] and not predicted[tuple(point)]
    predicted[5:25, 5:15, 5:10] = True
    kind, point = next_click(truth, predicted, (1, 1, 1))
    assert kind == "background" and point == [27, 27, 27]
    assert next_click(truth, truth, (1, 1, 1)) is None
    assert clicks_to_reach([0.5, 0.82, 0.91], 0.85, 20) == 3 and clicks_to_reach([0.5], 0.9, 20) == 20


def test_effort_is_checked():
    from medseg.request_options import labelling_effort

    assert labelling_effort({"interactions": 3, "seconds": 20}) == {"interactions": 3, "seconds": 20.0}
    for bad in ({}, {"interactions": -1}, {"interactions": 2.5}, {"clicks": 1}, [1], "x", {"seconds": float("nan")}):
        with pytest.raises(MedSegInputError):
            labelling_effort(bad)


def test_a_large_region_is_worked_on_a_strided_grid_and_keeps_thick_slices():
    from medseg.interaction import Interaction
    from medseg.pipeline.seeded import region_steps, segment_object

    assert region_steps([[0, 100], [0, 100], [0, 100]], (1, 1, 1)).tolist() == [1, 1, 1]
    assert region_steps([[0, 181], [0, 217], [0, 181]], (1, 1, 1)).tolist() == [2, 2, 2]
    assert region_steps([[0, 512], [0, 512], [0, 60]], (0.6, 0.6, 5.0)).tolist()[2] == 1  # slices stay
    rng = np.random.default_rng(5)
    shape = (200, 200, 60)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    obj = ((i - 100) / 70) ** 2 + ((j - 90) / 60) ** 2 + ((k - 30) / 25) ** 2 <= 1
    image = (np.where(obj, 250.0, 80.0) + rng.normal(0, 10, shape)).astype(np.float32)
    result = segment_object(image, (1.0, 1.0, 1.0), Interaction(np.array([[100, 90, 30]]), np.zeros((0, 3), int)))
    assert max(result.steps) > 1 and result.mask.shape == shape
    assert dice(result.mask, obj) > 0.95


def test_refining_changes_the_prior_only_near_the_clicks_however_many_there_are():
    # Two wrong patches of a prior, 60 mm apart, fixed by one click each in the same request:
    # each is fixed, and nothing farther than REFINE_RADIUS_MM from a click moves, although the
    # box around both clicks spans most of the image.
    from scipy import ndimage

    from medseg.interaction import Interaction
    from medseg.pipeline.seeded import REFINE_RADIUS_MM, click_groups, segment_object

    rng = np.random.default_rng(7)
    shape = (110, 50, 40)
    truth = np.zeros(shape, bool)
    truth[10:100, 10:40, 8:32] = True  # a long bright bar
    image = (np.where(truth, 250.0, 80.0) + rng.normal(0, 10, shape)).astype(np.float32)
    prior = truth.copy()
    prior[15:25, 15:25, 15:25] = False  # a hole at one end
    prior[85:95, 40:48, 15:25] = True  # a false bump at the other
    prior[50:60, 12:20, 10:16] = False  # an error between them that no click is near
    interaction = Interaction(np.array([[20, 20, 20]]), np.array([[90, 44, 20]]))
    assert len(click_groups(interaction, (1.0, 1.0, 1.0))) == 2
    result = segment_object(image, (1.0, 1.0, 1.0), interaction, prior=prior)
    assert result.mask[15:25, 15:25, 15:25].all() and not result.mask[85:95, 41:48, 15:25].any()
    clicks = np.zeros(shape, bool)
    clicks[20, 20, 20] = clicks[90, 44, 20] = True
    far = ndimage.distance_transform_edt(~clicks) > REFINE_RADIUS_MM
    assert np.array_equal(result.mask[far], prior[far])
    assert not result.mask[50:60, 12:20, 10:16].any()  # the error far from both clicks stays


def test_clicks_whose_neighbourhoods_overlap_are_refined_together():
    from medseg.interaction import Interaction
    from medseg.pipeline.seeded import click_groups

    near = Interaction(np.array([[10, 10, 10]]), np.array([[30, 10, 10], [200, 10, 10]]))
    groups = click_groups(near, (1.0, 1.0, 1.0))
    assert sorted((len(g.foreground_vox), len(g.background_vox)) for g in groups) == [(0, 1), (1, 1)]
    # On 5 mm slices, 12 slices apart is 60 mm: apart.
    assert len(click_groups(Interaction(np.array([[10, 10, 0], [10, 10, 12]]), np.zeros((0, 3), int)),
                            (1.0, 1.0, 5.0))) == 2


def test_a_ct_is_told_from_an_mr_by_its_air():
    """The default method depends on the modality (learned on MR, seeded on CT)."""
    ct = np.full((200, 200, 60), -1000, np.int16)
    ct[40:160, 40:160, :] = 40  # a body in air
    mr = np.random.default_rng(0).uniform(0, 900, (200, 200, 60)).astype(np.float32)
    assert looks_like_ct(ct) and not looks_like_ct(mr)
    assert not looks_like_ct(np.zeros((5, 5, 5)))
