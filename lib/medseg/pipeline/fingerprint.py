"""Dataset fingerprint: what planning needs to know about the labeled cases."""
from __future__ import annotations

import os

import numpy as np

from medseg.imageio import read_volume
from medseg.pipeline.plan import CaseFingerprint
from medseg.pipeline.preprocess import nonzero_bbox

FOREGROUND_SAMPLES_PER_CASE = 10000


def fingerprint_case(name: str, image: np.ndarray, spacing_mm, label: np.ndarray, rng,
                     modality: str | None = None) -> CaseFingerprint:
    """Spacing, size after cropping to the nonzero region, foreground intensity samples,
    and the DICOM modality when the image is a DICOM series (planning prefers it to the conf value)."""
    bbox = nonzero_bbox(image)
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


def fingerprint_files(pairs: list[dict], seed: int = 0) -> list[CaseFingerprint]:
    """Fingerprints of datalist entries ``{"image": path, "label": path}``."""
    rng = np.random.default_rng(seed)
    out = []
    for d in pairs:
        image = read_volume(d["image"])
        label = read_volume(d["label"], dtype=np.float32)
        out.append(fingerprint_case(os.path.basename(d["image"]), image.array, image.spacing_mm, label.array, rng,
                                    modality=image.modality))
    return out
