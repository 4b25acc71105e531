"""Reading and writing volumes with their exact grid (shape, spacing, origin, direction).

One module owns file I/O so that geometry is handled in one place: the pipeline
works on arrays in the file's own voxel order, and every output is written with
the input's header so that it lands on exactly the input's grid.

A DICOM series (a folder of one series' files) reads into the same ``Volume`` as a
NIfTI file would (``medseg.dicom.series``): RAS+ affine, (i, j, k) voxel order.
Outputs for a DICOM image are written as NIfTI with its affine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedSegInputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_MAGIC_OFFSET = 128  # PS3.10 7.1: a 128-byte preamble, then "DICM"


@dataclass
class Volume:
    array: np.ndarray  # voxel order of the file (i, j, k)
    affine: np.ndarray  # 4x4 voxel -> RAS+ millimetres
    header: object = None  # nibabel header of the source, reused on write (None for DICOM)
    modality: str | None = None  # DICOM Modality (0008,0060), e.g. "CT", "MR"; None for NIfTI
    dicom: list | None = None  # the source DICOM datasets in slice (k) order, without pixel data

    @property
    def spacing_mm(self) -> tuple[float, ...]:
        return tuple(float(x) for x in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a DICOM Part 10 file (the "DICM" prefix after the preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def read_volume(path: str | os.PathLike, dtype=np.float32, what: str | None = None) -> Volume:
    """Read a 3D NIfTI volume or a DICOM series; raise MedSegInputError for anything else.

    A folder is read as one DICOM series; so is a single DICOM file (which is
    refused, since one slice is not a volume, unless a caller wants that error).
    ``what`` names the file in error messages (e.g. "the uploaded label") when its
    path is a temporary name the user never saw.
    """
    import nibabel as nib

    path = str(path)
    if os.path.isdir(path) or is_dicom_file(path):
        from medseg.dicom.series import read_series

        return read_series(path, dtype=dtype, what=what)
    what = what or os.path.basename(path)
    try:
        img = nib.load(path)
        array = np.asarray(img.dataobj, dtype=dtype)
    except Exception as e:  # nibabel raises many types for corrupt input
        raise MedSegInputError(f"cannot read {what} as a NIfTI image: {e}") from e
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise MedSegInputError(f"{what} has shape {array.shape}; a 3D volume is required")
    if not np.all(np.isfinite(array)):
        raise MedSegInputError(f"{what} contains NaN or infinite values")
    return Volume(array=array, affine=img.affine.copy(), header=img.header.copy())


def write_like(path: str | os.PathLike, array: np.ndarray, like: Volume, dtype=np.uint8) -> None:
    """Write ``array`` on the grid of ``like`` (same header geometry), atomically."""
    import nibabel as nib

    if tuple(array.shape[:3]) != like.shape:
        raise ValueError(f"array shape {array.shape} does not match the reference grid {like.shape}")
    header = like.header.copy() if like.header is not None else None
    img = nib.Nifti1Image(array.astype(dtype), like.affine, header=header)
    img.set_data_dtype(dtype)
    # Keep sform and qform identical to the source so viewers place the label exactly.
    if header is not None:
        img.set_sform(like.header.get_sform(), code=int(like.header["sform_code"]) or 1)
        img.set_qform(like.header.get_qform(), code=int(like.header["qform_code"]) or 1)
    else:
        # No NIfTI header (a DICOM source): both forms from the affine, as scanner
        # coordinates (code 1), which is what DICOM's patient coordinates are.
        img.set_sform(like.affine, code=1)
        img.set_qform(like.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


def same_grid(a: Volume, b: Volume, tol_mm: float = 1e-3) -> bool:
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=tol_mm)
