"""The click rules (medseg.pipeline.click_rules) on synthetic volumes: what a click says is true of
the answer, nothing far from it changes, and a foreground and a background click share fairly."""
from __future__ import annotations

import numpy as np

from medseg.pipeline.click_rules import RULE_RADIUS_MM, apply_click_rules, own_tissue


def two_tissues(shape=(60, 60, 40), seed=0):
    """A bright ball (the object) in darker tissue, with noise."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    obj = (i - 30) ** 2 + (j - 30) ** 2 + ((k - 20) * 1.5) ** 2 <= 14 ** 2
    image = np.where(obj, 300.0, 100.0) + rng.normal(0, 10, shape)
    return image.astype(np.float32), obj


def test_a_foreground_click_on_missed_object_adds_its_own_tissue_and_nothing_far():
    image, obj = two_tissues()
    answer = obj.copy()
    answer[30:, :, :] = False  # half the object missed
    ruled, window = apply_click_rules(image, answer, (1.0, 1.0, 1.5), np.array([[36, 30, 20]]), np.zeros((0, 3)))
    assert ruled[36, 30, 20] and ruled[window].sum() > answer[window].sum() + 500
    assert not (ruled & ~obj).any()  # the darker tissue stays out: it is not like the click's
    far = np.ones(obj.shape, bool)
    far[window] = False
    assert np.array_equal(ruled[far], answer[far])
    reach = [s.stop - s.start for s in window]
    assert max(reach[0], reach[1]) <= 2 * RULE_RADIUS_MM + 1


def test_a_background_click_on_false_object_removes_its_own_tissue():
    image, obj = two_tissues()
    answer = obj.copy()
    answer[5:15, 5:15, 5:15] = True  # a false piece in the darker tissue
    ruled, _ = apply_click_rules(image, answer, (1.0, 1.0, 1.5), np.zeros((0, 3)), np.array([[10, 10, 10]]))
    assert not ruled[7:13, 7:13, 8:12].any() and np.array_equal(ruled & obj, obj)


def test_a_click_is_obeyed_even_where_the_tissue_does_not_match():
    image, obj = two_tissues()
    answer = np.zeros(obj.shape, bool)
    ruled, _ = apply_click_rules(image, answer, (1.0, 1.0, 1.5), np.array([[30, 30, 20], [2, 2, 2]]), np.zeros((0, 3)))
    assert ruled[30, 30, 20] and ruled[2, 2, 2]  # its own ball at least, at a corner of the image too
    tissue = own_tissue(image, np.array([30, 30, 20]), (1.0, 1.0, 1.5), 10.0)
    assert tissue.mask.any() and tissue.mask.sum() < obj.sum()


def test_where_a_foreground_and_a_background_click_meet_the_nearer_one_wins():
    image, obj = two_tissues()
    fg, bg = np.array([[26, 30, 20]]), np.array([[34, 30, 20]])  # both in the object, 8 mm apart
    ruled, _ = apply_click_rules(image, obj.copy(), (1.0, 1.0, 1.5), fg, bg)
    assert ruled[26, 30, 20] and ruled[28, 30, 20] and not ruled[34, 30, 20] and not ruled[32, 30, 20]
    # The rules are the same for the reverse order of kinds: no click cancels the other beyond half way.
    swapped, _ = apply_click_rules(image, obj.copy(), (1.0, 1.0, 1.5), bg, fg)
    assert not swapped[26, 30, 20] and swapped[34, 30, 20]


def test_a_click_the_method_obeyed_is_left_to_the_method():
    """On an object with no edge of its own the own tissue runs past the border: a click the answer
    already obeys changes no more than its own ball."""
    image, obj = two_tissues()
    answer = obj.copy()
    answer[30:, :, :] = False
    ruled, _ = apply_click_rules(image, answer, (1.0, 1.0, 1.5), np.array([[25, 30, 20]]), np.zeros((0, 3)))
    assert (ruled != answer).sum() <= 4 ** 3  # at most the 2 mm ball (it was in already here)
    ignored, _ = apply_click_rules(image, answer, (1.0, 1.0, 1.5), np.array([[36, 30, 20]]), np.zeros((0, 3)))
    assert (ignored != answer).sum() > 500
