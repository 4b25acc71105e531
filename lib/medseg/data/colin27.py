"""Colin27, a real head scan that no shipped model trains on, and how a prediction is scored on it.

Colin27 (sample-data/colin27, from Debian's mricron-data, BSD-3) is one person's T1
with skull, neck and face. There is no grey/white-matter ground truth for it, so a
tissue prediction is scored in the two ways its files allow:

* brain mask: predicted grey ∪ white matter against the nonzero voxels of the
  skull-stripped ``ch2bet`` (which include some CSF, so even a perfect tissue
  segmentation stays a little under 1);
* grey-matter recall: the share of the AAL atlas's cortical and deep grey-matter
  regions (codes 1-90; 91-116 are the cerebellum, mostly white matter at 1 mm)
  that is predicted grey matter.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.data.template import REPO_ROOT, TISSUE_LABELS
from medseg.pipeline.metrics import dice

COLIN27_DIR = REPO_ROOT / "sample-data" / "colin27"
COLIN27_HEAD = COLIN27_DIR / "ch2.nii.gz"
COLIN27_BRAIN = COLIN27_DIR / "ch2bet.nii.gz"
COLIN27_AAL = COLIN27_DIR / "aal.nii.gz"
AAL_CEREBRUM_CODES = range(1, 91)


def _array(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def score_tissue_prediction(labels: np.ndarray) -> dict:
    """Brain-mask Dice and AAL grey-matter recall of a GM/WM label map on Colin27's grid."""
    brain_truth = _array(COLIN27_BRAIN) > 0
    if labels.shape != brain_truth.shape:
        raise ValueError(f"prediction shape {labels.shape} is not Colin27's {brain_truth.shape}")
    predicted_brain = np.isin(labels, list(TISSUE_LABELS.values()))
    aal = _array(COLIN27_AAL)
    cerebrum_gm = np.isin(aal, list(AAL_CEREBRUM_CODES))
    gm = labels == TISSUE_LABELS["grey_matter"]
    return {
        "brain_mask_dice": round(dice(predicted_brain, brain_truth), 4),
        "grey_matter_recall_in_aal": round(float(gm[cerebrum_gm].mean()), 4),
        "predicted_brain_ml": round(float(predicted_brain.sum()) / 1000.0, 1),
        "true_brain_ml": round(float(brain_truth.sum()) / 1000.0, 1),
        "grey_matter_outside_brain_ml": round(float((gm & ~brain_truth).sum()) / 1000.0, 1),
    }
