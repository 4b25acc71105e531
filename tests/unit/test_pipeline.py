import numpy as np
import pytest
import torch

from medseg.pipeline.inference import mirror_axes_subsets, predict_probabilities
from medseg.pipeline.loss import (DeepSupervisionLoss, DiceCELoss, deep_supervision_weights,
                                  inverse_sqrt_frequency_weights)
from medseg.pipeline.plan import CaseFingerprint, Plan, make_plan, target_spacing
from medseg.pipeline.postprocess import class_argmax
from medseg.pipeline.preprocess import (PreprocessedCase, invert_labels, invert_probabilities, nonzero_bbox,
                                        preprocess)

LABELS = {"a": 1}


def tiny_plan(spacing=(1.0, 1.0, 1.0)) -> Plan:
    cases = [CaseFingerprint("x", list(spacing), [40, 40, 40], [1.0, 2.0])]
    return make_plan(cases, LABELS, gpu_memory_budget_gb=0.01, base_features=4, max_features=8)


def test_target_spacing_median_and_anisotropic_10th_percentile():
    iso = np.array([[1.0, 1.0, 1.0], [1.2, 1.2, 1.2], [0.8, 0.8, 0.8]])
    assert target_spacing(iso) == [1.0, 1.0, 1.0]
    aniso = np.array([[1.0, 1.0, 5.0]] * 5 + [[1.0, 1.0, 3.5]] * 5)
    spacing = target_spacing(aniso)
    assert spacing[:2] == [1.0, 1.0] and spacing[2] == 3.5


def test_plan_pools_coarse_axis_later():
    cases = [CaseFingerprint("x", [1.0, 1.0, 4.0], [200, 200, 50], [0.0])]
    plan = make_plan(cases, LABELS, gpu_memory_budget_gb=1.0, base_features=8)
    assert plan.strides[1] == [2, 2, 1]  # 4 mm axis not pooled while the others are finer than 2 mm
    assert all(p % np.prod([s[a] for s in plan.strides]) == 0 for a, p in enumerate(plan.patch_size_vox))


def test_preprocess_and_inverse_restore_the_original_grid():
    image = np.zeros((30, 28, 26), np.float32)
    image[5:25, 4:20, 3:22] = np.random.default_rng(0).normal(100, 10, (20, 16, 19))
    plan = tiny_plan((1.5, 1.5, 1.5))
    case = preprocess(image, (1.0, 1.0, 1.0), plan)
    assert nonzero_bbox(image) == ((5, 25), (4, 20), (3, 22))
    # The crop is the intensity foreground: smoothing and dilation leave two voxels of margin.
    assert case.bbox == ((3, 27), (2, 22), (1, 24))
    assert case.image.shape[1:] == (16, 13, 15)
    probs = torch.zeros((2, *case.image.shape[1:]))
    probs[1] = 1.0
    back = invert_probabilities(probs, case)
    assert back.shape == (2, 30, 28, 26)
    labels = back.argmax(0).numpy()
    assert labels[3:27, 2:22, 1:24].all() and labels.sum() == 24 * 20 * 23


def test_labels_from_the_crop_equal_the_argmax_of_the_full_probabilities():
    image = np.zeros((30, 28, 26), np.float32)
    image[5:25, 4:20, 3:22] = 1.0
    case = preprocess(image, (1.0, 1.0, 1.0), tiny_plan((1.5, 1.5, 1.5)))
    probs = torch.softmax(torch.randn((3, *case.image.shape[1:]), generator=torch.Generator().manual_seed(0)), 0)
    labels = invert_labels(probs, case)
    assert labels.dtype == np.uint8 and labels.shape == (30, 28, 26)
    assert np.array_equal(labels, invert_probabilities(probs, case).argmax(0).numpy())
    assert set(np.unique(labels[5:25, 4:20, 3:22])) == {0, 1, 2} and not labels[:3].any()


def test_class_argmax_matches_argmax_on_any_axis_and_breaks_ties_low():
    scores = np.random.default_rng(1).random((4, 7, 6, 5)).astype(np.float32)
    scores[:, 0] = 0.5  # a tie between every class: the lowest index wins, as with argmax
    assert np.array_equal(class_argmax(scores), scores.argmax(0))
    assert not class_argmax(scores)[0].any()
    channels_last = np.moveaxis(scores, 0, -1)
    assert np.array_equal(class_argmax(channels_last, axis=-1), channels_last.argmax(-1))
    assert class_argmax(torch.from_numpy(scores)).dtype == np.uint8
    wide = np.zeros((300, 2))
    wide[299, 1] = 1.0
    assert class_argmax(wide).dtype == np.uint16 and class_argmax(wide).tolist() == [0, 299]


def test_mirror_tta_is_consistent_for_a_symmetric_input():
    torch.manual_seed(0)

    class Symmetric(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x, -x], dim=1)

    x = torch.zeros(1, 8, 8, 8)
    x[:, 2:6, 2:6, 2:6] = 1.0
    plain = predict_probabilities(Symmetric(), x, [8, 8, 8], mirror=False)
    tta = predict_probabilities(Symmetric(), x, [8, 8, 8], mirror=True)
    assert len(mirror_axes_subsets(3)) == 8 and len(mirror_axes_subsets(2)) == 4
    assert torch.allclose(plain, tta, atol=1e-6)


def test_deep_supervision_weights_halve_and_drop_lowest():
    assert deep_supervision_weights(3) == [2 / 3, 1 / 3, 0.0]
    loss = DeepSupervisionLoss(DiceCELoss())
    target = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6, 2:6] = 1
    perfect = torch.stack([(target == 0).float(), (target == 1).float()], 1) * 20
    worse = torch.zeros_like(perfect)
    assert loss([perfect, perfect[:, :, ::2, ::2, ::2]], target) < loss([worse, worse[:, :, ::2, ::2, ::2]], target)


def test_class_weights_lift_small_labels_and_keep_the_loss_scale():
    counts = np.array([90_000, 9_000, 900, 0])  # background, a large label, a small one, one absent
    weights = inverse_sqrt_frequency_weights(counts)
    assert weights[2] > weights[1] > weights[0]
    assert np.isclose(weights[1] / weights[0], np.sqrt(10), rtol=1e-4)  # a tenth of the voxels: sqrt(10) x
    frequency = np.maximum(counts, 1) / np.maximum(counts, 1).sum()
    assert np.isclose(float((frequency * weights.numpy()).sum()), 1.0)  # the mean weight per voxel is 1
    # A missed small label costs more than a missed large one of the same voxel count.
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    target[0, :2, :2, :2] = 2
    logits = torch.zeros(1, 4, 4, 4, 4)
    logits[:, 0] = 5.0  # everything called background
    weighted = DiceCELoss(class_weights=weights)(logits, target)
    plain = DiceCELoss()(logits, target)
    assert weighted > plain


def test_class_weighting_is_asked_for_and_computed_from_the_training_labels():
    from medseg.pipeline.training import FROM_SCRATCH_TRAINING, TrainConfig, class_weights

    assert TrainConfig().class_weighting == "none" == TrainConfig(**FROM_SCRATCH_TRAINING).class_weighting
    plan = make_plan([CaseFingerprint("x", [1.0] * 3, [8, 8, 8], [1.0, 2.0])], {"a": 1, "b": 2},
                     gpu_memory_budget_gb=0.01, base_features=4, max_features=8)
    label = np.zeros((8, 8, 8), np.uint8)
    label[:4] = 1
    label[0, 0, 0] = 2
    case = PreprocessedCase(np.zeros((1, 8, 8, 8), np.float32), label, (8, 8, 8), ((0, 8),) * 3, (8, 8, 8))
    assert class_weights([case], plan, "none") is None
    weights = class_weights([case], plan, "inverse_sqrt_frequency")
    assert weights.shape == (3,) and weights[2] > weights[1]


def test_persistent_split_keeps_assignments_as_images_are_added(tmp_path):
    from medseg.pipeline.training import persistent_split

    path = tmp_path / "split.json"
    names = [f"case_{i}" for i in range(5)]
    train, val = persistent_split(names, path, 0.2, 4, 0)
    assert len(val) == 1 and len(train) == 4
    first_val = names[val[0]]
    more = names + [f"case_{i}" for i in range(5, 12)]
    train2, val2 = persistent_split(more, path, 0.2, 4, 0)
    assert first_val in [more[i] for i in val2]
    assert {names[i] for i in train} <= {more[i] for i in train2}
    assert len(val2) == 2


def test_largest_component_decision_keeps_a_label_it_would_hurt():
    from medseg.pipeline.postprocess import decide_largest_component, keep_largest_component

    truth = np.zeros((20, 20, 20), np.uint8)
    truth[2:6, 2:6, 2:6] = 1  # label 1 really has two blobs
    truth[12:16, 12:16, 12:16] = 1
    truth[8:10, 2:18, 2:18] = 2  # label 2 is one slab
    pred = truth.copy()
    pred[18, 18, 18] = 2  # a false-positive speck of label 2
    assert (keep_largest_component(pred, 1) == 1).sum() == 64
    chosen, evidence = decide_largest_component([pred], [truth], {"a": 1, "b": 2})
    assert chosen == [2]
    assert evidence["candidates"]["a"]["accepted"] is False


def test_largest_component_leaves_many_piece_and_missed_labels_alone():
    """Ribs are many pieces; a label the model never finds gains nothing either way (both Dice 0)."""
    from medseg.pipeline.postprocess import decide_largest_component

    truth = np.zeros((24, 24, 24), np.uint8)
    for z in range(2, 22, 4):
        truth[z:z + 2, 2:10, 2:10] = 1  # five ribs
    truth[2:6, 14:22, 14:22] = 2  # a label the prediction misses
    truth[10:14, 14:22, 14:22] = 3
    pred = np.where(truth == 2, 0, truth).astype(np.uint8)
    pred[23, 0, 0] = 1  # specks that keeping the largest rib would remove, with four real ribs
    pred[0, 23, 0] = 3
    chosen, evidence = decide_largest_component([pred], [truth], {"ribs": 1, "missed": 2, "tissue": 3})
    assert chosen == [3]
    assert evidence["candidates"]["ribs"]["reason"].startswith("many pieces")
    assert evidence["candidates"]["missed"]["reason"].startswith("not found")


def test_ct_uses_dataset_foreground_statistics_and_mr_per_image_zscore():
    rng = np.random.default_rng(0)
    fg = list(rng.normal(40, 10, 5000)) + [3000.0, -1000.0]  # outliers clipped by the percentiles
    cases = [CaseFingerprint("c", [1.0, 1.0, 1.0], [32, 32, 32], fg)]
    ct = make_plan(cases, LABELS, modality="CT", gpu_memory_budget_gb=0.05, base_features=4)
    mr = make_plan(cases, LABELS, modality="MR", gpu_memory_budget_gb=0.05, base_features=4)
    assert ct.normalization == "ct" and mr.normalization == "zscore_per_image"
    assert ct.ct_clip[0] > -100 and ct.ct_clip[1] < 100
    assert ct.foreground_intensity["percentile_99_5"] == ct.ct_clip[1] and mr.foreground_intensity is not None
    assert abs(ct.ct_mean - 40) < 1 and abs(ct.ct_std - 10) < 1
    image = np.full((8, 8, 8), 40.0, np.float32)
    image[0, 0, 0] = 3000.0
    from medseg.pipeline.preprocess import normalize

    out_ct = normalize(image, ct)
    assert abs(out_ct[1, 1, 1]) < 0.1 and out_ct[0, 0, 0] < 10  # clipped before scaling
    out_mr = normalize(image * 7 + 3, mr)
    assert abs(out_mr.mean()) < 1e-5 and abs(out_mr.std() - 1) < 1e-4


def test_label_resample_round_trip_stays_within_one_voxel():
    from scipy import ndimage

    from medseg.pipeline.preprocess import resample_label

    label = np.zeros((40, 36, 30), np.uint8)
    zz, yy, xx = np.mgrid[:40, :36, :30]
    label[(zz - 20) ** 2 + (yy - 18) ** 2 + (xx - 15) ** 2 < 12**2] = 1
    label[(zz - 20) ** 2 + (yy - 18) ** 2 + (xx - 15) ** 2 < 6**2] = 2
    down = resample_label(label, (27, 24, 20), 3)
    back = resample_label(down, label.shape, 3)
    for value in (1, 2):
        a, b = label == value, back == value
        grown_a, grown_b = ndimage.binary_dilation(a), ndimage.binary_dilation(b)
        assert not (b & ~grown_a).any() and not (a & ~grown_b).any()


def test_2d_plan_slices_along_the_coarsest_axis_and_trains_slice_wise():
    from medseg.models import MODELS
    from medseg.pipeline.preprocess import PreprocessedCase
    from medseg.pipeline.training import TrainConfig, train_network

    cases = [CaseFingerprint("a", [1.0, 4.0, 1.0], [40, 10, 36], [1.0])]
    plan = make_plan(cases, LABELS, spatial_dims=2, gpu_memory_budget_gb=0.01, base_features=4, max_features=8)
    assert plan.slice_axis == 1 and plan.patch_size_vox[1] == 1 and len(plan.strides[0]) == 2
    assert not plan.cascade_recommended
    rng = np.random.default_rng(0)
    label = np.zeros((40, 10, 36), np.uint8)
    label[10:30, :, 8:28] = 1
    image = (label + rng.normal(0, 0.3, label.shape)).astype(np.float32)[None]
    case = PreprocessedCase(image, label, label.shape, ((0, 40), (0, 10), (0, 36)), label.shape)
    net = MODELS["unet2d"].build(plan)
    result = train_network(net, plan, [case], [case], TrainConfig(max_iterations=30, batch_size=2, log_every=10))
    assert result.val_dice_per_label["a"] > 0.8
    probs = predict_probabilities(net, torch.from_numpy(image), plan.patch_size_vox, mirror=True)
    assert probs.shape == (2, 40, 10, 36)
    assert len(mirror_axes_subsets(3, plan.patch_size_vox)) == 4


def test_preprocessed_cases_are_cached_on_disk_and_memory_mapped(tmp_path):
    import nibabel as nib

    from medseg.pipeline.training import load_preprocessed

    image = np.zeros((20, 20, 20), np.float32)
    image[4:16, 4:16, 4:16] = 50 + np.random.default_rng(0).normal(0, 5, (12, 12, 12))
    label = (image > 50).astype(np.uint8)
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "lab.nii.gz")
    plan = tiny_plan()
    first = load_preprocessed(str(tmp_path / "img.nii.gz"), str(tmp_path / "lab.nii.gz"), plan, tmp_path / "cache")
    again = load_preprocessed(str(tmp_path / "img.nii.gz"), str(tmp_path / "lab.nii.gz"), plan, tmp_path / "cache")
    assert isinstance(again.image, np.memmap) and isinstance(again.label, np.memmap)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.label, again.label)
    assert again.bbox == first.bbox and len(again.foreground_vox) == int((first.label > 0).sum())


def test_progress_reports_epoch_and_validation_dice_while_training():
    from medseg.models import MODELS
    from medseg.pipeline.preprocess import PreprocessedCase
    from medseg.pipeline.training import TrainConfig, train_network

    plan = tiny_plan()
    label = np.zeros((24, 24, 24), np.uint8)
    label[6:18, 6:18, 6:18] = 1
    image = (label + np.random.default_rng(0).normal(0, 0.3, label.shape)).astype(np.float32)[None]
    case = PreprocessedCase(image, label, label.shape, ((0, 24),) * 3, label.shape)
    seen = []
    result = train_network(MODELS["unet3d"].build(plan), plan, [case], [case],
                           TrainConfig(max_iterations=6, batch_size=2, log_every=2, val_every=3, augment=False),
                           progress=seen.append)
    # The first three iterations at once, then every log_every; validation steps are reported too.
    assert [e["iteration"] for e in seen] == [1, 2, 3, 4, 6]
    assert [e["epoch"] for e in seen] == [2.0, 4.0, 6.0, 8.0, 12.0]  # batch 2, one case
    assert [sorted(e.get("val_dice_per_label", {})) for e in seen] == [[], [], ["a"], [], []]
    # (the last step's Dice is the final validation's job)
    assert set(result.val_dice_per_label) == {"a"}


def test_cpu_plan_is_small_and_coarse_enough_and_says_so_while_the_gpu_plan_keeps_the_data_spacing():
    from medseg.pipeline.plan import machine_planning

    # A thoracic CT series: 512x512x60 at 0.6x0.6x5 mm.
    cases = [CaseFingerprint(f"ct{i}", [0.6, 0.6, 5.0], [512, 512, 60], [0.0, 50.0], "CT") for i in range(3)]
    gpu = make_plan(cases, LABELS, modality="CT", **machine_planning("cuda", None))
    cpu = make_plan(cases, LABELS, modality="CT", **machine_planning("cpu", None))
    assert gpu.planned_for == "gpu" and cpu.planned_for == "cpu"
    assert gpu.target_spacing_mm == [0.6, 0.6, 5.0] and gpu.data_spacing_mm is None
    assert cpu.data_spacing_mm == [0.6, 0.6, 5.0]
    assert cpu.target_spacing_mm[0] > 1.0 and cpu.target_spacing_mm[2] == 5.0  # the fine axes coarsened
    assert np.prod(cpu.median_shape_vox) <= 4_000_000 < np.prod(gpu.median_shape_vox)
    assert max(cpu.features) <= 64 < max(gpu.features)
    assert np.prod(cpu.patch_size_vox) < np.prod(gpu.patch_size_vox)
    # A budget the user sets is used as given, also on a CPU.
    asked = make_plan(cases, LABELS, modality="CT", **machine_planning("cpu", 8.0))
    assert asked.planned_for == "cpu (gpu_memory_gb set)" and asked.target_spacing_mm == gpu.target_spacing_mm


def test_plans_written_before_cascade_recommended_still_load():
    plan = tiny_plan()
    old = plan.__dict__ | {"use_cascade": True}
    old.pop("cascade_recommended")
    assert Plan.from_dict(old).cascade_recommended is True


@pytest.mark.parametrize("axcodes", ["LPS", "LIA", "PIL"])
def test_any_orientation_gives_the_same_network_input_and_labels_back_in_place(axcodes):
    import nibabel as nib

    rng = np.random.default_rng(1)
    image = np.zeros((30, 34, 26), np.float32)
    image[4:26, 6:30, 3:22] = rng.normal(100, 10, (22, 24, 19))
    affine = np.diag([1.0, 1.2, 1.5, 1.0])
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                                nib.orientations.axcodes2ornt(tuple(axcodes)))
    stored = nib.orientations.apply_orientation(image, transform)
    stored_affine = affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
    plan = tiny_plan((1.5, 1.5, 1.5))
    ras = preprocess(image, (1.0, 1.2, 1.5), plan, affine=affine)
    other = preprocess(stored, np.linalg.norm(stored_affine[:3, :3], axis=0), plan, affine=stored_affine)
    assert np.allclose(ras.image, other.image)
    probs = torch.softmax(torch.randn((2, *other.image.shape[1:]), generator=torch.Generator().manual_seed(0)), 0)
    back = invert_labels(probs, other)
    assert back.shape == stored.shape
    assert np.array_equal(back, nib.orientations.apply_orientation(invert_labels(probs, ras), transform))


@pytest.mark.parametrize("n_classes", [3, 300])
@pytest.mark.parametrize("slab_bytes", [1, 3 * 17 * 23 * 4 * 3, 2**30])  # a row, 3 rows (uneven), one slab
def test_slab_wise_labels_equal_the_full_resampling_and_use_uint16_beyond_255_labels(n_classes, slab_bytes,
                                                                                      monkeypatch):
    from medseg.pipeline import preprocess
    from medseg.pipeline.preprocess import labels_on_grid, resample_probabilities

    monkeypatch.setattr(preprocess, "LABEL_SLAB_BYTES", slab_bytes)

    gen = torch.Generator().manual_seed(n_classes)
    probs = torch.softmax(3 * torch.randn((n_classes, 9, 11, 7), generator=gen), 0)
    shape = (20, 17, 23)  # up in-plane and through-plane; 23 slices is not a multiple of the slab
    full = class_argmax(resample_probabilities(probs, shape))
    slabs = labels_on_grid(probs, shape)
    assert slabs.dtype == (np.uint8 if n_classes <= 256 else np.uint16) == full.dtype
    assert (slabs == full).mean() > 0.999  # float rounding may break an exact tie differently
    down = labels_on_grid(probs, (5, 6, 3))
    assert (down == class_argmax(resample_probabilities(probs, (5, 6, 3)))).mean() > 0.99


def test_label_resampling_one_class_at_a_time_equals_the_one_hot_argmax():
    import torch.nn.functional as F

    from medseg.pipeline.preprocess import resample_label, resample_probabilities

    label = np.random.default_rng(0).integers(0, 5, (20, 22, 9)).astype(np.uint8)
    label[label == 3] = 0  # an absent class
    onehot = F.one_hot(torch.from_numpy(label.astype(np.int64)), 5).permute(3, 0, 1, 2).float()
    for shape in [(13, 15, 20), (31, 30, 5)]:
        assert np.array_equal(resample_label(label, shape, 5), class_argmax(resample_probabilities(onehot, shape)))


def test_a_cpu_plan_keeps_the_data_spacing_when_the_images_are_small_enough():
    from medseg.pipeline.plan import machine_planning

    cases = [CaseFingerprint("chest", [3.0469, 3.0469, 10.0], [128, 128, 34], [0.0, 50.0], "CT")]
    plan = make_plan(cases, LABELS, modality="CT", **machine_planning("cpu", None))
    assert plan.target_spacing_mm == [3.0469, 3.0469, 10.0] and plan.data_spacing_mm is None


def test_lateralized_labels_are_never_mirrored_left_right():
    from medseg.pipeline.augment import mirror
    from medseg.pipeline.sides import is_lateralized

    assert is_lateralized({"left_lung": 1, "right lung": 2}) and is_lateralized({"hippocampus_l": 1})
    assert not is_lateralized({"grey_matter": 1, "lumbar_vertebral_column": 2, "cleft": 3})
    cases = [CaseFingerprint("x", [1.0, 1.0, 1.0], [40, 40, 40], [1.0])]
    plan = make_plan(cases, {"left_lung": 1, "right_lung": 2}, gpu_memory_budget_gb=0.01, base_features=4)
    assert plan.mirror_axes == [1, 2] and make_plan(cases, LABELS, gpu_memory_budget_gb=0.01).mirror_axes is None
    assert len(mirror_axes_subsets(3, plan.patch_size_vox, plan.mirror_axes)) == 4
    image, label = torch.arange(8.0).reshape(1, 2, 2, 2), torch.arange(8).reshape(2, 2, 2)
    for seed in range(20):
        flipped, lab = mirror(image, label, torch.Generator().manual_seed(seed), plan.mirror_axes)
        assert torch.equal(flipped[0, :, 0, 0].sort().values, flipped[0, :, 0, 0])  # axis 0 never reversed


def test_foreground_patches_pick_a_class_first_so_a_small_label_is_seen_as_often_as_a_large_one():
    from medseg.pipeline.preprocess import PreprocessedCase
    from medseg.pipeline.training import FOREGROUND_SAMPLES_PER_CLASS, PatchSampler, foreground_voxels

    label = np.zeros((60, 60, 60), np.uint8)
    label[5:55, 5:55, 5:40] = 1  # 87 500 voxels of "tissue"
    label[50:53, 50:53, 50:53] = 2  # 27 voxels of "vertebra", outside the tissue
    coords = foreground_voxels(label)
    assert (label[tuple(coords.T)] == 2).sum() == 27 and (label[tuple(coords.T)] == 1).sum() == FOREGROUND_SAMPLES_PER_CLASS
    case = PreprocessedCase(image=np.zeros((1, 60, 60, 60), np.float32), label=label, original_shape=label.shape,
                            bbox=((0, 60),) * 3, cropped_shape=label.shape, foreground_vox=coords)
    sampler = PatchSampler([case], [8, 8, 8], foreground_fraction=1.0, seed=0)
    _, labels = sampler.batch(400)
    with_small = int(sum(bool((patch == 2).any()) for patch in labels))
    assert 160 <= with_small <= 240  # about half; sampling over all foreground gives about 0


def test_labels_told_apart_by_level_are_never_mirrored_head_to_foot():
    from medseg.pipeline.sides import mirror_axes_for, ordered_axes

    spine = {"cervical vertebral column": 1, "thoracic vertebral column": 2, "lumbar_vertebral_column": 3}
    assert ordered_axes(spine) == {2} and ordered_axes({"tissue": 1}) == set()
    assert ordered_axes({"posterior_horn": 1, "left_lung": 2}) == {0, 1}
    cases = [CaseFingerprint("x", [1.0, 1.0, 1.0], [40, 40, 40], [1.0])]
    chest = {"ribs": 1, **{k: v + 1 for k, v in spine.items()}, "right_lung": 5, "left_lung": 6, "tissue": 7}
    plan = make_plan(cases, chest, gpu_memory_budget_gb=0.01, base_features=4)
    assert plan.mirror_axes == [1] == mirror_axes_for(chest)
    assert mirror_axes_subsets(3, plan.patch_size_vox, plan.mirror_axes) == [(), (3,)]
