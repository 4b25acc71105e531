"""A volume and the limits on its grid: the type every reader returns and every step takes.

It sits below the readers (``imageio`` for NIfTI, ``nrrd_files``, ``dicom.series``) so
that none of them imports another to get it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.errors import MedSegInputError


@dataclass(frozen=True)
class GridLimits:
    """What a volume's header may claim before a byte of its data is read.

    A header is a few hundred bytes that says how much memory reading the data will
    take; checking it first is what stops a 98-byte file claiming 10^9 voxels. The
    defaults cover clinical CT and MR (512 x 512 x 1024 voxels, 0.05-50 mm voxels) and
    refuse what no pipeline step can work on. ``--conf max_image_voxels`` raises the cap.
    """

    max_voxels: int = 512 * 512 * 1024
    min_axis_voxels: int = 4
    min_spacing_mm: float = 0.05
    max_spacing_mm: float = 50.0

    def check_size(self, shape, what: str) -> None:
        shape = tuple(int(s) for s in shape)
        voxels = int(np.prod(shape, dtype=np.int64))
        if voxels > self.max_voxels:
            raise MedSegInputError(f"{what} has {voxels:,} voxels ({'x'.join(map(str, shape))}); this server takes "
                                   f"at most {self.max_voxels:,} (--conf max_image_voxels)")

    def check(self, shape, affine, what: str) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise MedSegInputError(f"{what} has shape {list(shape)}; a 3D volume is required")
        self.check_size(shape, what)
        if min(shape) < self.min_axis_voxels:
            raise MedSegInputError(f"{what} is {'x'.join(map(str, shape))} voxels; every axis needs at least "
                                   f"{self.min_axis_voxels}")
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise MedSegInputError(f"{what} has a voxel-to-world transform (affine) with NaN or infinite values")
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(spacing < self.min_spacing_mm) or np.any(spacing > self.max_spacing_mm):
            raise MedSegInputError(f"{what} has voxel spacing {np.round(spacing, 6).tolist()} mm; each must lie in "
                                   f"{self.min_spacing_mm}-{self.max_spacing_mm} mm")
        # Axes that (nearly) coincide make a singular grid: no world position maps back to one voxel.
        if abs(np.linalg.det(affine[:3, :3] / spacing)) < 1e-3:
            raise MedSegInputError(f"{what} has voxel axes that are parallel (a singular direction matrix)")


LIMITS = GridLimits()


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


def same_grid(a: Volume, b: Volume, tol_mm: float = 1e-3) -> bool:
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=tol_mm)
