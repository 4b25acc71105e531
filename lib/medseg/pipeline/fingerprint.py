"""Dataset fingerprint: what planning needs to know about the labeled cases."""
from __future__ import annotations

import os

import numpy as np

from medseg.imageio import read_volume
from medseg.pipeline.plan import CaseFingerprint
from medseg.pipeline.foreground import foreground_mask, mask_bbox
from medseg.pipeline.preprocess import ras_orientation, ras_spacing, to_ras

FOREGROUND_SAMPLES_PER_CASE = 10000


def fingerprint_case(name: str, image: np.ndarray, spacing_mm, label: np.ndarray, rng,
                     modality: str | None = None, affine: np.ndarray | None = None,
                     configured_modality: str = "MR") -> CaseFingerprint:
    """Spacing and size after cropping to the body (both in RAS axis order when ``affine``
    is given, as preprocessing sees them), foreground intensity samples, and the DICOM
    modality when the image is a DICOM series (planning prefers it to the conf value)."""
    ornt = ras_orientation(affine) if affine is not None else None
    image, label, spacing_mm = to_ras(image, ornt), to_ras(label, ornt), ras_spacing(spacing_mm, ornt)
    bbox = mask_bbox(foreground_mask(image, modality or configured_modality))
    fg = image[label > 0]
    if fg.size > FOREGROUND_SAMPLES_PER_CASE:
        fg = rng.choice(fg, FOREGROUND_SAMPLES_PER_CASE, replace=False)
    return CaseFingerprint(
        name=name,
        spacing_mm=[float(s) for s in spacing_mm],
        shape_after_crop_vox=[b - a for a, b in bbox],
        foreground_samples=[float(x) for x in fg],
        modality=modality,
    )


def fingerprint_files(pairs: list[dict], seed: int = 0, modality: str = "MR") -> list[CaseFingerprint]:
    """Fingerprints of datalist entries ``{"image": path, "label": path}``."""
    rng = np.random.default_rng(seed)
    out = []
    for d in pairs:
        image = read_volume(d["image"])
        label = read_volume(d["label"], dtype=np.float32)
        out.append(fingerprint_case(os.path.basename(d["image"]), image.array, image.spacing_mm, label.array, rng,
                                    modality=image.modality, affine=image.affine, configured_modality=modality))
    return out
