import numpy as np
import pytest

from medseg.errors import MedSegInputError
from medseg.labels import check_label_against_image, remap_label_values
from medseg.volume import Volume

LABELS = {"grey_matter": 1, "white_matter": 2}


def vol(array, spacing=1.0):
    affine = np.diag([spacing, spacing, spacing, 1.0])
    return Volume(np.asarray(array, dtype=np.float32), affine)


def test_accepts_label_on_grid_with_declared_values():
    check_label_against_image(vol(np.array([0, 1, 2]).reshape(1, 1, 3)), vol(np.zeros((1, 1, 3))), LABELS)


def test_rejects_other_size_other_geometry_and_undeclared_values():
    image = vol(np.zeros((2, 2, 2)))
    with pytest.raises(MedSegInputError, match="size"):
        check_label_against_image(vol(np.zeros((2, 2, 3))), image, LABELS)
    with pytest.raises(MedSegInputError, match="geometry"):
        check_label_against_image(vol(np.zeros((2, 2, 2)), spacing=2.0), image, LABELS)
    with pytest.raises(MedSegInputError, match=r"\[3\]"):
        check_label_against_image(vol(np.full((2, 2, 2), 3)), image, LABELS)
    with pytest.raises(MedSegInputError, match="whole numbers"):
        check_label_against_image(vol(np.full((2, 2, 2), 0.5)), image, LABELS)


def test_remap_by_name_and_refuse_unknown_names_or_unnamed_values():
    client = np.array([0, 5, 9])
    out = remap_label_values(client, [{"name": "white_matter", "idx": 5}, {"name": "grey_matter", "idx": 9}], LABELS)
    assert out.tolist() == [0, 2, 1]
    with pytest.raises(MedSegInputError, match="tumour"):
        remap_label_values(client, {"tumour": 5}, LABELS)
    with pytest.raises(MedSegInputError, match=r"\[9\]"):
        remap_label_values(client, {"white_matter": 5}, LABELS)
