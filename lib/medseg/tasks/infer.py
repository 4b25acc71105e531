"""MONAI Label infer task: REST request -> Predictor -> label file on the image's grid."""
from __future__ import annotations

import logging
import os
import tempfile
import threading

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medseg.checkpoint import ModelStore, plan_of
from medseg.errors import UnknownImageError
from medseg.imageio import read_volume, write_like
from medseg.models import ModelSpec
from medseg.pipeline.predictor import Predictor
from medseg.pipeline.training import pick_device

logger = logging.getLogger(__name__)


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


class MedSegInferTask(InferTask):
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
            }
            info["plan"] = ckpt.get("plan")
        return info

    def predictor(self) -> tuple[Predictor, dict]:
        """The predictor for the current weights; rebuilt when new weights were published."""
        with self._lock:
            ckpt = self.store.load()
            if ckpt is None:
                raise UnknownImageError(f"model {self.spec.name} has no weights yet; train it first")
            if self._predictor is None or self._predictor[0] != id(ckpt):
                plan = plan_of(ckpt)
                network = self.spec.build(plan)
                network.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
                lcc = (ckpt.get("postprocessing") or {}).get("largest_component_labels", [])
                self._predictor = (id(ckpt), Predictor(network, plan, self.device, lcc))
                logger.info("%s: loaded weights version %s", self.spec.name, ckpt.get("version"))
            return self._predictor[1], ckpt

    def __call__(self, request):
        image_path = request.get("image")
        if not isinstance(image_path, str) or not image_path or not os.path.isfile(image_path):
            raise UnknownImageError(
                f"image {request.get('image')!r} is not in the datastore; list images with GET /datastore/?output=all"
            )
        volume = read_volume(image_path)
        predictor, ckpt = self.predictor()
        tta = _flag(request.get("tta", self._config.get("tta", False)))
        want_probs = _flag(request.get("probabilities", False))
        with torch.inference_mode():
            prediction = predictor(volume, tta=tta, probabilities=want_probs)
        fd, out_path = tempfile.mkstemp(suffix=".nii.gz", prefix=f"{self.spec.name}_")
        os.close(fd)
        if want_probs:
            # Softmax per class as a 4D volume (x, y, z, class) on the image grid.
            write_like(out_path, prediction.probabilities, volume, dtype=np.float32)
        else:
            write_like(out_path, prediction.labels, volume)
        return out_path, {
            "label_names": dict(self.labels),
            "latencies": prediction.latencies_s,
            "model": self.spec.name,
            "model_version": ckpt.get("version"),
            "tta": tta,
            "output": "probabilities" if want_probs else "labels",
        }
