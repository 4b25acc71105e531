"""MONAI Label infer task: REST request -> Predictor -> label file on the image's grid."""
from __future__ import annotations

import logging
import os
import tempfile
import threading

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medseg.checkpoint import ModelStore
from medseg.errors import UnknownImageError
from medseg.imageio import read_volume, write_like
from medseg.models import ModelSpec
from medseg.pipeline.postprocess import class_argmax
from medseg.pipeline.predictor import Prediction, Predictor, voxel_entropy
from medseg.pipeline.training import pick_device
from medseg.selection import best_choice, load_selection

logger = logging.getLogger(__name__)


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


class UploadedImage(str):
    """The path of an image file that came with an infer request (MedSeg's infer route wrote it).

    A plain string naming a path is refused by ``MedSegApp.infer``: a client could name any
    file on the server. JSON cannot make an instance of this class, so only the route can.
    """


def device_name(configured: str) -> str:
    """Where models run: the configured device, ``auto`` resolved."""
    return str(pick_device(configured))


class VolumeInferTask(InferTask):
    """Shared REST side of every infer task: read the image, predict, write on its grid."""

    def predict(self, volume, tta: bool, probabilities: bool) -> tuple[Prediction, dict]:
        raise NotImplementedError

    def __call__(self, request):
        image_path = request.get("image")
        # A file (NIfTI) or a folder (a DICOM series); read_volume tells them apart.
        if not isinstance(image_path, str) or not image_path or not os.path.exists(image_path):
            raise UnknownImageError(
                f"image {request.get('image')!r} is not in the datastore; list images with GET /datastore/?output=all"
            )
        volume = read_volume(image_path)
        tta = _flag(request.get("tta", self._config.get("tta", False)))
        want_probs = _flag(request.get("probabilities", False))
        want_entropy = _flag(request.get("uncertainty", False))
        with torch.inference_mode():
            prediction, meta = self.predict(volume, tta, want_probs or want_entropy)
        fd, out_path = tempfile.mkstemp(suffix=".nii.gz", prefix="medseg_")
        os.close(fd)
        if want_entropy:
            # Entropy of the (mean) softmax per voxel, 3D float32 on the image grid.
            output = "uncertainty"
            write_like(out_path, voxel_entropy(prediction.probabilities), volume, dtype=np.float32)
        elif want_probs:
            # Softmax per class as a 4D volume (x, y, z, class) on the image grid.
            output = "probabilities"
            write_like(out_path, prediction.probabilities, volume, dtype=np.float32)
        else:
            output = "labels"
            write_like(out_path, prediction.labels, volume, dtype=prediction.labels.dtype)
        return out_path, {
            "label_names": dict(self.labels),
            "latencies": prediction.latencies_s,
            "tta": tta,
            "output": output,
            **meta,
        }


class MedSegInferTask(VolumeInferTask):
    def __init__(self, spec: ModelSpec, store: ModelStore, labels: dict[str, int], device: str, tta: bool):
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=dict(labels),
            dimension=spec.spatial_dims,
            description=spec.description,
            config={"tta": tta},
        )
        self.spec = spec
        self.store = store
        self.device = pick_device(device)
        self._lock = threading.Lock()
        self._predictor: tuple[int, Predictor] | None = None  # (id of checkpoint dict, predictor)

    def is_valid(self) -> bool:
        return self.store.current_path() is not None

    def get_path(self, validate=True):
        path = self.store.current_path()
        return str(path) if path else None

    def info(self):
        info = super().info()
        ckpt = self.store.load()
        if ckpt:
            info["weights"] = {
                "version": ckpt.get("version"),
                "source": ckpt.get("source", "trained"),
                "trained_at": ckpt.get("trained_at"),
                "n_train_cases": ckpt.get("n_train_cases"),
                "val_dice_per_label": ckpt.get("val_dice_per_label"),
                "postprocessing": (ckpt.get("postprocessing") or {}).get("largest_component_labels", []),
                "side_pairs": (ckpt.get("postprocessing") or {}).get("side_pairs", []),
            }
            info["plan"] = ckpt.get("plan")
        return info

    def validation_score(self) -> float | None:
        """Mean validation Dice over labels of the current weights, or None without weights."""
        ckpt = self.store.load()
        dice = (ckpt or {}).get("val_dice_per_label")
        return float(np.mean(list(dice.values()))) if dice else None

    def predictor(self) -> tuple[Predictor, dict]:
        """The predictor for the current weights; rebuilt when new weights were published."""
        with self._lock:
            ckpt = self.store.load()
            if ckpt is None:
                raise UnknownImageError(f"model {self.spec.name} has no weights yet; train it first")
            if self._predictor is None or self._predictor[0] != id(ckpt):
                self._predictor = (id(ckpt), self.spec.predictor(ckpt, self.device))
                logger.info("%s: loaded weights version %s", self.spec.name, ckpt.get("version"))
            return self._predictor[1], ckpt

    def predict(self, volume, tta, probabilities):
        predictor, ckpt = self.predictor()
        prediction = predictor(volume, tta=tta, probabilities=probabilities)
        return prediction, {"model": self.spec.name, "model_version": ckpt.get("version")}


class EnsembleInferTask(VolumeInferTask):
    """Average of the members' softmax outputs on the image grid, then argmax.

    Members are the models that have weights when the request comes; each runs
    its own plan, so models trained at different resolutions ensemble correctly.
    """

    def __init__(self, members: list[MedSegInferTask], labels: dict[str, int], tta: bool):
        super().__init__(type=InferType.SEGMENTATION, labels=dict(labels), dimension=3,
                         description="Ensemble: mean softmax of every model that has weights",
                         config={"tta": tta})
        self.members = members

    def ready_members(self) -> list[MedSegInferTask]:
        return [m for m in self.members if m.is_valid()]

    def is_valid(self) -> bool:
        return len(self.ready_members()) >= 1

    def info(self):
        info = super().info()
        info["members"] = [m.spec.name for m in self.ready_members()]
        return info

    def predict(self, volume, tta, probabilities):
        members = self.ready_members()
        if not members:
            raise UnknownImageError("no model has weights yet; train one first")
        total, latencies, versions = None, {}, {}
        for member in members:
            prediction, meta = member.predict(volume, tta, probabilities=True)
            total = prediction.probabilities if total is None else total + prediction.probabilities
            latencies[member.spec.name] = prediction.latencies_s
            versions[member.spec.name] = meta["model_version"]
        mean = total / len(members)
        labels = class_argmax(mean, axis=-1)
        latencies["total"] = round(sum(v["total"] for v in latencies.values()), 3)
        prediction = Prediction(labels=labels, latencies_s=latencies, probabilities=mean if probabilities else None)
        return prediction, {"model": "ensemble", "members": versions}


class AutoInferTask(VolumeInferTask):
    """The best model by validation Dice (mean over labels) answers.

    After a training run on this datastore, all models with weights and their
    ensemble were scored on its validation split (medseg.selection); that record
    decides while it matches the current weights (a single model beats the
    ensemble on a tie). Otherwise each model's own validation record decides
    among single models, ties going to the model listed first in the table.
    """

    def __init__(self, members: list[MedSegInferTask], labels: dict[str, int], tta: bool,
                 ensemble: "EnsembleInferTask | None" = None, work_dir=None):
        super().__init__(type=InferType.SEGMENTATION, labels=dict(labels), dimension=3,
                         description="Best model by validation Dice", config={"tta": tta})
        self.members = members
        self.ensemble = ensemble
        self.work_dir = work_dir

    def _from_selection(self) -> "VolumeInferTask | None":
        selection = load_selection(self.work_dir) if self.work_dir else None
        if not selection:
            return None
        current = {m.spec.name: (m.store.load() or {}).get("version") for m in self.members if m.is_valid()}
        if selection.get("versions") != current:
            return None  # weights changed since the selection was made
        best = best_choice(selection)
        if best == "ensemble":
            return self.ensemble
        return next((m for m in self.members if m.spec.name == best), None)

    def choose(self) -> "VolumeInferTask | None":
        chosen = self._from_selection()
        if chosen is not None:
            return chosen
        scored = [(m.validation_score(), -i, m) for i, m in enumerate(self.members) if m.is_valid()]
        scored = [s for s in scored if s[0] is not None]
        return max(scored, key=lambda s: (s[0], s[1]))[2] if scored else None

    def is_valid(self) -> bool:
        return self.choose() is not None

    def info(self):
        info = super().info()
        chosen = self.choose()
        info["chosen"] = None if chosen is None else "ensemble" if chosen is self.ensemble else chosen.spec.name
        return info

    def predict(self, volume, tta, probabilities):
        chosen = self.choose()
        if chosen is None:
            raise UnknownImageError("no model has validated weights yet; train one first")
        prediction, meta = chosen.predict(volume, tta, probabilities)
        return prediction, {**meta, "chosen_by": "validation dice"}
