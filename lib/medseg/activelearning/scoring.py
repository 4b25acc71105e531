"""Dice between the model's label (``original``) and the clinician's (``final``).

A low Dice means the clinician had to change much of the prediction: a measure of
how far the current model is from the clinicians on that image. MONAI Label's own
``Dice`` scoring method gives one number over all foreground and treats label values
as weights; this one scores each declared label separately.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod

from medseg.imageio import read_volume
from medseg.pipeline.training import dice_per_label

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
ORIGINAL = DefaultLabelTag.ORIGINAL.value


class DiceScoring(ScoringMethod):
    """Stores ``dice`` in the image info of every image that has both an original and a final label."""

    def __init__(self, labels: dict[str, int]):
        super().__init__("Dice per label between the model's label (original) and the submitted one (final)")
        self.labels = dict(labels)

    def __call__(self, request, datastore: Datastore) -> dict[str, Any]:
        result = {}
        for image_id in datastore.list_images():
            score = self.score(datastore, image_id)
            if score is not None:
                datastore.update_image_info(image_id, {"dice": score})
                result[image_id] = score
        logger.info("dice scoring: %d image(s) with both an original and a final label", len(result))
        return result

    @staticmethod
    def has_work(datastore: Datastore) -> bool:
        """Whether some image has both labels and no score for its current final version."""
        for image_id in datastore.list_images():
            tags = datastore.get_labels_by_image_id(image_id)
            if ORIGINAL in tags and FINAL in tags:
                scored = (datastore.get_image_info(image_id).get("dice") or {}).get("final_version")
                if scored is None or scored != datastore.get_label_info(image_id, FINAL).get("version"):
                    return True
        return False

    def score(self, datastore: Datastore, image_id: str) -> dict[str, Any] | None:
        tags = datastore.get_labels_by_image_id(image_id)
        if ORIGINAL not in tags or FINAL not in tags:
            return None
        original = _read_label(datastore.get_label_uri(image_id, ORIGINAL))
        final = _read_label(datastore.get_label_uri(image_id, FINAL))
        if original.shape != final.shape:
            # Both are validated on upload; a mismatch means a file was replaced by hand.
            logger.warning("dice scoring: %s: original %s and final %s differ in size; skipped",
                           image_id, original.shape, final.shape)
            return None
        per_label = dice_per_label(original, final, self.labels)
        original_info = datastore.get_label_info(image_id, ORIGINAL)
        return {
            "per_label": per_label,
            "mean": float(np.mean(list(per_label.values()))),
            "ts": int(time.time()),
            "final_version": datastore.get_label_info(image_id, FINAL).get("version"),
            "original_model": original_info.get("model"),
            "original_model_version": (original_info.get("params") or {}).get("model_version"),
        }


def _read_label(path: str) -> np.ndarray:
    return np.rint(read_volume(path).array).astype(np.int32)
