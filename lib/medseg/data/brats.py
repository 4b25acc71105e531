"""The 10 real BraTS 2018 gliomas in ``../shared/data/brats`` (development data, never committed).

Each case has FLAIR, T1ce and T2 on one 240x240x155 grid at 1 mm, and expert labels (1 necrotic
or non-enhancing core, 2 oedema, 4 enhancing tumour). The objects a clinician outlines, each on
the sequence it is read on (BraTS's own definitions, Menze et al. 2015):
- whole tumour (1, 2, 4) on FLAIR;
- tumour core (1, 4) and enhancing tumour (4) on T1ce.

The split is fixed once, here, and never changed: weights may train on ``TRAIN_CASES`` only, and
every number reported comes from ``HELD_OUT_CASES``. Cite the BraTS papers where results are shown
(Menze et al., IEEE TMI 2015; Bakas et al., Sci Data 2017; Bakas et al., arXiv 1811.02629).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
# The shared folder beside the repository (the developers' and CI's layout); MEDSEG_BRATS overrides it.
BRATS_DIR = Path(os.environ.get("MEDSEG_BRATS", REPO.parent / "shared" / "data" / "brats"))

# Two cases of each source (2013, CBICA, TCIA) go to each side where the sources allow.
TRAIN_CASES = ("Brats18_2013_11_1", "Brats18_2013_3_1", "Brats18_CBICA_ABM_1", "Brats18_CBICA_ALU_1",
               "Brats18_TCIA01_201_1")
HELD_OUT_CASES = ("Brats18_2013_20_1", "Brats18_2013_23_1", "Brats18_CBICA_AME_1", "Brats18_CBICA_AQN_1",
                  "Brats18_TCIA01_378_1")

OBJECTS = {  # name: (sequence it is read on, label values)
    "whole_tumour": ("flair", (1, 2, 4)),
    "tumour_core": ("t1ce", (1, 4)),
    "enhancing_tumour": ("t1ce", (4,)),
}


@dataclass
class BratsObject:
    case: str
    name: str
    sequence: str
    image_path: Path
    mask: np.ndarray  # bool, on the image's grid (i, j, k as stored)
    spacing_mm: tuple


def available() -> bool:
    return all((BRATS_DIR / case / f"{case}_seg.nii.gz").exists() for case in TRAIN_CASES + HELD_OUT_CASES)


def why_absent() -> str:
    return (f"the BraTS development cases are not at {BRATS_DIR} (they live in the shared folder beside the "
            "repository and are never committed; set MEDSEG_BRATS to point elsewhere)")


def objects(cases=HELD_OUT_CASES, names=tuple(OBJECTS)) -> list[BratsObject]:
    """The objects of ``cases``, each with the image it is read on (empty objects left out)."""
    import nibabel as nib

    out = []
    for case in cases:
        seg_image = nib.load(str(BRATS_DIR / case / f"{case}_seg.nii.gz"))
        seg = np.asarray(seg_image.dataobj).astype(np.int16)
        spacing = tuple(float(s) for s in seg_image.header.get_zooms()[:3])
        for name in names:
            sequence, values = OBJECTS[name]
            mask = np.isin(seg, values)
            if mask.any():
                out.append(BratsObject(case, name, sequence, BRATS_DIR / case / f"{case}_{sequence}.nii.gz", mask,
                                       spacing))
    return out
