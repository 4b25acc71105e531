"""Left/right label pairs: each predicted piece goes to its side of the body's midline."""
from __future__ import annotations

import numpy as np

from medseg.volume import Volume
from medseg.pipeline.sides import (
    assign_sides,
    decide_sides,
    lateral_pairs,
    right_of_grid_centre,
    right_of_world_x,
    side_of,
)

LABELS = {"ribs": 1, "right_lung": 5, "left lung": 6, "Left kidney": 7, "tissue": 9}


def two_lungs(shape=(40, 20, 10)):
    """A RAS grid (axis 0 towards the right): the left lung at low x, the right lung at high x."""
    truth = np.zeros(shape, np.uint8)
    truth[4:14, 5:15, 2:8] = 6
    truth[26:36, 5:15, 2:8] = 5
    return truth


def test_side_words_and_pairs():
    assert side_of("Right kidney") == ("right", "kidney")
    assert side_of("hippocampus_l") == ("left", "hippocampus")
    assert side_of("lumbar_vertebral_column") == (None, "lumbar vertebral column")
    assert side_of("l") == (None, "l")  # a lone letter is no side
    # Only names that differ by the side alone pair up; a kidney without its twin stays alone.
    assert lateral_pairs(LABELS) == [(6, 5)]


def test_both_lungs_in_one_class_are_split_by_side():
    truth = two_lungs()
    predicted = np.where(truth > 0, 6, 0).astype(np.uint8)  # the network called both "left lung"
    fixed = assign_sides(predicted, [(6, 5)], right_of_grid_centre(predicted.shape))
    assert np.array_equal(fixed, truth)
    pairs, evidence = decide_sides([predicted], [truth], {"right_lung": 5, "left_lung": 6})
    assert pairs == [[6, 5]] and evidence["accepted"] and evidence["dice"]["right_lung"] == 1.0
    # A correct prediction gains nothing: the step is not kept.
    assert decide_sides([truth], [truth], {"right_lung": 5, "left_lung": 6})[0] == []


def test_sides_on_a_flipped_grid_use_world_coordinates():
    """On an LPS-stored image (axis 0 towards the left) the same rule holds through the affine."""
    truth_ras = two_lungs()
    stored = truth_ras[::-1].copy()  # file order: axis 0 now runs towards the patient's left
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])
    affine[0, 3] = 2.0 * (stored.shape[0] - 1)  # world x of voxel 0 is the rightmost
    volume = Volume(stored.astype(np.float32), affine)
    predicted = np.where(stored > 0, 5, 0).astype(np.uint8)  # everything called "right lung"
    midline = float(affine[0, 0] * (volume.shape[0] - 1) / 2 + affine[0, 3])
    fixed = assign_sides(predicted, [(6, 5)], right_of_world_x(affine, midline))
    assert np.array_equal(fixed, stored)
