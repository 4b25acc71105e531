import numpy as np
import pytest

from medseg.data.pseudo_subjects import SubjectParams, make_subject
from medseg.data.template import load_template


@pytest.fixture(scope="module")
def template():
    return load_template()


def test_identity_transform_reproduces_template_labels(template, monkeypatch):
    image_t, labels_t, affine_t = template
    identity = SubjectParams(spacing_mm=(1.0, 1.0, 1.0), rotation_deg=(0, 0, 0), scale=1.0, displacement_mm=0.0,
                             bias_strength=0.0, gamma=1.0, intensity_scale=1.0, noise_fraction=0.0,
                             thick_slice_axis=-1)
    monkeypatch.setattr("medseg.data.pseudo_subjects.draw_params", lambda rng: identity)
    image, labels, affine, _ = make_subject(image_t, labels_t, affine_t, seed=0, index=0)
    assert labels.shape == labels_t.shape
    assert np.array_equal(labels, labels_t)
    assert np.allclose(affine, affine_t)
    assert np.corrcoef(image.ravel(), image_t.ravel())[0, 1] > 0.999


def _intensity_agreement(image, labels):
    """Fraction of tissue voxels whose T1 intensity (WM brighter than GM) agrees with the label."""
    tissue = labels > 0
    threshold = (np.median(image[labels == 1]) + np.median(image[labels == 2])) / 2
    return float(((image[tissue] > threshold) == (labels[tissue] == 2)).mean())


@pytest.mark.parametrize("index", [0, 1, 2])
def test_random_subject_keeps_image_and_label_aligned(template, index):
    image, labels, affine, params = make_subject(*template, seed=0, index=index)
    assert image.shape == labels.shape
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), params.spacing_mm)
    assert (image[labels == 0] == 0).mean() > 0.5  # brain-extracted: background stays zero
    aligned = _intensity_agreement(image, labels)
    assert aligned > 0.75
    # The label fits the image better than the same label moved by one voxel along any axis.
    for axis in range(3):
        for shift in (-1, 1):
            assert aligned > _intensity_agreement(image, np.roll(labels, shift, axis=axis))


def test_same_seed_same_subject_other_seed_other_subject(template):
    a = make_subject(*template, seed=5, index=1)
    b = make_subject(*template, seed=5, index=1)
    c = make_subject(*template, seed=6, index=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_template_labels_lie_inside_the_extracted_brain(template):
    # A label where the T1 holds nothing taught the shipped net to call the CSF rim grey matter.
    image_t, labels_t, _ = template
    assert not np.any((labels_t > 0) & (image_t == 0))


def test_subjects_an_older_generator_made_are_made_again(tmp_path):
    import json

    from medseg.data.pseudo_subjects import GENERATOR_VERSION, generate

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "subject_000.nii.gz").write_bytes(b"made by an older generator")
    (tmp_path / ".generator-subject-brain.json").write_text(json.dumps({"version": GENERATOR_VERSION - 1}))
    generate(tmp_path, 1, seed=4)
    assert (tmp_path / "images" / "subject_000.nii.gz").read_bytes()[:2] == b"\x1f\x8b"  # a real NIfTI now
    stamp = json.loads((tmp_path / ".generator-subject-brain.json").read_text())
    assert stamp["version"] == GENERATOR_VERSION
    before = (tmp_path / "images" / "subject_000.nii.gz").stat().st_mtime_ns
    generate(tmp_path, 1, seed=4)  # current: kept
    assert (tmp_path / "images" / "subject_000.nii.gz").stat().st_mtime_ns == before
