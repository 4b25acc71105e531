"""The checks every submitted label goes through, and reading it in whatever format it came."""
from __future__ import annotations

import os

import numpy as np

from medseg.errors import MedSegInputError, UnsupportedMediaError
from medseg.imageio import NIFTI_SUFFIXES, is_dicom_file, read_volume
from medseg.nrrd_files import header_shape, is_nrrd, is_segmentation, read_header, read_segmentation_as_label
from medseg.volume import LIMITS, GridLimits, Volume


def stored_as_integers(path: str) -> bool:
    """True when the NIfTI file's voxels are integers as stored (an integer type, no scaling)."""
    import nibabel as nib

    header = nib.load(path).header
    slope, inter = header.get_slope_inter()
    unscaled = slope in (None, 1.0) and inter in (None, 0.0)
    return np.issubdtype(header.get_data_dtype(), np.integer) and unscaled


def check_label_against_image(label: Volume, image: Volume, labels: dict[str, int], tol_mm: float = 1e-2) -> None:
    """Reject a label map that is not on the image's grid or holds undeclared values.

    ``labels`` maps label names to their indices; 0 (background) is always allowed.
    """
    if label.shape != image.shape:
        raise MedSegInputError(
            f"label size {list(label.shape)} differs from the image size {list(image.shape)}; "
            "export the label on the image's grid"
        )
    if not np.allclose(label.affine, image.affine, atol=tol_mm):
        raise MedSegInputError(
            "label geometry (spacing, origin or direction) differs from the image's; "
            "export the label on the image's grid"
        )
    values = np.unique(label.array)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise MedSegInputError("label values must be whole numbers")
    allowed = {0, *labels.values()}
    unknown = sorted(int(v) for v in values if int(v) not in allowed)
    if unknown:
        declared = ", ".join(f"{name}={idx}" for name, idx in sorted(labels.items(), key=lambda kv: kv[1]))
        raise MedSegInputError(f"label values {unknown} are not declared labels (background=0, {declared})")


def remap_label_values(array: np.ndarray, label_info, app_labels: dict[str, int]) -> np.ndarray:
    """Map a client's label values to the app's indices by label name.

    ``label_info`` is what MONAI Label's Slicer plugin sends: a list of
    ``{"name": ..., "idx": ...}`` (or a dict name -> index). Unknown names are refused.
    """
    if isinstance(label_info, dict):
        entries = [{"name": k, "idx": v} for k, v in label_info.items()]
    elif isinstance(label_info, list):
        entries = label_info
    else:
        raise MedSegInputError(f"label_info must be a list of {{\"name\": ..., \"idx\": ...}} or an object of "
                               f"name: index, got {type(label_info).__name__}")
    out = np.zeros_like(array)
    seen_values = set()
    for entry in entries:
        try:
            name, value = str(entry["name"]), int(entry["idx"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise MedSegInputError(f"label_info entries need a name and an integer idx, got {entry!r}") from e
        if name not in app_labels:
            raise MedSegInputError(f"unknown label name {name!r}; this app's labels are {sorted(app_labels)}")
        out[array == value] = app_labels[name]
        seen_values.add(value)
    stray = sorted(int(v) for v in np.unique(array) if v != 0 and int(v) not in seen_values)
    if stray:
        raise MedSegInputError(f"label values {stray} are not named in label_info")
    return out


def nifti_suffix(filename: str) -> str:
    """The file's NIfTI suffix (``.nii.gz`` or ``.nii``); 415 for anything else."""
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if filename.lower().endswith(suffix):
            return suffix
    raise UnsupportedMediaError(
        f"{os.path.basename(filename) or 'the upload'} is not a NIfTI file (.nii or .nii.gz), a NRRD "
        "(.nrrd, .seg.nrrd) or a .zip of a DICOM series; convert it first"
    )


def stored_suffix(filename: str) -> str:
    """The suffix a label upload is stored under: its NIfTI suffix; NRRD and DICOM SEG become .nii.gz."""
    return ".nii.gz" if is_nrrd(filename) or is_dicom_file(filename) else nifti_suffix(filename)


def read_uploaded_label(path: str, label_info: dict, app_labels: dict[str, int], expect_shape=None,
                        limits: GridLimits = LIMITS, reference: Volume | None = None) -> Volume:
    """A submitted label file, its values mapped to the app's indices when ``label_info`` names them.

    Every datastore reads uploads through here, so they refuse the same things the same way;
    the caller still checks the result against its image (``check_label_against_image``).
    With ``expect_shape`` (the image's), a header claiming another size is refused before
    any data is read, so a label can never cost more memory than its image.

    A Slicer ``.seg.nrrd`` needs ``reference`` (the image): its segments take the app's
    indices by name, and a segmentation cropped to its segments' extent is put in place.
    """
    what = "the uploaded label"
    if is_dicom_file(path):
        if reference is None:
            raise MedSegInputError("a DICOM SEG label needs its image; submit it for a stored image")
        from medseg.dicom.seg import read_seg

        return Volume(read_seg(path, reference, app_labels), reference.affine.copy(), None)
    if is_nrrd(path):
        header, _ = read_header(path, what)
        if is_segmentation(path, header):
            if reference is None:
                raise MedSegInputError("a .seg.nrrd label needs its image; submit it for a stored image")
            return read_segmentation_as_label(path, app_labels, reference, what, limits)
    else:
        nifti_suffix(path)
    if expect_shape is not None:
        _check_header_shape(path, tuple(expect_shape))
    label = read_volume(path, what=what, limits=limits)
    mapping = (label_info or {}).get("label_info")
    if mapping:
        label = Volume(remap_label_values(label.array, mapping, app_labels), label.affine, label.header)
    return label


def _check_header_shape(path: str, expect: tuple[int, ...]) -> None:
    import nibabel as nib

    if is_nrrd(path):
        what = "the uploaded label"
        shape = header_shape(read_header(path, what)[0], what)
    else:
        try:
            shape = tuple(int(n) for n in nib.load(path).shape)
        except Exception as e:  # nibabel raises many types for corrupt input
            raise MedSegInputError(f"cannot read the uploaded label as a NIfTI image: {e}") from e
    shape = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if shape != expect:
        raise MedSegInputError(f"label size {list(shape)} differs from the image size {list(expect)}; "
                               "export the label on the image's grid")


SLAB_VOXELS = 8_000_000  # bincount a label this many voxels at a time: bounded memory on a 512x512x300 CT


def structures_present(label: np.ndarray, labels: dict[str, int]) -> list[str]:
    """The names of the app's labels that have at least one voxel in ``label``."""
    flat = label.reshape(-1)
    top = max(labels.values(), default=0)
    counts = np.zeros(top + 1, np.int64)
    for start in range(0, flat.size, SLAB_VOXELS):
        part = flat[start:start + SLAB_VOXELS]
        part = part[(part > 0) & (part <= top)].astype(np.int64)
        counts += np.bincount(part, minlength=top + 1)[:top + 1]
    return sorted(name for name, value in labels.items() if 0 < value <= top and counts[value] > 0)
