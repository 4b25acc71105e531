"""DICOM series in (geometry, rescale, validation) and DICOM SEG out and back, on tiny synthetic volumes."""
import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.data.dicom_series import ct_like_from_mr, main as dicom_series_cli, write_series
from medseg.dicom.seg import read_seg, write_seg
from medseg.dicom.series import read_series
from medseg.errors import MedSegInputError
from medseg.imageio import read_volume, write_like
from medseg.volume import Volume

LABELS = {"grey_matter": 1, "white_matter": 2}


def rotation(deg_x, deg_y, deg_z):
    ax, ay, az = np.deg2rad([deg_x, deg_y, deg_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def volume(shape=(7, 5, 6), spacing=(1.2, 0.9, 2.5), rot=(0, 0, 0), origin=(10.0, -20.0, 30.0), seed=0):
    """An MR-like volume (odd sizes, so a transposed read shows) with a given orientation."""
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    affine[:3, :3] = rotation(*rot) @ np.diag(spacing)
    affine[:3, 3] = origin
    return Volume((rng.random(shape) * 1000).astype(np.float32), affine)


def ecg_waveform(path, series_uid="1.2.3.4"):
    """A 12-lead ECG (PS3.3 A.34.3): a Waveform Sequence and no pixel data."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.SeriesInstanceUID = "ECG", "P1", series_uid
    wave = Dataset()
    wave.NumberOfWaveformChannels, wave.NumberOfWaveformSamples = 12, 100
    wave.SamplingFrequency, wave.WaveformBitsAllocated, wave.WaveformSampleInterpretation = 500, 16, "SS"
    wave.WaveformData = np.zeros(12 * 100, np.int16).tobytes()
    ds.WaveformSequence = [wave]
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(str(path), write_like_original=False)
    return path


@pytest.mark.parametrize("modality", ["CT", "MR"])
@pytest.mark.parametrize("rot", [(0, 0, 0), (20, -35, 10)], ids=["axial", "oblique"])
def test_series_round_trip_gives_array_and_affine_back(tmp_path, modality, rot):
    v = volume(rot=rot)
    if modality == "CT":
        v = ct_like_from_mr(v)
    files = write_series(v, tmp_path / "series", modality=modality)
    assert len(files) == v.shape[2]
    back = read_series(tmp_path / "series")
    assert back.shape == v.shape and back.modality == modality and back.header is None
    np.testing.assert_allclose(back.affine, v.affine, atol=1e-6)
    # Rounding of the stored integers: HU to 1 (CT), half the MR slope of 0.5.
    assert np.abs(back.array - v.array).max() <= (0.5 if modality == "CT" else 0.25) + 1e-4
    assert [int(d.InstanceNumber) for d in back.dicom] == list(range(1, v.shape[2] + 1))
    assert all("PixelData" not in d for d in back.dicom)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    v = volume()
    write_series(v, tmp_path / "mr", modality="MR")
    ds = pydicom.dcmread(sorted((tmp_path / "mr").iterdir())[0])
    assert float(ds.RescaleSlope) == 0.5 and ds.pixel_array.dtype == np.uint16
    back = read_series(tmp_path / "mr")
    np.testing.assert_allclose(back.array[:, :, 0], ds.pixel_array.T * 0.5)

    ct = ct_like_from_mr(v)
    write_series(ct, tmp_path / "ct", modality="CT")
    ds = pydicom.dcmread(sorted((tmp_path / "ct").iterdir())[0])
    assert float(ds.RescaleIntercept) == -1024 and ds.pixel_array.dtype == np.int16
    assert 0 <= ct.array.min() and np.percentile(ct.array[ct.array > 0], 99.5) == pytest.approx(80.0)  # brain window
    np.testing.assert_allclose(read_series(tmp_path / "ct").array[:, :, 0], ds.pixel_array.T - 1024.0)


def test_slices_are_sorted_by_position_not_by_file_name(tmp_path):
    v = volume(rot=(0, 30, 0))
    files = write_series(v, tmp_path / "s", modality="MR")
    # Rename so that the name order is the reverse of the slice order.
    for i, f in enumerate(files):
        f.rename(f.with_name(f"x{len(files) - i:03d}.dcm"))
    back = read_series(tmp_path / "s")
    np.testing.assert_allclose(back.affine, v.affine, atol=1e-6)
    assert np.abs(back.array - v.array).max() <= 0.25 + 1e-4


def test_slice_spacing_comes_from_positions_not_slice_thickness(tmp_path):
    files = write_series(volume(spacing=(1, 1, 2.5)), tmp_path / "s", modality="MR")
    for f in files:  # overlapping slab acquisitions: thickness 5 mm, spacing 2.5 mm
        ds = pydicom.dcmread(f)
        ds.SliceThickness = 5.0
        del ds.SpacingBetweenSlices
        ds.save_as(f)
    assert read_series(tmp_path / "s").spacing_mm == pytest.approx((1, 1, 2.5))


def test_left_handed_volume_reads_back_with_k_reversed(tmp_path):
    v = volume()
    v.affine[:3, 0] *= -1  # LAS-like: det < 0
    write_series(v, tmp_path / "s", modality="MR")
    back = read_series(tmp_path / "s")
    assert np.linalg.det(back.affine[:3, :3]) > 0
    # The same image in space: voxel (i, j, k) of the input is voxel (i, j, n-1-k) of the series.
    assert np.abs(back.array - v.array[:, :, ::-1]).max() <= 0.25 + 1e-4
    n = v.shape[2]
    for ijk in ((0, 0, 0), (6, 4, 5), (3, 2, 1)):
        mirrored = (ijk[0], ijk[1], n - 1 - ijk[2])
        np.testing.assert_allclose(v.affine @ [*ijk, 1], back.affine @ [*mirrored, 1], atol=1e-6)


def test_read_volume_dispatches_folders_and_dicom_files_and_write_like_writes_nifti(tmp_path):
    v = volume(rot=(5, 0, 15))
    files = write_series(v, tmp_path / "s", modality="MR")
    back = read_volume(tmp_path / "s")
    assert back.modality == "MR"
    with pytest.raises(MedSegInputError, match="single slice"):
        read_volume(files[0])
    out = tmp_path / "label.nii.gz"
    write_like(out, (back.array > 500).astype(np.uint8), back)
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, back.affine, atol=1e-4)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(img.dataobj), back.array > 500)


def test_non_image_objects_are_refused(tmp_path):
    folder = tmp_path / "ecg"
    folder.mkdir()
    ecg_waveform(folder / "ecg.dcm")
    with pytest.raises(MedSegInputError, match="12-lead ECG Waveform Storage"):
        read_series(folder)
    # Also among the slices of a real series.
    write_series(volume(), tmp_path / "s", modality="MR")
    ecg_waveform(tmp_path / "s" / "zz_ecg.dcm")
    with pytest.raises(MedSegInputError, match="zz_ecg.dcm is not an image"):
        read_series(tmp_path / "s")


def test_a_missing_slice_is_refused_by_name(tmp_path):
    files = write_series(volume(), tmp_path / "s", modality="CT")
    files[2].unlink()
    with pytest.raises(MedSegInputError, match=r"missing 1 slice between IM00002.dcm \(InstanceNumber 2\).*IM00004"):
        read_series(tmp_path / "s")


def test_a_duplicated_slice_is_refused(tmp_path):
    files = write_series(volume(), tmp_path / "s", modality="MR")
    shutil.copyfile(files[3], files[3].with_name("copy.dcm"))
    with pytest.raises(MedSegInputError, match="duplicated slice"):
        read_series(tmp_path / "s")


def test_mixed_orientations_are_refused(tmp_path):
    files = write_series(volume(), tmp_path / "s", modality="MR")
    ds = pydicom.dcmread(files[1])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # a sagittal slice in an axial series
    ds.save_as(files[1])
    with pytest.raises(MedSegInputError, match="mixes orientations"):
        read_series(tmp_path / "s")


def test_non_dicom_files_other_series_and_single_slices_are_refused(tmp_path):
    files = write_series(volume(), tmp_path / "s", modality="MR")
    (tmp_path / "s" / "notes.txt").write_text("not an image")
    with pytest.raises(MedSegInputError, match="notes.txt is not a DICOM file"):
        read_series(tmp_path / "s")
    (tmp_path / "s" / "notes.txt").unlink()
    ds = pydicom.dcmread(files[0])
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(files[0])
    with pytest.raises(MedSegInputError, match="mixes 2 series"):
        read_series(tmp_path / "s")
    with pytest.raises(MedSegInputError, match="single slice"):
        read_series([files[1]])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedSegInputError, match="no DICOM files"):
        read_series(tmp_path / "empty")


@pytest.mark.parametrize("rot", [(0, 0, 0), (20, -35, 10)], ids=["axial", "oblique"])
def test_seg_round_trip_is_voxel_for_voxel(tmp_path, rot):
    write_series(volume(shape=(9, 7, 5), rot=rot), tmp_path / "s", modality="MR")
    source = read_series(tmp_path / "s")
    rng = np.random.default_rng(1)
    label = rng.integers(0, 3, source.shape).astype(np.uint8)
    label[:, :, 3] = 0  # a slice without any segment
    path = write_seg(label, source, LABELS, tmp_path / "seg" / "label.dcm")
    assert not [p for p in path.parent.iterdir() if p.name != "label.dcm"]  # no temporary left behind
    np.testing.assert_array_equal(read_seg(path, source, LABELS), label)

    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.dicom[0].SeriesInstanceUID
    assert len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == source.shape[2]
    assert ds.FrameOfReferenceUID == source.dicom[0].FrameOfReferenceUID
    assert ds.StudyInstanceUID == source.dicom[0].StudyInstanceUID
    segments = {s.SegmentLabel: s for s in ds.SegmentSequence}
    assert list(segments) == ["grey_matter", "white_matter"]
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" and len(s.RecommendedDisplayCIELabValue) == 3
               for s in segments.values())
    assert segments["grey_matter"].RecommendedDisplayCIELabValue != segments["white_matter"].RecommendedDisplayCIELabValue


def test_seg_maps_segments_by_name_and_keeps_declared_empty_segments(tmp_path):
    write_series(volume(), tmp_path / "s", modality="CT")
    source = read_series(tmp_path / "s")
    label = np.zeros(source.shape, np.uint8)
    label[2:5, 1:3, 1:4] = 7
    path = write_seg(label, source, {"liver": 7, "tumour": 9}, tmp_path / "a.dcm", algorithm_type="MANUAL")
    ds = pydicom.dcmread(path)
    assert [s.SegmentNumber for s in ds.SegmentSequence] == [1, 2]  # consecutive, as PS3.3 C.8.20.2 asks
    assert "SegmentAlgorithmName" not in ds.SegmentSequence[0]
    # Another app numbering the same names differently gets its own indices.
    np.testing.assert_array_equal(read_seg(path, source, {"tumour": 1, "liver": 2}), (label == 7) * 2)
    with pytest.raises(MedSegInputError, match="'tumour' is not one of this app's labels"):
        read_seg(path, source, {"liver": 1})
    # An empty label map is still a valid SEG (one empty frame) and reads back empty.
    empty = write_seg(np.zeros(source.shape, np.uint8), source, LABELS, tmp_path / "empty.dcm")
    assert not read_seg(empty, source, LABELS).any()


def test_seg_refuses_other_grids_and_non_dicom_sources(tmp_path):
    write_series(volume(), tmp_path / "s", modality="MR")
    source = read_series(tmp_path / "s")
    label = np.zeros(source.shape, np.uint8)
    label[1, 1, 1] = 1
    path = write_seg(label, source, LABELS, tmp_path / "seg.dcm")
    shifted = Volume(source.array, source.affine.copy())
    shifted.affine[:3, 3] += 3.0
    with pytest.raises(MedSegInputError, match="not on this image's grid"):
        read_seg(path, shifted, LABELS)
    with pytest.raises(MedSegInputError, match="needs a DICOM source series"):
        write_seg(label, Volume(source.array, source.affine), LABELS, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()
    with pytest.raises(MedSegInputError, match="not a DICOM SEG"):
        read_seg(next((tmp_path / "s").iterdir()), source, LABELS)


def test_pydicom_seg_reads_our_seg(tmp_path):
    """An independent reader (pydicom-seg's) decodes the same segments from the file."""
    import pydicom_seg

    write_series(volume(shape=(9, 7, 5)), tmp_path / "s", modality="MR")
    source = read_series(tmp_path / "s")
    label = np.zeros(source.shape, np.uint8)
    label[1:8, 2:6, :] = 1
    label[3:5, 3:5, 1:4] = 2
    path = write_seg(label, source, LABELS, tmp_path / "seg.dcm")
    result = pydicom_seg.SegmentReader().read(pydicom.dcmread(path))
    assert result.available_segments == {1, 2}
    # pydicom-seg's arrays are (k, j, i); ours is (i, j, k).
    np.testing.assert_array_equal(result.segment_data(2).transpose(2, 1, 0), label == 2)


def test_cli_writes_a_ct_like_series_from_a_nifti(tmp_path):
    v = volume()
    nii = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(v.array, v.affine), str(nii))
    dicom_series_cli(["--in", str(nii), "--out", str(tmp_path / "ct"), "--modality", "CT"])
    back = read_volume(tmp_path / "ct")
    assert back.modality == "CT" and 0 <= back.array.min() and back.array.max() <= 82
    np.testing.assert_allclose(back.affine, v.affine, atol=1e-5)
    with pytest.raises(FileExistsError):
        write_series(v, tmp_path / "ct", modality="CT")
    assert sorted(os.listdir(tmp_path)) == ["ct", "v.nii.gz"]  # no staging folder left behind
