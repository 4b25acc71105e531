"""NRRD volumes and Slicer .seg.nrrd segmentations: real files from the slicerio wheel, and hostile ones."""
import gzip
from importlib import resources

import nrrd
import numpy as np
import pytest

from medseg.errors import MedSegInputError
from medseg.imageio import read_volume
from medseg.nrrd_files import read_segmentation_as_label

DATA = resources.files("slicerio") / "data"
CHEST_LABELS = {"ribs": 1, "cervical_vertebral_column": 2, "thoracic_vertebral_column": 3,
                "lumbar_vertebral_column": 4, "right_lung": 5, "left_lung": 6, "tissue": 7}


def test_chest_ct_reads_in_hounsfield_units_on_a_ras_grid():
    ct = read_volume(str(DATA / "CTChest4.nrrd"))
    data, header = nrrd.read(str(DATA / "CTChest4.nrrd"))
    assert ct.shape == (128, 128, 34) and np.array_equal(ct.array, data.astype(np.float32))
    assert np.allclose(ct.spacing_mm, (3.0469, 3.0469, 10.0), atol=1e-3)
    # LPS (NRRD space) -> RAS: x and y flip sign, origin too.
    assert np.allclose(ct.affine[:3, 3], [-193.096, -216.396, -340.25], atol=1e-2)
    assert ct.affine[0, 0] > 0 and ct.affine[1, 1] > 0
    assert ct.array.min() < -1000 < 1000 < ct.array.max()


def test_segments_take_the_app_indices_by_name_in_any_order():
    ct = read_volume(str(DATA / "CTChest4.nrrd"))
    own = read_volume(str(DATA / "Segmentation.seg.nrrd")).array
    reversed_labels = {name: 8 - index for name, index in CHEST_LABELS.items()}
    label = read_segmentation_as_label(str(DATA / "Segmentation.seg.nrrd"), reversed_labels, ct, "seg")
    assert label.array.dtype == np.uint8 and label.shape == ct.shape
    for value in range(1, 8):
        assert np.array_equal(label.array == 8 - value, own == value)


def test_unknown_segment_names_are_refused_with_the_app_labels():
    ct = read_volume(str(DATA / "CTChest4.nrrd"))
    with pytest.raises(MedSegInputError, match="not labels of this app.*right_lung"):
        read_segmentation_as_label(str(DATA / "Segmentation.seg.nrrd"), {"right_lung": 1}, ct, "seg")


def _segmentation(path, voxels, origin_lps, spacing=(2.0, 2.0, 3.0), names=("liver",)):
    header = {"space": "left-posterior-superior", "space directions": np.diag(spacing),
              "space origin": np.asarray(origin_lps, float), "kinds": ["domain"] * 3, "encoding": "gzip"}
    for i, name in enumerate(names):
        header.update({f"Segment{i}_Name": name, f"Segment{i}_LabelValue": str(i + 1), f"Segment{i}_Layer": "0"})
    nrrd.write(str(path), voxels, header)


def test_a_segmentation_cropped_to_its_extent_is_put_in_place(tmp_path):
    image_header = {"space": "left-posterior-superior", "space directions": np.diag([2.0, 2.0, 3.0]),
                    "space origin": np.zeros(3), "kinds": ["domain"] * 3}
    nrrd.write(str(tmp_path / "image.nrrd"), np.random.default_rng(0).normal(size=(20, 22, 10)).astype(np.float32),
               image_header)
    image = read_volume(str(tmp_path / "image.nrrd"))
    part = np.ones((4, 5, 3), np.uint8)
    # The crop starts at voxel (3, 6, 2): LPS origin moves by +3*2 mm, +6*2 mm, +2*3 mm.
    _segmentation(tmp_path / "part.seg.nrrd", part, [6.0, 12.0, 6.0])
    label = read_segmentation_as_label(str(tmp_path / "part.seg.nrrd"), {"liver": 1}, image, "seg")
    assert label.array.sum() == part.sum() and label.array[3:7, 6:11, 2:5].all()
    _segmentation(tmp_path / "off.seg.nrrd", part, [5.0, 12.0, 6.0])  # half a voxel off the grid
    with pytest.raises(MedSegInputError, match="not on its image's grid"):
        read_segmentation_as_label(str(tmp_path / "off.seg.nrrd"), {"liver": 1}, image, "seg")


def test_more_data_than_the_header_declares_is_refused_without_inflating_it(tmp_path):
    header = (b"NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\nsizes: 8 8 8\n"
              b"space directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nencoding: gzip\n"
              b"space origin: (0,0,0)\n\n")
    bomb = tmp_path / "bomb.nrrd"
    bomb.write_bytes(header + gzip.compress(bytes(50_000_000)))  # 50 MB of zeros for a 512-byte volume
    with pytest.raises(MedSegInputError, match="more data than its header declares"):
        read_volume(str(bomb))
    detached = tmp_path / "detached.nrrd"
    detached.write_bytes(header.replace(b"encoding: gzip\n", b"encoding: raw\ndata file: /etc/passwd\n"))
    with pytest.raises(MedSegInputError, match="detached"):
        read_volume(str(detached))
    short = tmp_path / "short.nrrd"
    short.write_bytes(header.replace(b"encoding: gzip", b"encoding: raw") + bytes(100))
    with pytest.raises(MedSegInputError, match="declares 512"):
        read_volume(str(short))
