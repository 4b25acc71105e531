"""A brain-extraction stage in front of weights that trained on extracted brains only.

Such weights learned that nonzero means brain: on Colin27 with its skull, the shipped
``unet2d`` called 3.4 litres of head tissue brain (brain-mask Dice 0.65). Retraining each of
them on heads costs 25-45 CPU-minutes a model, so instead the shipped ``unet3d``, which did
train on heads (skull, neck, noise everywhere, any orientation), says where the brain is, and
everything else is set to zero, as in their training data. Their labels are then kept inside
that brain. A first stage that finds where to look, as the cascade's first stage does, but
one that already exists. Measured in ``bench/real_scans.py``.

Only weights that say so take the stage: ``checkpoint["expects"] == EXTRACTED_BRAIN``, or a
shipped checkpoint whose recorded training data holds no heads. Weights trained on the
datastore (``source: trained``) never do: they learned whatever the datastore holds.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.volume import Volume

EXTRACTED_BRAIN = "extracted_brain"  # checkpoint["expects"]: inputs of the weights' training data
HEAD = "head"
EXTRACTOR_WEIGHTS = Path(__file__).resolve().parents[3] / "apps" / "medseg" / "model" / "unet3d" / "model.pt"


def expects_extracted_brain(checkpoint: dict) -> bool:
    expects = checkpoint.get("expects")
    if expects is not None:
        return expects == EXTRACTED_BRAIN
    trained_on = str((checkpoint.get("trained_on") or {}).get("train", ""))
    return checkpoint.get("source", "shipped") == "shipped" and bool(trained_on) and "head" not in trained_on


def _fingerprint(volume: Volume) -> tuple:
    sample = np.ascontiguousarray(volume.array.ravel()[::4099])
    return volume.shape, np.asarray(volume.affine).tobytes(), hashlib.sha1(sample.tobytes()).hexdigest()


def brain_mask(extractor, volume: Volume) -> np.ndarray:
    """Where ``extractor`` finds brain tissue on the volume's grid, enclosed CSF (ventricles) included.

    The last answer is kept on the extractor: the members of an ensemble ask about the same image
    one after the other, and one extraction serves them all."""
    key = _fingerprint(volume)
    last = getattr(extractor, "last_brain_mask", None)
    if last is not None and last[0] == key:
        return last[1]
    mask = ndimage.binary_fill_holes(extractor(volume).labels > 0)
    extractor.last_brain_mask = (key, mask)  # one assignment: safe when requests overlap
    return mask


def extracted(volume: Volume, brain: np.ndarray) -> Volume:
    """The volume with everything outside ``brain`` set to zero, as an extracted brain is stored."""
    return Volume(np.where(brain, volume.array, 0).astype(volume.array.dtype), volume.affine, volume.header,
                  volume.modality, volume.dicom)
