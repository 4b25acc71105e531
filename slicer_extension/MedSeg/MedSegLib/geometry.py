"""World (RAS) points and boxes to the voxel indices of the image the server stores.

Slicer gives positions in world RAS, after every parent transform; the server wants voxel
indices (i, j, k) of the image file. These functions take the plain 4x4 matrices the widget
reads from the scene, so they run (and are tested) without Slicer:
- ``ras_to_ijk`` of a volume is in the volume's own (local) space; when the volume is under a
  parent transform, a world point first goes through ``world_to_local`` (the inverse of the
  volume's parent-to-world transform);
- a box ROI is a centre, a size along its own axes and an object-to-world matrix: a rotated ROI
  or an oblique volume makes its voxel bounds the min/max over its 8 corners, not centre +/- size/2.
"""
from __future__ import annotations

from itertools import product
from typing import List, Optional, Sequence, Tuple

import numpy as np

Matrix = Sequence[Sequence[float]]
IJKBox = Tuple[List[int], List[int]]


def as_matrix(rows: Matrix) -> np.ndarray:
    matrix = np.asarray(rows, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError(f"a 4x4 matrix is needed, got shape {matrix.shape}")
    return matrix


def world_to_ijk_matrix(ras_to_ijk: Matrix, world_to_local: Optional[Matrix] = None) -> np.ndarray:
    """World RAS -> voxel indices: the volume's RAS-to-IJK after its parent transform's inverse."""
    matrix = as_matrix(ras_to_ijk)
    return matrix @ as_matrix(world_to_local) if world_to_local is not None else matrix


def ras_to_ijk(ras_to_ijk_matrix: Matrix, ras: Sequence[float]) -> List[int]:
    """The voxel (i, j, k) nearest a RAS point, by a 4x4 RAS-to-IJK matrix (row-major)."""
    point = as_matrix(ras_to_ijk_matrix) @ np.array([float(ras[0]), float(ras[1]), float(ras[2]), 1.0])
    return [int(round(v)) for v in point[:3]]


def roi_corners_world(object_to_world: Matrix, size_mm: Sequence[float]) -> np.ndarray:
    """The 8 corners (8 x 3, world RAS) of a box ROI: +/- size/2 along its own axes, placed by its
    object-to-world matrix (which holds its centre, its rotation and any parent transform)."""
    half = np.asarray(size_mm, dtype=float) / 2.0
    corners = np.array([[sx * half[0], sy * half[1], sz * half[2], 1.0] for sx, sy, sz in product((-1, 1), repeat=3)])
    return (as_matrix(object_to_world) @ corners.T).T[:, :3]


def roi_box_ijk(object_to_world: Matrix, size_mm: Sequence[float], world_to_ijk: Matrix,
                shape_ijk: Sequence[int]) -> Optional[IJKBox]:
    """The voxel box (first corner, last corner, inclusive) an ROI covers, clamped to the image.

    None when the ROI is not a box yet (Slicer's first placement click defines a point of size
    zero) or lies wholly outside the image: neither is something to send to the server.
    """
    if len(size_mm) != 3 or min(float(s) for s in size_mm) < 0 or sum(float(s) > 0 for s in size_mm) < 2:
        return None  # a point or a line; a flat box (one slice, as drawn on a slice view) is a box
    matrix = as_matrix(world_to_ijk)
    corners = np.array([list(c) + [1.0] for c in roi_corners_world(object_to_world, size_mm)])
    ijk = (matrix @ corners.T).T[:, :3]
    # Every voxel whose extent (index +/- 0.5) the box overlaps, so a box drawn on one slice keeps it.
    low = np.floor(ijk.min(axis=0) + 0.5)
    high = np.ceil(ijk.max(axis=0) - 0.5)
    last = np.asarray(shape_ijk, dtype=float) - 1
    if np.any(high < 0) or np.any(low > last):
        return None
    low, high = np.clip(low, 0, last), np.clip(high, 0, last)
    return [int(v) for v in low], [int(v) for v in high]


def clamp_ijk(ijk: Sequence[int], shape_ijk: Sequence[int]) -> Optional[List[int]]:
    """A click's voxel if it lies in the image, else None (a click off the image guides nothing)."""
    if all(0 <= int(v) < int(n) for v, n in zip(ijk, shape_ijk)):
        return [int(v) for v in ijk]
    return None


def roi_is_placed(n_control_points: int, n_defined_points: int, size_mm: Sequence[float]) -> bool:
    """Whether a Slicer box ROI is a whole box yet.

    Slicer places a box with two clicks: after the first, one defined point of size (0, 0, 0) and,
    once the mouse moves, a second (preview) point the size follows; after the second click, the
    two become one centre point with a size (vtkMRMLMarkupsROINode, UpdateControlPointsFromBoxROI).
    Only that last state is a box to send; events before it are the user still drawing.
    """
    return n_control_points == 1 and n_defined_points == 1 and min(float(s) for s in size_mm) > 0
