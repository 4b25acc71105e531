"""Scoring methods: Dice of original vs final labels, and model uncertainty of unlabeled images.

Dice between the model's label (``original``) and the clinician's (``final``).

A low Dice means the clinician had to change much of the prediction: a measure of
how far the current model is from the clinicians on that image. MONAI Label's own
``Dice`` scoring method gives one number over all foreground and treats label values
as weights; this one scores each declared label separately.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod

from medseg.activelearning.scores import cache_for
from medseg.activelearning.uncertainty import epistemic_score, tta_score
from medseg.background import lower_priority
from medseg.imageio import read_volume
from medseg.pipeline.metrics import dice_per_label
from medseg.tasks.infer import _flag

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
ORIGINAL = DefaultLabelTag.ORIGINAL.value


class DiceScoring(ScoringMethod):
    """Stores ``dice`` in the image info of every image that has both an original and a final label."""

    def __init__(self, labels: dict[str, int]):
        super().__init__("Dice per label between the model's label (original) and the submitted one (final)")
        self.labels = dict(labels)

    def __call__(self, request, datastore: Datastore) -> dict[str, Any]:
        lower_priority()  # a clinician's infer in the server comes first
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


class UncertaintyScoring(ScoringMethod):
    """Scores every unlabeled image by model uncertainty into a per-version cache (scores.py).

    ``method`` is ``epistemic`` (MC dropout) or ``tta`` (test-time augmentation variance).
    Request options: ``passes`` (N), ``dropout`` (p, epistemic only), ``force`` (rescore
    images already in the cache).
    """

    DESCRIPTIONS: ClassVar[dict[str, str]] = {
        "epistemic": "Model uncertainty by MC dropout: mean foreground entropy over N stochastic passes",
        "tta": "Model uncertainty by test-time augmentation: mean foreground softmax variance over flips and intensity changes",
    }

    def __init__(self, method: str, model_choice: Callable[[], Any], work_dir, passes: int = 5, dropout: float = 0.1):
        super().__init__(self.DESCRIPTIONS[method])
        self.method = method
        self.model_choice = model_choice  # returns the MedSegInferTask to use (weights may change)
        self.work_dir = work_dir
        self.passes = passes
        self.dropout = dropout

    def cache(self):
        return cache_for(self.model_choice(), self.work_dir, self.method)

    def has_work(self, datastore: Datastore) -> bool:
        """Whether some unlabeled image has no score for the current weights."""
        cache = self.cache()
        return cache is not None and bool(cache.missing(datastore.get_unlabeled_images()))

    def __call__(self, request, datastore: Datastore) -> dict[str, Any]:
        lower_priority()  # a clinician's infer in the server comes first
        task = self.model_choice()
        if task is None:
            logger.info("%s scoring: no model has weights; nothing to score", self.method)
            return {}
        predictor, _ = task.predictor()
        cache = self.cache()
        images = datastore.get_unlabeled_images()
        todo = images if _flag(request.get("force")) else cache.missing(images)
        result = {}
        for image_id in todo:
            try:
                result[image_id] = self.score(predictor, read_volume(datastore.get_image_uri(image_id)), request)
            except (OSError, ValueError, RuntimeError) as e:
                # One unreadable image must not keep the others unscored; it stays unscored.
                logger.warning("%s scoring: %s skipped: %s", self.method, image_id, e)
                continue
            cache.put(image_id, result[image_id])
            logger.info("%s scoring: %s (%s v%s): %.5f", self.method, image_id, cache.model, cache.version,
                        result[image_id]["score"])
        return result

    def score(self, predictor, volume, request) -> dict[str, Any]:
        passes = int(request.get("passes", self.passes))
        started = time.time()
        with torch.inference_mode():
            if self.method == "epistemic":
                entry = epistemic_score(predictor, volume, passes, float(request.get("dropout", self.dropout)))
            else:
                entry = tta_score(predictor, volume, passes)
        return {**entry, "ts": int(time.time()), "seconds": round(time.time() - started, 2)}
