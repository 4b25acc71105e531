"""Read one DICOM series (one file per slice) into a ``Volume`` that behaves like a NIfTI read by nibabel.

Geometry comes from the Image Plane Module (PS3.3 C.7.6.2), never from
SliceThickness: each slice's position is ImagePositionPatient (0020,0032), the
in-plane axes are the two direction cosines of ImageOrientationPatient
(0020,0037) and PixelSpacing (0028,0030) is (row spacing, column spacing), i.e.
(spacing along the column direction, spacing along the row direction). Slices
are sorted along the slice normal (row cosine x column cosine), and the slice
spacing is the distance between consecutive positions: SliceThickness is the
thickness of the excited slab, which differs from the spacing for overlapping or
gapped acquisitions.

DICOM patient coordinates are LPS (PS3.3 C.7.6.2.1.1: +x to the patient's left,
+y posterior); NIfTI and the rest of MedSeg use RAS+, so the first two rows of the
affine are negated. Voxel (i, j, k) is (column, row, slice), as nibabel gives
NIfTI volumes, so every pipeline stage sees the same kind of array for both.

Sorting along the normal makes every series right-handed (det > 0), as ITK's
series reader does; a NIfTI volume with a left-handed affine written as a series
reads back with its k axis reversed (the same image in space).

Everything a series can get wrong is refused with a MedSegInputError naming the
file: non-DICOM files, non-image objects (waveforms, structured reports,
segmentations, ...), multi-frame objects, several series, mixed orientations or
matrix sizes, duplicated positions and gaps (a missing slice).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from medseg.errors import MedSegInputError
from medseg.volume import LIMITS, GridLimits, Volume

# Single-frame image storage SOP classes whose IODs carry the Image Plane Module
# (PS3.4 B.5; PS3.3 A.3 CT, A.4 MR, A.21 PET). Only these make a volume slice by slice.
SINGLE_FRAME_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
}
# Images that hold a whole volume in one object (per-frame functional groups, PS3.3 C.7.6.16):
# a different reader; refused with a message that says so rather than misread.
MULTI_FRAME_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# IOP and PixelSpacing are decimal strings (VR DS, at most 16 characters, PS3.5 6.2):
# equal values written by different slices may differ in the last digits.
ORIENTATION_TOL = 1e-3
PIXEL_SPACING_TOL_MM = 1e-3
# Two slices closer than this along the normal are the same slice.
DUPLICATE_TOL_MM = 1e-2
# A step may differ this much (relative) from the series' spacing before it counts as non-uniform.
SPACING_RTOL = 0.02
SPACING_ATOL_MM = 1e-2
# Files in a series folder that are not instances: hidden files, and a PS3.10 media directory.
SKIPPED_NAMES = ("DICOMDIR",)


def series_files(path: str | os.PathLike) -> list[Path]:
    """The files of a series folder (hidden files and DICOMDIR skipped), sorted by name."""
    folder = Path(path)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.upper() not in SKIPPED_NAMES)


def _read_dataset(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path))
    except InvalidDicomError as e:
        raise MedSegInputError(f"{path.name} is not a DICOM file (no 'DICM' after the 128-byte preamble, "
                               f"PS3.10 7.1); a series folder must hold only the series' DICOM files") from e
    except Exception as e:  # truncated or corrupt files raise many types
        raise MedSegInputError(f"cannot read {path.name} as DICOM: {e}") from e


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return name if name and name != uid else f"SOP class {uid or 'missing'}"


def _check_is_image_slice(ds, name: str) -> None:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in MULTI_FRAME_IMAGE_CLASSES:
        raise MedSegInputError(
            f"{name} is a multi-frame {MULTI_FRAME_IMAGE_CLASSES[sop_class]} object; MedSeg reads classic "
            "single-frame series (one file per slice): export the series as classic CT/MR images")
    if sop_class not in SINGLE_FRAME_IMAGE_CLASSES or "PixelData" not in ds:
        what = _sop_class_name(sop_class)
        pixels = "" if "PixelData" in ds else ", without pixel data"
        raise MedSegInputError(
            f"{name} is not an image slice ({what}{pixels}); MedSeg reads CT, MR and PET image series "
            "(waveforms, reports, segmentations and other non-image objects are refused)")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise MedSegInputError(f"{name} holds {ds.NumberOfFrames} frames; a series must have one slice per file")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise MedSegInputError(f"{name} is a colour image (SamplesPerPixel {ds.SamplesPerPixel}); "
                               "MedSeg segments greyscale CT/MR images")
    for keyword, tag in (("ImagePositionPatient", "(0020,0032)"), ("ImageOrientationPatient", "(0020,0037)"),
                         ("PixelSpacing", "(0028,0030)"), ("Rows", "(0028,0010)"), ("Columns", "(0028,0011)")):
        if ds.get(keyword) in (None, ""):
            raise MedSegInputError(f"{name} lacks {keyword} {tag}; without it the slice cannot be placed in space")


def _orientation(ds, name: str) -> tuple[np.ndarray, np.ndarray]:
    iop = np.asarray([float(x) for x in ds.ImageOrientationPatient], dtype=np.float64)
    if iop.size != 6:
        raise MedSegInputError(f"{name}: ImageOrientationPatient must hold 6 values, got {iop.size}")
    row_cos, col_cos = iop[:3], iop[3:]
    if (abs(np.linalg.norm(row_cos) - 1) > ORIENTATION_TOL or abs(np.linalg.norm(col_cos) - 1) > ORIENTATION_TOL
            or abs(float(row_cos @ col_cos)) > ORIENTATION_TOL):
        raise MedSegInputError(f"{name}: ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")
    return row_cos, col_cos


def _label(ds, path: Path) -> str:
    number = ds.get("InstanceNumber")
    return f"{path.name} (InstanceNumber {number})" if number not in (None, "") else path.name


def read_series(path: str | os.PathLike | Iterable[str | os.PathLike], dtype=np.float32,
                what: str | None = None, limits: GridLimits = LIMITS) -> Volume:
    """Read one series (a folder of its files, or a list of file paths) into a Volume.

    The array is (column i, row j, slice k) with RescaleSlope/RescaleIntercept
    (0028,1053)/(0028,1052) applied per slice (PS3.3 C.11.1.1.2: output units =
    slope * stored value + intercept, e.g. Hounsfield units for CT). ``dtype`` is
    the array's type; ``what`` names the series in messages.
    """
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        files = series_files(p) if p.is_dir() else [p]
        what = what or f"series '{p.name}'"
    else:
        files = [Path(f) for f in path]
        what = what or "the series"
    if not files:
        raise MedSegInputError(f"{what} holds no DICOM files")

    datasets = [_read_dataset(f) for f in files]
    for ds, f in zip(datasets, files):
        _check_is_image_slice(ds, f.name)
    if len(datasets) < 2:
        raise MedSegInputError(f"{what} holds a single slice; a volume needs the whole series (all its files, "
                               "one per slice: a folder, or a .zip of them when uploading)")

    first, first_file = datasets[0], files[0]
    series_uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(series_uids) != 1:
        raise MedSegInputError(f"{what} mixes {len(series_uids)} series (SeriesInstanceUID (0020,000E) "
                               f"{series_uids}); put each series in its own folder")
    modalities = sorted({str(ds.get("Modality", "")) for ds in datasets})
    if len(modalities) != 1:
        raise MedSegInputError(f"{what} mixes modalities {modalities}")

    row_cos, col_cos = _orientation(first, first_file.name)
    rows, cols = int(first.Rows), int(first.Columns)
    pixel_spacing = np.asarray([float(x) for x in first.PixelSpacing], dtype=np.float64)
    if pixel_spacing.size != 2 or np.any(pixel_spacing <= 0):
        raise MedSegInputError(f"{first_file.name}: PixelSpacing {pixel_spacing.tolist()} is not two positive values")
    for ds, f in zip(datasets[1:], files[1:]):
        r, c = _orientation(ds, f.name)
        if not (np.allclose(r, row_cos, atol=ORIENTATION_TOL) and np.allclose(c, col_cos, atol=ORIENTATION_TOL)):
            raise MedSegInputError(
                f"{what} mixes orientations: {_label(ds, f)} has ImageOrientationPatient "
                f"{np.round(np.r_[r, c], 4).tolist()}, {_label(first, first_file)} has "
                f"{np.round(np.r_[row_cos, col_cos], 4).tolist()}; a volume needs parallel slices (split the series)")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise MedSegInputError(f"{what} mixes matrix sizes: {_label(ds, f)} is {ds.Rows}x{ds.Columns}, "
                                   f"{_label(first, first_file)} is {rows}x{cols}")
        ps = np.asarray([float(x) for x in ds.PixelSpacing], dtype=np.float64)
        if ps.shape != pixel_spacing.shape or not np.allclose(ps, pixel_spacing, atol=PIXEL_SPACING_TOL_MM):
            raise MedSegInputError(f"{what} mixes pixel spacings: {_label(ds, f)} has {ps.tolist()} mm, "
                                   f"{_label(first, first_file)} has {pixel_spacing.tolist()} mm")

    # Sort along the slice normal; the order of files and InstanceNumber are not geometry.
    normal = np.cross(row_cos, col_cos)
    positions = np.asarray([[float(x) for x in ds.ImagePositionPatient] for ds in datasets], dtype=np.float64)
    if positions.shape[1] != 3:
        raise MedSegInputError(f"{what}: ImagePositionPatient must hold 3 values")
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    datasets = [datasets[i] for i in order]
    files = [files[i] for i in order]
    positions, distance = positions[order], distance[order]
    _check_slice_positions(distance, positions, datasets, files, what)

    # Column k of the affine is the mean step between slices: along the normal for an ordinary
    # series, sheared for a tilted gantry (PS3.3 C.7.6.2.1.1 allows positions off the normal).
    n = len(datasets)
    step = (positions[-1] - positions[0]) / (n - 1)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * pixel_spacing[1]  # i = column index, moves along the row direction
    affine_lps[:3, 1] = col_cos * pixel_spacing[0]  # j = row index, moves along the column direction
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = positions[0]
    limits.check((cols, rows, n), affine_lps, what)  # before the pixels are decoded

    array = np.empty((cols, rows, n), dtype=dtype)
    for k, (ds, f) in enumerate(zip(datasets, files)):
        try:
            stored = ds.pixel_array
        except Exception as e:  # missing codec for a compressed transfer syntax, truncated pixel data
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
            raise MedSegInputError(f"cannot decode the pixels of {_label(ds, f)} (transfer syntax {ts}): {e}; "
                                   "send the series uncompressed (Explicit VR Little Endian)") from e
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        array[:, :, k] = (stored.astype(np.float64) * slope + intercept).T
        # Keep the headers (the SEG writer references them) but not a second copy of the pixels.
        del ds.PixelData
        if hasattr(ds, "_pixel_array"):
            ds._pixel_array = None
    if not np.all(np.isfinite(array)):
        raise MedSegInputError(f"{what} contains NaN or infinite values")
    modality = modalities[0] or None
    return Volume(array=array, affine=LPS_TO_RAS @ affine_lps, header=None, modality=modality, dicom=datasets)


def _check_slice_positions(distance: np.ndarray, positions: np.ndarray, datasets, files, what: str) -> None:
    """Refuse duplicated positions, gaps (missing slices) and non-uniform or misaligned slices."""
    steps = np.diff(distance)
    dup = np.flatnonzero(steps < DUPLICATE_TOL_MM)
    if dup.size:
        i = int(dup[0])
        raise MedSegInputError(
            f"{what} has a duplicated slice: {_label(datasets[i], files[i])} and "
            f"{_label(datasets[i + 1], files[i + 1])} are both at {distance[i]:.3f} mm along the slice normal; "
            "remove the duplicate")
    spacing = float(np.median(steps))
    tol = max(SPACING_ATOL_MM, SPACING_RTOL * spacing)
    for i, s in enumerate(steps):
        if abs(s - spacing) <= tol:
            continue
        between = (f"between {_label(datasets[i], files[i])} at {distance[i]:.3f} mm and "
                   f"{_label(datasets[i + 1], files[i + 1])} at {distance[i + 1]:.3f} mm")
        missing = round(s / spacing) - 1
        if missing >= 1 and abs(s - (missing + 1) * spacing) <= tol * (missing + 1):
            raise MedSegInputError(
                f"{what} is missing {missing} slice{'s' if missing > 1 else ''} {between} (slice spacing "
                f"{spacing:.3f} mm, gap {s:.3f} mm); send the complete series")
        raise MedSegInputError(f"{what} has non-uniform slice spacing: {s:.3f} mm {between}, "
                               f"{spacing:.3f} mm elsewhere; a volume needs evenly spaced slices")
    # Positions must lie on one line (in-plane offsets constant): slices of two acquisitions
    # that happen to interleave along the normal would pass the checks above.
    n = len(positions)
    step = (positions[-1] - positions[0]) / (n - 1)
    expected = positions[0] + np.arange(n)[:, None] * step
    off = np.linalg.norm(positions - expected, axis=1)
    worst = int(np.argmax(off))
    if off[worst] > tol:
        raise MedSegInputError(
            f"{what}: {_label(datasets[worst], files[worst])} is {off[worst]:.3f} mm off the line through the "
            "other slice positions; the slices do not form one volume")
