"""Write a volume as a DICOM series (one file per slice) with plausible CT or MR tags.

Sample data for the DICOM paths: the pseudo-subjects are MR-like NIfTI volumes;
this turns one into a classic single-frame CT Image Storage or MR Image Storage
series (PS3.3 A.3, A.4) whose geometry is exactly the volume's affine, so that
``read_series(write_series(v))`` gives ``v`` back (array within the rounding of
the stored integers, affine within the 16-character decimal strings).

CT-like series: the MR intensities of a pseudo-subject are scaled linearly so that
the 99.5th percentile of the brain is 80 HU (background stays 0 HU, the brain lies
in the usual 0..80 HU brain window). This only exercises the CT path
(int16 pixels, RescaleIntercept -1024, Modality CT, CT normalization when training);
the contrast is still the T1 one (white matter brighter than grey matter), not
real CT contrast. Real CT volumes (already in HU) are written as they are.

MR-like series: uint16 pixels with RescaleSlope 0.5, so that readers must apply
the rescale (a reader that ignores it gets twice the intensities).

Usage:
    python -m medseg.data.dicom_series --in subject_000.nii.gz --out series/subject_000_ct --modality CT
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from medseg.dicom.seg import decimal_string
from medseg.imageio import read_volume
from medseg.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM patient coordinates are LPS (PS3.3 C.7.6.2.1.1)

# CT: stored = HU + 1024 in int16 (the common scanner convention, PS3.3 C.8.2.1.1.5 HU rescale).
CT_INTERCEPT = -1024.0
CT_SLOPE = 1.0
CT_BRAIN_WINDOW_HU = 80.0  # the top of the usual brain window; the MR's 99.5th percentile goes there
# MR: a non-trivial slope so that readers must apply it (the MR IOD allows Rescale Slope/Intercept).
MR_SLOPE = 0.5


def ct_like_from_mr(volume: Volume) -> Volume:
    """Scale MR-like intensities (>= 0) so that the brain lies in 0..80 HU (see the module docstring)."""
    array = np.asarray(volume.array, dtype=np.float64)
    positive = array[array > 0]
    top = float(np.percentile(positive, 99.5)) if positive.size else 1.0
    hu = np.clip(array, 0, None) / top * CT_BRAIN_WINDOW_HU
    return Volume(array=hu.astype(np.float32), affine=volume.affine.copy(), header=None, modality="CT")


def _right_handed(array: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reverse k when the affine is left-handed: a reader sorts slices along the normal
    (row cosine x column cosine), so the stored order must follow the normal."""
    if np.linalg.det(affine_lps[:3, :3]) > 0:
        return array, affine_lps
    n = array.shape[2]
    flipped = affine_lps.copy()
    flipped[:3, 3] = affine_lps[:3, 3] + (n - 1) * affine_lps[:3, 2]
    flipped[:3, 2] = -affine_lps[:3, 2]
    return array[:, :, ::-1], flipped


def _stored_pixels(values: np.ndarray, modality: str) -> tuple[np.ndarray, float, float, int]:
    """Stored integers, slope, intercept and PixelRepresentation for real-world ``values``."""
    if modality == "CT":
        stored = np.rint((values - CT_INTERCEPT) / CT_SLOPE)
        info = np.iinfo(np.int16)
        if stored.min() < info.min or stored.max() > info.max:
            raise ValueError(f"CT values {values.min():.1f}..{values.max():.1f} HU do not fit int16 with "
                             f"intercept {CT_INTERCEPT}")
        return stored.astype(np.int16), CT_SLOPE, CT_INTERCEPT, 1
    low = min(0.0, float(values.min()))
    # Keep slope 0.5 unless the range needs a coarser one to fit uint16.
    slope = max(MR_SLOPE, (float(values.max()) - low) / np.iinfo(np.uint16).max)
    stored = np.rint((values - low) / slope)
    return stored.astype(np.uint16), slope, low, 0


def _base_dataset(modality: str, patient_id: str, patient_name: str, study_uid: str, series_uid: str,
                  frame_of_reference_uid: str, series_description: str, series_number: int,
                  study_description: str, now: dt.datetime):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    # Patient module (PS3.3 C.7.1.1)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    # General Study module (C.7.2.1)
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = study_description
    # General Series module (C.7.3.1)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.BodyPartExamined = "BRAIN"
    ds.PatientPosition = "HFS"
    # Frame of Reference module (C.7.4.1): one per series here; the SEG writer copies it.
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment module (C.7.5.1)
    ds.Manufacturer = "MedSeg synthetic"
    ds.ManufacturerModelName = "medseg.data.dicom_series"
    # General Image and Image Pixel modules (C.7.6.1, C.7.6.3)
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    if modality == "CT":
        # CT Image module (C.8.2.1)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.KVP = decimal_string(120)
        ds.RescaleType = "HU"
        ds.WindowCenter = decimal_string(40)
        ds.WindowWidth = decimal_string(80)
    else:
        # MR Image module (C.8.3.1): a plausible 3D gradient-echo T1 acquisition
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = decimal_string(8.1)
        ds.EchoTime = decimal_string(3.7)
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = decimal_string(3)
        ds.ImagedNucleus = "1H"
    return ds


def write_series(volume: Volume | str | os.PathLike, out_dir: str | os.PathLike, modality: str = "CT",
                 patient_id: str = "MEDSEG-0001", patient_name: str = "MedSeg^Sample",
                 study_uid: str | None = None, series_uid: str | None = None,
                 series_description: str | None = None, series_number: int = 1,
                 study_description: str = "MedSeg sample study") -> list[Path]:
    """Write ``volume`` (a Volume or a NIfTI path) as one DICOM file per slice in ``out_dir``.

    The values are written as they are (real-world values: HU for CT); use
    ``ct_like_from_mr`` first for an MR-like volume. ``out_dir`` must not exist or be
    empty; the series appears there complete or not at all (written to a temporary
    folder beside it, then renamed). Returns the files in slice order.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, got {modality!r}")
    if not isinstance(volume, Volume):
        volume = read_volume(volume)
    if volume.array.ndim != 3:
        raise ValueError(f"a 3D volume is required, got shape {volume.array.shape}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; a series folder holds one series only")

    affine_lps = RAS_TO_LPS @ np.asarray(volume.affine, dtype=np.float64)
    array, affine_lps = _right_handed(np.asarray(volume.array), affine_lps)
    col_i, col_j = affine_lps[:3, 0], affine_lps[:3, 1]
    spacing_i, spacing_j = float(np.linalg.norm(col_i)), float(np.linalg.norm(col_j))
    row_cos, col_cos = col_i / spacing_i, col_j / spacing_j
    if abs(float(row_cos @ col_cos)) > 1e-6:
        raise ValueError("the affine's first two axes are not orthogonal; a DICOM slice cannot shear in-plane")
    normal = np.cross(row_cos, col_cos)
    slice_spacing = float(affine_lps[:3, 2] @ normal)

    stored, slope, intercept, pixel_representation = _stored_pixels(np.asarray(array, dtype=np.float64), modality)
    now = dt.datetime.now()
    base = _base_dataset(
        modality, patient_id, patient_name, study_uid or generate_uid(), series_uid or generate_uid(),
        generate_uid(), series_description or f"MedSeg sample {modality}", series_number, study_description, now)
    base.Rows, base.Columns = int(array.shape[1]), int(array.shape[0])  # Rows = j, Columns = i
    base.PixelRepresentation = pixel_representation
    base.RescaleSlope = decimal_string(slope)
    base.RescaleIntercept = decimal_string(intercept)
    # PixelSpacing is (row spacing, column spacing) = (along j, along i) (PS3.3 C.7.6.2.1.1)
    base.PixelSpacing = [decimal_string(spacing_j), decimal_string(spacing_i)]
    base.ImageOrientationPatient = [decimal_string(x) for x in (*row_cos, *col_cos)]
    base.SliceThickness = decimal_string(abs(slice_spacing))
    base.SpacingBetweenSlices = decimal_string(abs(slice_spacing))
    if pixel_representation == 1:
        base.SmallestImagePixelValue = int(stored.min())
        base.LargestImagePixelValue = int(stored.max())
    if modality == "MR":
        base.WindowCenter = decimal_string(float(np.percentile(array, 99)) / 2 or 1)
        base.WindowWidth = decimal_string(float(np.percentile(array, 99)) or 1)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        names = []
        for k in range(array.shape[2]):
            position = affine_lps[:3, 3] + k * affine_lps[:3, 2]
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = base.SOPClassUID
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            name = f"IM{k + 1:05d}.dcm"
            ds = FileDataset(name, copy.deepcopy(base), file_meta=meta, preamble=b"\0" * 128)
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [decimal_string(x) for x in position]
            ds.SliceLocation = decimal_string(float(position @ normal))
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (Rows, Columns) = (j, i)
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(str(staging / name), write_like_original=False)
            names.append(name)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out_dir / n for n in names]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a NIfTI volume as a DICOM series (CT-like or MR-like).")
    parser.add_argument("--in", dest="src", required=True, help="NIfTI volume (e.g. a pseudo-subject)")
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--modality", default="CT", choices=["CT", "MR", "ct", "mr"])
    parser.add_argument("--values", default="auto", choices=["auto", "as-is", "mr-to-ct"],
                        help="CT only: 'mr-to-ct' scales MR-like intensities into the 0..80 HU brain window; 'auto' does so when "
                             "the volume has no negative values (a CT in HU has air near -1000)")
    parser.add_argument("--patient-id", default="MEDSEG-0001")
    parser.add_argument("--patient-name", default="MedSeg^Sample")
    parser.add_argument("--study-uid", default=None, help="StudyInstanceUID (default: a new one)")
    parser.add_argument("--series-description", default=None)
    parser.add_argument("--series-number", type=int, default=1)
    args = parser.parse_args(argv)
    volume = read_volume(args.src)
    modality = args.modality.upper()
    if modality == "CT" and (args.values == "mr-to-ct" or (args.values == "auto" and volume.array.min() >= 0)):
        volume = ct_like_from_mr(volume)
    files = write_series(volume, args.out, modality=modality, patient_id=args.patient_id,
                         patient_name=args.patient_name, study_uid=args.study_uid,
                         series_description=args.series_description, series_number=args.series_number)
    print(f"{args.out}: {len(files)} {modality} slices, {volume.shape[0]}x{volume.shape[1]}, "
          f"spacing {', '.join(f'{s:.3g}' for s in volume.spacing_mm)} mm")


if __name__ == "__main__":
    main()
