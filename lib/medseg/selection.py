"""Model selection: single models and their ensemble scored on one validation set.

After every training run the models that have weights are evaluated on the
datastore's persistent validation split, on the original image grids, one by one
and as an ensemble (mean softmax). The result is stored in the work folder and
the ``auto`` infer task serves the best; a single model beats the ensemble on a
tie, as in nnU-Net's model selection (Isensee et al. 2021, supplementary note 6).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from medseg.checkpoint import ModelStore
from medseg.imageio import read_volume
from medseg.models import ModelSpec
from medseg.pipeline.metrics import dice_per_label
from medseg.pipeline.postprocess import class_argmax
from medseg.pipeline.training import pick_device

logger = logging.getLogger(__name__)

SELECTION_FILE = "model_selection.json"


def evaluate_models(models: list[tuple[ModelSpec, ModelStore]], val_pairs: list[dict], labels: dict[str, int],
                    device: str = "auto") -> dict:
    """Mean Dice per label of every model with weights and of their ensemble on ``val_pairs``."""
    device = pick_device(device)
    ready = [(spec, store.load()) for spec, store in models if store.current_path() is not None]
    predictors = {spec.name: spec.predictor(ckpt, device) for spec, ckpt in ready}
    scores: dict[str, list[dict]] = {name: [] for name in predictors}
    scores["ensemble"] = []
    for pair in val_pairs:
        image = read_volume(pair["image"])
        truth = np.rint(read_volume(pair["label"]).array).astype(np.uint8)
        total = None
        with torch.inference_mode():
            for name, predictor in predictors.items():
                pred = predictor(image, probabilities=True)
                scores[name].append(dice_per_label(pred.labels, truth, labels))
                total = pred.probabilities if total is None else total + pred.probabilities
        scores["ensemble"].append(dice_per_label(class_argmax(total, axis=-1), truth, labels))

    def mean(rows):
        return {k: float(np.mean([r[k] for r in rows])) for k in labels}

    result = {
        "val_images": [os.path.basename(p["image"]) for p in val_pairs],
        "versions": {spec.name: ckpt.get("version") for spec, ckpt in ready},
        "val_dice_per_label": {name: mean(rows) for name, rows in scores.items() if rows},
    }
    if len(ready) < 2:
        result["val_dice_per_label"].pop("ensemble", None)  # an ensemble of one is that model
    return result


def checkpoint_dice(spec: ModelSpec, checkpoint: dict, pairs: list[dict], labels: dict[str, int],
                    device) -> dict[str, float]:
    """Mean Dice per label of one checkpoint on ``pairs``, on the original grids."""
    predictor = spec.predictor(checkpoint, device)
    rows = []
    with torch.inference_mode():
        for pair in pairs:
            truth = np.rint(read_volume(pair["label"]).array).astype(np.uint8)
            rows.append(dice_per_label(predictor(read_volume(pair["image"])).labels, truth, labels))
    return {k: float(np.mean([r[k] for r in rows])) for k in labels}


def best_choice(selection: dict) -> str | None:
    """Name of the best entry by mean Dice; singles first on ties, then table order."""
    dice = selection.get("val_dice_per_label") or {}
    if not dice:
        return None
    order = [n for n in selection.get("versions", {}) if n in dice] + (["ensemble"] if "ensemble" in dice else [])
    return max(order, key=lambda n: (round(float(np.mean(list(dice[n].values()))), 6), -order.index(n)))


def save_selection(work_dir: Path, selection: dict) -> None:
    path = Path(work_dir) / SELECTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(selection, indent=1))
    os.replace(tmp, path)


def load_selection(work_dir: Path) -> dict | None:
    path = Path(work_dir) / SELECTION_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
