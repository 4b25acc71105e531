"""MONAI Label train task for the interactive model: ``POST /train/interactive``.

Every label of every final label map in the datastore is an object; interactions are
simulated on them (``medseg.pipeline.interactive_training``), starting from the current
weights (shipped or earlier trained). Before the new weights are published they are scored
as the benchmark scores them: simulated clicks on the validation images' objects, mean Dice
after CLICKS_SCORED clicks, against the served weights on the same objects.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from medseg.background import lower_priority
from medseg.checkpoint import ModelStore, save_checkpoint
from medseg.errors import MedSegInputError
from medseg.imageio import read_volume
from medseg.pipeline.interactive_model import InteractiveModel, network_config, network_from_checkpoint
from medseg.pipeline.interactive_training import ObjectImage, click_curve, train_interactive
from medseg.pipeline.training import persistent_split, pick_device
from medseg.request_options import choice, number
from medseg.tasks.train import CLIENT_KEYS, PUBLISH_POLICIES, ReportedTrainTask, TrainProgress

MODEL = "interactive"
CLICKS_SCORED = 3
MAX_OBJECTS_SCORED = 20
OPTIONS = {"max_iterations": (int, 1, 100_000, 200), "learning_rate": (float, 1e-6, 1.0, 3e-4),
           "seed": (int, 0, 2**31 - 1, 0), "max_seconds": (float, 1.0, 7 * 86400.0, None)}


def check_interactive_train_request(params: dict) -> dict:
    """The options of ``POST /train/interactive``, typed and bounded (422 otherwise)."""
    unknown = sorted(set(params) - set(OPTIONS) - {"publish"} - set(CLIENT_KEYS))
    if unknown:
        raise MedSegInputError(f"unknown training option(s) {unknown} for the interactive model; options: "
                               f"{', '.join(sorted([*OPTIONS, 'publish']))}")
    out = {k: number(k, v, *OPTIONS[k][:3]) for k, v in params.items() if k in OPTIONS}
    if "publish" in params:
        out["publish"] = choice("publish", params["publish"], PUBLISH_POLICIES)
    return out


def click_score(model: InteractiveModel, images: list[ObjectImage], clicks: int = CLICKS_SCORED) -> float:
    """Mean Dice after ``clicks`` simulated clicks over (at most MAX_OBJECTS_SCORED of) the objects."""
    objects = [(im, value) for im in images for value in im.objects][:MAX_OBJECTS_SCORED]
    scores = [click_curve(model, im.image, im.spacing_mm, im.labels == value, clicks)[-1] for im, value in objects]
    return float(np.mean(scores)) if scores else float("nan")


class InteractiveTrainTask(ReportedTrainTask):
    def __init__(self, store: ModelStore, work_dir: Path, device: str):
        super().__init__("Train the class-agnostic interactive model on every label of the datastore's final labels")
        self.store = store
        self.work_dir = Path(work_dir)
        self.device = device
        self.progress_path = self.work_dir / MODEL / "train_progress.json"

    def config(self):
        return {k: spec[3] for k, spec in OPTIONS.items()}

    @staticmethod
    def object_images(datalist: list[dict]) -> list[ObjectImage]:
        out = []
        for d in datalist:
            image, label = read_volume(d["image"]), read_volume(d["label"])
            if label.shape != image.shape:
                raise MedSegInputError(f"label of {os.path.basename(d['image'])} does not match its image's size")
            out.append(ObjectImage(os.path.basename(d["image"]), image.array.astype(np.float32), image.spacing_mm,
                                   np.rint(label.array).astype(np.int32)))
        return [im for im in out if im.objects]

    def __call__(self, request, datastore):
        lower_priority()  # a clinician's requests in the server come first
        # The route checked the client's keys; MONAI Label adds its own (local_rank, gpus) on the way.
        options = check_interactive_train_request({k: v for k, v in request.items() if k in OPTIONS or k == "publish"})
        datalist = datastore.datalist()
        if not datalist:
            raise MedSegInputError("no image has a final label yet; submit at least one label before training")
        names = [os.path.basename(d["image"]) for d in datalist]
        train_idx, val_idx = persistent_split(names, self.work_dir / MODEL / "split.json", 0.2, 5, options.get("seed", 0))
        held_out = bool(set(val_idx) - set(train_idx))
        train_images = self.object_images([datalist[i] for i in train_idx])
        val_images = self.object_images([datalist[i] for i in val_idx])
        parent = self.store.load()
        progress = TrainProgress(self.progress_path, {
            "model": MODEL, "status": "RUNNING", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(),
            "n_labels": len(datalist), "objects": sum(len(im.objects) for im in train_images),
            "from_scratch": parent is None, "held_out_validation": held_out})
        progress.write()
        device = pick_device(self.device)
        try:
            network = network_from_checkpoint(parent) if parent is not None else None
            trained = train_interactive(train_images, options.get("max_iterations", OPTIONS["max_iterations"][3]),
                                        network=network, learning_rate=options.get("learning_rate", 3e-4),
                                        seed=options.get("seed", 0), progress=progress,
                                        max_seconds=options.get("max_seconds"))
            candidate = click_score(InteractiveModel(trained["network"], device), val_images)
            current = click_score(InteractiveModel(network_from_checkpoint(parent), device),
                                  val_images) if parent is not None else None
        except BaseException as e:  # failed or killed: say so, and leave the served weights alone
            progress.write(status="ERROR", error=str(e) or type(e).__name__)
            raise
        publish = (options.get("publish") == "always" or current is None or not held_out
                   or candidate >= current)
        version = self.store.next_version()
        checkpoint = {"model": MODEL, "state_dict": {k: v.detach().cpu() for k, v in trained["network"].state_dict().items()},
                      "network": network_config(), "version": version,
                      "parent_version": (parent or {}).get("version"), "source": "trained",
                      "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "train_images": [names[i] for i in train_idx],
                      "val_images": [names[i] for i in val_idx], "held_out_validation": held_out,
                      f"val_dice_after_{CLICKS_SCORED}_clicks": {"candidate": candidate, "current": current}}
        if publish:
            self.store.archive_current()
            save_checkpoint(self.store.runtime_path, checkpoint)
        else:
            save_checkpoint(self.store.runtime_path.with_name(f"model.rejected.v{version}.pt"), checkpoint)
        summary = {"version": version, "published": publish, "iterations": trained["iterations"],
                   "seconds": trained["seconds"], f"val_dice_after_{CLICKS_SCORED}_clicks": candidate,
                   "served_dice_after_clicks": current,
                   "reason": ("no held-out validation image: published without the gate" if not held_out else
                              "publish=always" if options.get("publish") == "always" else
                              "no weights were served" if current is None else
                              f"validation Dice after {CLICKS_SCORED} clicks {candidate:.4f} (new) vs {current:.4f}")}
        progress.write(status="DONE", finished_at=checkpoint["trained_at"], **summary)
        return {"model": MODEL, **summary}


def interactive_store(cfg) -> ModelStore:
    return ModelStore(MODEL, cfg.shipped_interactive_model_dir, cfg.work_dir / "models")
