"""Label maps <-> DICOM Segmentation objects (SEG, PS3.3 A.51), offline.

Writing uses pydicom-seg's ``SegmentationDataset`` (installed with monailabel and
working with pydicom 2.4 / numpy < 2) for the IOD skeleton, the instance
references and the 1-bit packing, but lays out the frames itself: one frame per
(segment, slice that holds the segment), each placed with the source slice's own
ImagePositionPatient and referencing that slice's SOP instance, so a reader can
map frames back onto the source grid exactly (no resampling, no SimpleITK round
trip, which would lose a gantry tilt).

Segment numbers must start at 1 and increase by 1 (PS3.3 C.8.20.2), while the
app's label indices need not be consecutive; segments are therefore numbered in
the order of the app's indices and carry the label's name as SegmentLabel, and
``read_seg`` maps them back by name. MONAI Label's own ``nifti_to_dicom_seg``
needs dcmqi's ``itkimage2segimage`` binary (downloaded at server start), which this
module replaces.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from medseg.errors import MedSegInputError
from medseg.label_map import norm_label_name
from medseg.volume import Volume

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# A generic property for every segment: category and type "Tissue" (SNOMED CT 85756007),
# what 3D Slicer's default terminology uses for a segment without a specific code.
TISSUE_CODE = ("85756007", "SCT", "Tissue")
# Recommended display colours (RGB), in label-index order; stored as CIELab (PS3.3 C.10.7.1.1).
PALETTE_RGB = [
    (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
    (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0),
]
# How far (in voxels) a frame's position may be from a source voxel centre: DS strings round.
POSITION_TOL_VOX = 0.05


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return [item]


def _segment_item(number: int, name: str, colour_rgb, algorithm_type: str, algorithm_name: str):
    from pydicom.dataset import Dataset
    from pydicom_seg.template import rgb_to_cielab

    item = Dataset()
    item.SegmentNumber = number
    item.SegmentLabel = name[:64]  # LO, 64 characters
    item.SegmentAlgorithmType = algorithm_type
    if algorithm_type != "MANUAL":
        item.SegmentAlgorithmName = algorithm_name  # type 1C: required unless MANUAL
    item.SegmentedPropertyCategoryCodeSequence = _code(*TISSUE_CODE)
    item.SegmentedPropertyTypeCodeSequence = _code(*TISSUE_CODE)
    item.RecommendedDisplayCIELabValue = rgb_to_cielab(list(colour_rgb))
    return item


def seg_dataset(label: np.ndarray, source: Volume, labels: dict[str, int],
                series_description: str = "MedSeg segmentation", algorithm_type: str = "AUTOMATIC",
                algorithm_name: str = "MedSeg", series_number: int = 300, series_uid: str | None = None):
    """The SEG dataset for ``label`` (voxel order of ``source.array``) over the DICOM series ``source``."""
    import pydicom
    from pydicom_seg.dicom_utils import DimensionOrganizationSequence
    from pydicom_seg.segmentation_dataset import SegmentationDataset, SegmentationType

    if not source.dicom or len(source.dicom) != source.shape[2]:
        raise MedSegInputError("a DICOM SEG needs a DICOM source series; this image was not read from DICOM")
    label = np.asarray(label)
    if label.shape != source.shape:
        raise ValueError(f"label shape {label.shape} differs from the source series {source.shape}")
    algorithm_type = algorithm_type.upper()
    if algorithm_type not in ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"):
        raise ValueError(f"SegmentAlgorithmType must be AUTOMATIC, SEMIAUTOMATIC or MANUAL, got {algorithm_type}")
    declared = sorted(labels.items(), key=lambda kv: kv[1])
    stray = sorted(set(int(v) for v in np.unique(label)) - {0} - {int(i) for _, i in declared})
    if stray:
        raise ValueError(f"label values {stray} are not declared labels {dict(declared)}")

    first = source.dicom[0]
    cols, rows, n_slices = source.shape
    seg = SegmentationDataset(rows=rows, columns=cols, segmentation_type=SegmentationType.BINARY,
                              reference_dicom=first)
    if series_uid:
        seg.SeriesInstanceUID = series_uid
    seg.SeriesDescription = series_description
    seg.SeriesNumber = series_number
    seg.InstanceNumber = 1
    seg.ContentLabel = "MEDSEG"  # CS: upper case, 16 characters
    seg.ContentDescription = series_description[:64]
    seg.ContentCreatorName = algorithm_name if algorithm_type != "MANUAL" else ""
    seg.Manufacturer = "MedSeg"
    seg.ManufacturerModelName = "medseg.dicom.seg"
    seg.SoftwareVersions = _version()
    seg.SegmentsOverlap = "NO"  # a label map: one segment per voxel at most

    dims = DimensionOrganizationSequence()
    dims.add_dimension("ReferencedSegmentNumber", "SegmentIdentificationSequence")
    dims.add_dimension("ImagePositionPatient", "PlanePositionSequence")
    seg.add_dimension_organization(dims)

    # Shared geometry: the source's in-plane grid (PS3.3 C.7.6.16.2.1 and .2.4).
    normal = np.cross(*np.asarray([float(x) for x in first.ImageOrientationPatient]).reshape(2, 3))
    spacing_k = float(abs((RAS_TO_LPS @ source.affine)[:3, 2] @ normal))
    shared = pydicom.Dataset()
    measures = pydicom.Dataset()
    measures.PixelSpacing = list(first.PixelSpacing)
    measures.SliceThickness = first.get("SliceThickness") or decimal_string(spacing_k)
    measures.SpacingBetweenSlices = decimal_string(spacing_k)
    shared.PixelMeasuresSequence = [measures]
    orientation = pydicom.Dataset()
    orientation.ImageOrientationPatient = list(first.ImageOrientationPatient)
    shared.PlaneOrientationSequence = [orientation]
    seg.SharedFunctionalGroupsSequence = [shared]

    for number, (name, _) in enumerate(declared, start=1):
        seg.SegmentSequence.append(
            _segment_item(number, name, PALETTE_RGB[(number - 1) % len(PALETTE_RGB)], algorithm_type, algorithm_name))
    for ds in source.dicom:  # reference the whole source series, not only the slices with frames
        seg.add_instance_reference(ds)

    for number, (_, index) in enumerate(declared, start=1):
        slices = [k for k in range(n_slices) if np.any(label[:, :, k] == index)]
        # A declared but empty segment still gets one (empty) frame: some readers (dcmqi)
        # expect every segment of SegmentSequence to have frames.
        for k in slices or [0]:
            frame = np.ascontiguousarray((label[:, :, k] == index).T).astype(np.uint8)  # (Rows, Columns) = (j, i)
            item = seg.add_frame(data=frame, referenced_segment=number,
                                 referenced_images=[source.dicom[k]], update_pixel_data=False)
            content = pydicom.Dataset()
            content.DimensionIndexValues = [number, k + 1]
            item.FrameContentSequence = [content]
            position = pydicom.Dataset()
            position.ImagePositionPatient = list(source.dicom[k].ImagePositionPatient)
            item.PlanePositionSequence = [position]
    seg.update_pixel_data()
    return seg


def write_seg(label: np.ndarray, source: Volume, labels: dict[str, int], path: str | os.PathLike,
              series_description: str = "MedSeg segmentation", algorithm_type: str = "AUTOMATIC",
              algorithm_name: str = "MedSeg", series_number: int = 300, series_uid: str | None = None) -> Path:
    """Write ``label`` as a BINARY DICOM SEG over ``source``'s series, atomically; returns the path."""
    seg = seg_dataset(label, source, labels, series_description, algorithm_type, algorithm_name,
                      series_number, series_uid)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        seg.is_little_endian, seg.is_implicit_VR = True, False
        seg.save_as(tmp, write_like_original=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_seg(path_or_dataset, source: Volume, labels: dict[str, int]) -> np.ndarray:
    """A uint8 label map on ``source``'s grid from a DICOM SEG, segments mapped to ``labels`` by name.

    Frames are placed by their ImagePositionPatient on the source grid (or, without
    one, by the source instance they reference). A SEG on another grid, with a
    segment this app does not declare, or with overlapping segments is refused.
    """
    import pydicom

    if isinstance(path_or_dataset, pydicom.Dataset):
        ds = path_or_dataset
    else:
        try:
            ds = pydicom.dcmread(str(path_or_dataset))
        except Exception as e:
            raise MedSegInputError(f"cannot read {os.path.basename(str(path_or_dataset))} as DICOM: {e}") from e
    if str(ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise MedSegInputError(f"not a DICOM SEG object (SOP class {ds.get('SOPClassUID')})")

    by_name = {norm_label_name(k): v for k, v in labels.items()}
    segment_index = {}
    for item in ds.SegmentSequence:
        name = str(item.get("SegmentLabel", ""))
        if norm_label_name(name) not in by_name:
            raise MedSegInputError(f"SEG segment {item.SegmentNumber} {name!r} is not one of this app's labels "
                                   f"{sorted(labels)}")
        segment_index[int(item.SegmentNumber)] = by_name[norm_label_name(name)]

    cols, rows, n_slices = source.shape
    if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
        raise MedSegInputError(f"SEG frames are {ds.Rows}x{ds.Columns}, the image slices {rows}x{cols}; "
                               "the SEG is not on this image's grid")
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    if ds.get("SegmentationType", "BINARY") == "FRACTIONAL":
        frames = frames > float(ds.get("MaximumFractionalValue", 255)) / 2
    else:
        frames = frames > 0

    to_voxel = np.linalg.inv(RAS_TO_LPS @ source.affine)
    sop_to_k = {str(d.SOPInstanceUID): k for k, d in enumerate(source.dicom or [])}
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else pydicom.Dataset()
    _check_orientation(ds, shared, source)
    out = np.zeros(source.shape, dtype=np.uint8)
    for f, frame_item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ident = frame_item.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        number = int(ident[0].ReferencedSegmentNumber)
        if number not in segment_index:
            raise MedSegInputError(f"SEG frame {f + 1} refers to undeclared segment {number}")
        k = _frame_slice(frame_item, to_voxel, sop_to_k, n_slices, f)
        mask = frames[f].T  # (Rows, Columns) -> (i, j)
        if not mask.any():
            continue
        taken = out[:, :, k][mask]
        if np.any((taken != 0) & (taken != segment_index[number])):
            raise MedSegInputError("SEG segments overlap; a label map holds one label per voxel")
        out[:, :, k][mask] = segment_index[number]
    return out


def _check_orientation(ds, shared, source: Volume) -> None:
    plane = shared.get("PlaneOrientationSequence")
    if not plane:
        return
    iop = np.asarray([float(x) for x in plane[0].ImageOrientationPatient])
    lps = RAS_TO_LPS @ source.affine
    expected = np.r_[lps[:3, 0] / np.linalg.norm(lps[:3, 0]), lps[:3, 1] / np.linalg.norm(lps[:3, 1])]
    if not np.allclose(iop, expected, atol=1e-3):
        raise MedSegInputError("SEG orientation differs from the image's; the SEG is not on this image's grid")


def _frame_slice(item, to_voxel: np.ndarray, sop_to_k: dict, n_slices: int, f: int) -> int:
    position = item.get("PlanePositionSequence")
    if position:
        ipp = [float(x) for x in position[0].ImagePositionPatient]
        i, j, k = (to_voxel @ np.r_[ipp, 1.0])[:3]
        kk = int(round(k))
        if max(abs(i), abs(j), abs(k - kk)) > POSITION_TOL_VOX or not 0 <= kk < n_slices:
            raise MedSegInputError(f"SEG frame {f + 1} at {np.round(ipp, 3).tolist()} mm is not a slice of this "
                                   "image; the SEG is not on this image's grid")
        return kk
    for derivation in item.get("DerivationImageSequence") or []:
        for ref in derivation.get("SourceImageSequence") or []:
            if str(ref.ReferencedSOPInstanceUID) in sop_to_k:
                return sop_to_k[str(ref.ReferencedSOPInstanceUID)]
    raise MedSegInputError(f"SEG frame {f + 1} has no position and references no slice of this image")


def decimal_string(x: float):
    """A DICOM DS value. DS is at most 16 characters (PS3.5 6.2); auto_format keeps as many digits as fit."""
    from pydicom.valuerep import DSfloat

    return DSfloat(float(x), auto_format=True)


def _version() -> str:
    import medseg

    return str(getattr(medseg, "__version__", "0"))
