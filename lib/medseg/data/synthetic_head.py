"""A synthetic head around the template's brain: CSF, skull, scalp, neck, face.

The bundled MNI template is brain-extracted, but scanners deliver heads. Models
trained only on extracted brains learn "nonzero means brain" and label the scalp
grey matter. So pseudo-subjects can be given a head: tissue layers grown outward
from the brain mask by distance, each with its own random thickness (modulated
across the head by a smooth field) and its own random intensity, plus a neck and
a face below and in front of the brain.

Random intensities per tissue follow SynthStrip (Hoopes et al., NeuroImage 2022),
which trains skull stripping on label maps with randomized contrasts so that no
intensity rule can be learned, only shape and context. The layer order and
typical thicknesses follow T1 anatomy: CSF (dark), the inner table (very dark
cortical bone), diploe (marrow, mid to bright), the outer table, muscle and
galea, subcutaneous fat (bright) and skin. The temporal muscles thicken the muscle
layer over the lower sides of the head: on Colin27 they were the largest piece of
"grey matter" outside the brain (their T1 intensity is close to grey matter's), so
the muscle's intensity range reaches grey matter's too.

Nothing here is fitted to a real head, so a real head (Colin27 with its skull)
stays an honest test of the result.

Units: the template grid is 1 mm, so voxel distances are millimetres.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

NECK_PAD_MM = 60  # room added below the template grid, whose brain touches its bottom
SIDE_PAD_MM = 8

# (name, thickness range mm, intensity range relative to white matter = 1)
LAYERS = (
    ("csf", (1.0, 4.0), (0.05, 0.35)),
    ("inner_table", (1.0, 2.5), (0.02, 0.15)),
    ("diploe", (1.0, 4.5), (0.3, 0.95)),
    ("outer_table", (1.0, 2.0), (0.02, 0.15)),
    ("muscle", (1.0, 5.0), (0.3, 0.85)),
    ("fat", (2.0, 6.0), (0.7, 1.25)),
    ("skin", (1.0, 2.0), (0.35, 0.8)),
)


def _smooth(rng: np.random.Generator, shape, points: int = 4) -> np.ndarray:
    """A smooth random field of about unit deviation: cubic upsampling of a coarse grid to a
    quarter of ``shape``, then linear to ``shape`` (a full-size cubic zoom costs seconds)."""
    coarse = rng.standard_normal((points,) * 3)
    quarter = [max(points, n // 4) for n in shape]
    field = ndimage.zoom(coarse, [q / points for q in quarter], order=3, mode="nearest")
    field = ndimage.zoom(field, [n / q for n, q in zip(shape, field.shape)], order=1, mode="nearest")
    out = np.zeros(shape, dtype=np.float32)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(shape, field.shape))
    out[sl] = field[sl]
    return out


def _ellipsoid(shape, center, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1.0


def pad_for_head(image: np.ndarray, labels: np.ndarray, affine: np.ndarray):
    """The template arrays and affine on a grid with room for a neck and scalp (RAS, 1 mm)."""
    pad = ((SIDE_PAD_MM, SIDE_PAD_MM), (SIDE_PAD_MM, SIDE_PAD_MM), (NECK_PAD_MM, SIDE_PAD_MM))
    image = np.pad(image, pad)
    labels = np.pad(labels, pad)
    shifted = affine.copy()
    shifted[:3, 3] -= affine[:3, :3] @ np.array([p[0] for p in pad], dtype=float)
    return image, labels, shifted


def add_head(brain_image: np.ndarray, rng: np.random.Generator, white_matter_level: float) -> np.ndarray:
    """``brain_image`` (zero outside the brain, on a padded 1 mm RAS grid) with a head around it."""
    shape = brain_image.shape
    brain = brain_image > 0
    distance_mm = ndimage.distance_transform_edt(~brain).astype(np.float32)
    head = brain_image.astype(np.float32).copy()
    variation = 1.0 + 0.35 * _smooth(rng, shape)
    temporalis_mm = temporal_muscle_mm(brain, rng)
    outer = np.zeros(shape, dtype=np.float32)
    tissue = np.zeros(shape, dtype=np.int8)  # 0 air, 1.. layer index + 1
    for i, (name, (t_lo, t_hi), _levels) in enumerate(LAYERS):
        inner = outer
        outer = inner + rng.uniform(t_lo, t_hi) * np.clip(variation, 0.4, 2.0)
        if name == "muscle":
            outer = outer + temporalis_mm
        tissue[(distance_mm > inner) & (distance_mm <= outer) & ~brain] = i + 1
    _add_neck_and_face(tissue, brain, rng)
    texture = _smooth(rng, shape, points=12)  # one field; each tissue takes its own share of it
    for i, (_name, _thickness, (lo, hi)) in enumerate(LAYERS):
        where = tissue == i + 1
        head[where] = rng.uniform(lo, hi) * white_matter_level * (1.0 + rng.uniform(0.03, 0.12) * texture[where])
    return head


def temporal_muscle_mm(brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Extra muscle thickness (mm) over each temple: up to 6-16 mm at the sides of the
    brain's lower half, fading towards the vertex, the midline and the back."""
    box = np.argwhere(brain)
    lo, hi = box.min(0), box.max(0)
    center, half = (lo + hi) / 2, (hi - lo) / 2
    x, y, z = np.ogrid[tuple(slice(0, n) for n in brain.shape)]
    lateral = np.clip((np.abs(x - center[0]) / half[0] - 0.45) / 0.4, 0.0, 1.0)
    height = (z - lo[2]) / max(hi[2] - lo[2], 1)  # 0 at the brain's bottom, 1 at the vertex
    vertical = np.clip(1.0 - np.abs(height - rng.uniform(0.3, 0.45)) / 0.3, 0.0, 1.0)
    front_to_back = np.clip(1.0 - np.abs((y - center[1]) / half[1] - rng.uniform(0.0, 0.3)) / 0.8, 0.0, 1.0)
    return (rng.uniform(6.0, 16.0) * lateral * vertical * front_to_back).astype(np.float32)


def _add_neck_and_face(tissue: np.ndarray, brain: np.ndarray, rng: np.random.Generator) -> None:
    """Soft tissue below the brain (neck, with a spine) and in front of it (face, eyes)."""
    shape = tissue.shape
    box = np.argwhere(brain)
    lo, hi = box.min(0), box.max(0)
    center = (lo + hi) / 2
    muscle, fat, bone, marrow, csf = 5, 6, 2, 3, 1
    # Neck: an elliptic cylinder from the grid's bottom to the lower third of the brain.
    neck_top = lo[2] + 0.35 * (hi[2] - lo[2])
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    rx, ry = rng.uniform(0.3, 0.42) * (hi[0] - lo[0]), rng.uniform(0.3, 0.4) * (hi[1] - lo[1])
    cy = center[1] - rng.uniform(0.0, 0.1) * (hi[1] - lo[1])
    ellipse = ((grids[0] - center[0]) / rx) ** 2 + ((grids[1] - cy) / ry) ** 2
    below = grids[2] < neck_top
    neck = (ellipse <= 1.0) & below & (tissue == 0) & ~brain
    tissue[neck & (ellipse > 0.8)] = fat
    tissue[neck & (ellipse <= 0.8)] = muscle
    spine = ((grids[0] - center[0]) ** 2 + (grids[1] - (cy - 0.3 * ry)) ** 2 <= rng.uniform(7, 10) ** 2) & below & ~brain
    tissue[spine] = marrow
    tissue[spine & ((grids[0] - center[0]) ** 2 + (grids[1] - (cy - 0.3 * ry)) ** 2 <= 16)] = csf
    # Face: soft tissue in front of and below the frontal lobe, with two eyes in fatty orbits.
    face_center = (center[0], hi[1] - rng.uniform(0.05, 0.12) * (hi[1] - lo[1]), lo[2] + 0.3 * (hi[2] - lo[2]))
    face_radii = (rng.uniform(0.3, 0.4) * (hi[0] - lo[0]), rng.uniform(18, 30), rng.uniform(0.25, 0.35) * (hi[2] - lo[2]))
    face = _ellipsoid(shape, face_center, face_radii) & (tissue == 0) & ~brain
    tissue[face] = muscle
    for side in (-1, 1):
        eye_center = (center[0] + side * rng.uniform(28, 34), hi[1] - rng.uniform(2, 10), lo[2] + 0.42 * (hi[2] - lo[2]))
        orbit = _ellipsoid(shape, eye_center, (17, 17, 15)) & ~brain
        tissue[orbit] = fat
        tissue[_ellipsoid(shape, eye_center, (12, 12, 12)) & ~brain] = csf
