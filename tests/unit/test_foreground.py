"""The body/head foreground that preprocessing crops to, on images that are not zero outside."""
import numpy as np

from medseg.data.pseudo_subjects import make_subject
from medseg.data.template import load_template
from medseg.pipeline.fingerprint import fingerprint_case
from medseg.pipeline.foreground import foreground_mask, mask_bbox, otsu_threshold
from medseg.pipeline.plan import make_plan
from medseg.pipeline.preprocess import preprocess


def test_otsu_splits_two_populations():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(10, 2, 5000), rng.normal(100, 10, 5000)])
    assert 30 < otsu_threshold(values) < 80


def _noisy_twin(image: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Rician noise over the whole field of view, as a magnitude MR image has it."""
    sigma = fraction * float(np.percentile(image[image > 0], 99))
    return np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)


def test_background_noise_leaves_crop_plan_and_network_input_unchanged():
    image, labels, affine, params = make_subject(*load_template(), seed=77, index=0)
    noisy = _noisy_twin(image, 0.03, np.random.default_rng(0)).astype(np.float32)
    assert (noisy[labels == 0] > 0).mean() > 0.99  # no zero background left
    clean_box, noisy_box = mask_bbox(foreground_mask(image)), mask_bbox(foreground_mask(noisy))
    assert all(abs(a - c) <= 2 and abs(b - d) <= 2 for (a, b), (c, d) in zip(clean_box, noisy_box))
    rng = np.random.default_rng(0)
    plans = [make_plan([fingerprint_case("x", im, params.spacing_mm, labels, rng, affine=affine)],
                       {"grey_matter": 1, "white_matter": 2}) for im in (image, noisy)]
    assert plans[0].patch_size_vox == plans[1].patch_size_vox
    assert plans[0].median_shape_vox == plans[1].median_shape_vox
    a = preprocess(image, params.spacing_mm, plans[0], affine=affine).image
    b = preprocess(noisy, params.spacing_mm, plans[0], affine=affine).image
    assert a.shape == b.shape and float(np.mean(a[b == 0] == 0)) > 0.99  # background is zero in both


def test_ct_foreground_is_the_body_not_the_air_and_keeps_the_lungs():
    body = np.full((60, 60, 20), -1000.0, np.float32)
    body[10:50, 12:48, :] = 40.0  # soft tissue
    body[18:28, 20:40, :] = -850.0  # a lung, open to the top and bottom of the field of view
    body[36:46, 20:40, :] = -850.0
    mask = foreground_mask(body, "CT")
    assert mask[20, 30, 10] and mask[40, 30, 10] and not mask[2, 2, 10]
    assert mask_bbox(mask)[0][0] >= 8 and mask_bbox(mask)[0][1] <= 52
