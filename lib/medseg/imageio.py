"""Reading and writing volumes with their exact grid (shape, spacing, origin, direction).

One module owns file I/O so that geometry is handled in one place: the pipeline
works on arrays in the file's own voxel order, and every output is written with
the input's header so that it lands on exactly the input's grid.

A DICOM series (a folder of one series' files) reads into the same ``Volume``
(``medseg.volume``) as a NIfTI file would (``medseg.dicom.series``): RAS+ affine,
(i, j, k) voxel order.
Outputs for a DICOM image are written as NIfTI with its affine.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg import durable
from medseg.errors import MedSegInputError
from medseg.volume import LIMITS, GridLimits, Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_MAGIC_OFFSET = 128  # PS3.10 7.1: a 128-byte preamble, then "DICM"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a DICOM Part 10 file (the "DICM" prefix after the preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def _nifti_shape(img) -> tuple[int, ...]:
    shape = tuple(int(s) for s in img.shape)
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape


def _open_nifti(path: str, what: str, limits: GridLimits):
    """The NIfTI image with its header checked; its data not read yet."""
    import nibabel as nib

    try:
        img = nib.load(path, keep_file_open=True)
        header = img.header
        zooms = [float(z) for z in header.get_zooms()[:3]]
        affine = img.affine
    except Exception as e:  # nibabel raises many types for corrupt input
        raise MedSegInputError(f"cannot read {what} as a NIfTI image: {e}") from e
    if not np.all(np.isfinite(zooms)):
        raise MedSegInputError(f"{what} has NaN or infinite voxel sizes (pixdim) in its header")
    limits.check(_nifti_shape(img), affine, what)
    return img


def check_image_file(path: str | os.PathLike, what: str, limits: GridLimits = LIMITS) -> tuple[int, ...]:
    """Check an uploaded NIfTI image without holding it in memory; its shape.

    Header and geometry first (``GridLimits``), then the data is streamed slab by slab
    (a few MB at a time, however large the volume): it must be all there, finite, and
    not one value everywhere. A constant volume is no scan; it is what a gzip bomb is
    made of (a few hundred KB that inflate to 10^8 identical voxels).
    """
    img = _open_nifti(str(path), what, limits)
    shape = _nifti_shape(img)
    slab = max(1, (8 << 20) // max(1, shape[0] * shape[1] * 4))  # about 8 MB of float32 per read
    low, high = np.inf, -np.inf
    try:
        for k in range(0, shape[2], slab):
            block = np.asarray(img.dataobj[:, :, k:k + slab], dtype=np.float32)
            if not np.all(np.isfinite(block)):
                raise MedSegInputError(f"{what} contains NaN or infinite values")
            low, high = min(low, float(block.min())), max(high, float(block.max()))
    except MedSegInputError:
        raise
    except Exception as e:  # truncated or corrupt data
        raise MedSegInputError(f"cannot read the data of {what}: {e}") from e
    # The file nibabel keeps open (keep_file_open) closes with the image's array proxy.
    if low == high:
        raise MedSegInputError(f"{what} holds the single value {low:g} in all its voxels; it is not a scan")
    return shape


def read_volume(path: str | os.PathLike, dtype=np.float32, what: str | None = None,
                limits: GridLimits = LIMITS) -> Volume:
    """Read a 3D NIfTI or NRRD volume or a DICOM series; raise MedSegInputError for anything else.

    A folder is read as one DICOM series; so is a single DICOM file (which is
    refused, since one slice is not a volume, unless a caller wants that error).
    ``what`` names the file in error messages (e.g. "the uploaded label") when its
    path is a temporary name the user never saw.
    """
    import nibabel as nib

    path = str(path)
    if path.lower().endswith(".nrrd"):
        from medseg.nrrd_files import read_nrrd

        return read_nrrd(path, what=what, limits=limits)
    if os.path.isdir(path) or is_dicom_file(path):
        from medseg.dicom.series import read_series

        return read_series(path, dtype=dtype, what=what, limits=limits)
    what = what or os.path.basename(path)
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises many types for corrupt input
        raise MedSegInputError(f"cannot read {what} as a NIfTI image: {e}") from e
    limits.check_size(img.shape, what)  # before the data is allocated
    try:
        array = np.asarray(img.dataobj, dtype=dtype)
    except Exception as e:
        raise MedSegInputError(f"cannot read {what} as a NIfTI image: {e}") from e
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise MedSegInputError(f"{what} has shape {array.shape}; a 3D volume is required")
    if not np.all(np.isfinite(array)):
        raise MedSegInputError(f"{what} contains NaN or infinite values")
    return Volume(array=array, affine=img.affine.copy(), header=img.header.copy())


def cropped_grid(volume: Volume, region: tuple[slice, ...]) -> Volume:
    """The grid of ``volume[region]``: its voxels, and an affine (and header forms) moved to the
    region's first voxel, so that every viewer places the crop where it lies in the image."""
    start = np.eye(4)
    start[:3, 3] = [s.start for s in region]
    affine = volume.affine @ start
    header = None
    if volume.header is not None:
        header = volume.header.copy()
        # Each form the file sets moves with the crop; an unset one (code 0) is the affine.
        for get, put in ((header.get_sform, header.set_sform), (header.get_qform, header.set_qform)):
            form, code = get(coded=True)
            put(affine if form is None else form @ start, code=int(code) or 1)
    return Volume(volume.array[region], affine, header, volume.modality)


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
    tmp = durable.temp_name(path, keep_suffix=".nii.gz" if path.name.endswith(".gz") else ".nii")
    try:
        nib.save(img, tmp)
        durable.commit(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
