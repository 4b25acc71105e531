"""Reading and writing volumes with their exact grid (shape, spacing, origin, direction).

One module owns file I/O so that geometry is handled in one place: the pipeline
works on arrays in the file's own voxel order, and every output is written with
the input's header so that it lands on exactly the input's grid.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedSegInputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Volume:
    array: np.ndarray  # voxel order of the file (i, j, k)
    affine: np.ndarray  # 4x4 voxel -> RAS+ millimetres
    header: object = None  # nibabel header of the source, reused on write

    @property
    def spacing_mm(self) -> tuple[float, ...]:
        return tuple(float(x) for x in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def read_volume(path: str | os.PathLike, dtype=np.float32, what: str | None = None) -> Volume:
    """Read a 3D NIfTI volume; raise MedSegInputError for anything else.

    ``what`` names the file in error messages (e.g. "the uploaded label") when its
    path is a temporary name the user never saw.
    """
    import nibabel as nib

    path = str(path)
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
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


def same_grid(a: Volume, b: Volume, tol_mm: float = 1e-3) -> bool:
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=tol_mm)
