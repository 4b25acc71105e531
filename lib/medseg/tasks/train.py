"""MONAI Label train task: final labels in the datastore -> fine-tuned weights, published.

MONAI Label runs this in a subprocess (``POST /train/<model>``); the server's infer
task picks the new weights up by file modification time, without a restart.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from monailabel.interfaces.tasks.train import TrainTask

from medseg.checkpoint import ModelStore, plan_of
from medseg.errors import MedSegInputError
from medseg.models import ModelSpec
from medseg.pipeline.fingerprint import fingerprint_files
from medseg.pipeline.plan import Plan, make_plan
from medseg.selection import evaluate_models, save_selection
from medseg.pipeline.training import TrainConfig, load_preprocessed, persistent_split, train_network

logger = logging.getLogger(__name__)


MIN_CASES_TO_REPLAN = 5


def planning_kwargs(parent: dict | None, spec: ModelSpec) -> dict:
    """The planner settings a model was made with, carried to its fine-tuned versions."""
    return dict(spec.planning, **((parent or {}).get("planning") or {}))
REPLAN_SPACING_CHANGE = 0.2


def plans_differ(a: Plan, b: Plan) -> bool:
    if a.normalization != b.normalization or a.labels != b.labels:
        return True
    return any(abs(x - y) / x > REPLAN_SPACING_CHANGE for x, y in zip(a.target_spacing_mm, b.target_spacing_mm))


class MedSegTrainTask(TrainTask):
    def __init__(self, spec: ModelSpec, store: ModelStore, labels: dict[str, int], work_dir: Path, device: str,
                 modality: str = "MR", gpu_memory_gb: float = 8.0,
                 peers: list[tuple[ModelSpec, ModelStore]] | None = None):
        super().__init__(f"Fine-tune {spec.name} on the datastore's final labels")
        self.spec = spec
        self.store = store
        self.labels = dict(labels)
        self.work_dir = Path(work_dir)
        self.device = device
        self.modality = modality
        self.gpu_memory_gb = gpu_memory_gb
        self.peers = peers or []  # every served model, for the model selection after training
        self.progress_path = self.work_dir / spec.name / "train_progress.json"

    def config(self):
        return {k: v for k, v in TrainConfig().__dict__.items() if k not in ("device",)}

    def stats(self):
        if self.progress_path.exists():
            try:
                return json.loads(self.progress_path.read_text())
            except ValueError:
                return {}
        return {}

    def _write_progress(self, state: dict) -> None:
        self.progress_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.progress_path.with_name(f".{self.progress_path.name}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.progress_path)

    def update_model_selection(self, val_pairs: list[dict], device: str) -> None:
        """Score every model with weights, and their ensemble, on this datastore's validation split."""
        selection = evaluate_models(self.peers, val_pairs, self.labels, device)
        save_selection(self.work_dir, selection)
        logger.info("model selection on %d validation images: %s", len(val_pairs), selection["val_dice_per_label"])

    def choose_plan(self, parent: dict | None, datalist: list[dict], force_replan: bool = False):
        """Keep the weights' plan (and fine-tune) unless the labeled data calls for another.

        A fresh plan replaces the parent's when at least MIN_CASES_TO_REPLAN cases are
        labeled and it differs materially (normalization, or a target spacing more than
        REPLAN_SPACING_CHANGE off on some axis); training then starts from scratch, since
        weights learned at another resolution or intensity scale do not transfer.
        """
        planning = {"gpu_memory_budget_gb": self.gpu_memory_gb, **self.spec.planning}
        if parent is not None:
            planning.update(parent.get("planning") or {})
        if parent is None or force_replan or len(datalist) >= MIN_CASES_TO_REPLAN:
            fresh = make_plan(fingerprint_files(datalist), self.labels, modality=self.modality,
                              spatial_dims=self.spec.spatial_dims, **planning)
        if parent is None:
            return fresh, None
        current = plan_of(parent)
        if force_replan or (len(datalist) >= MIN_CASES_TO_REPLAN and plans_differ(current, fresh)):
            logger.info("%s: the labeled data calls for a new plan; training from scratch", self.spec.name)
            return fresh, None
        return current, parent

    def __call__(self, request, datastore):
        config = TrainConfig.from_request(request, TrainConfig(device=self.device, **self.spec.training))
        datalist = datastore.datalist()
        if not datalist:
            raise MedSegInputError("no image has a final label yet; submit at least one label before training")
        names = [os.path.basename(d["image"]) for d in datalist]

        parent = self.store.load()
        plan, parent = self.choose_plan(parent, datalist, force_replan=bool(request.get("replan", False)))
        cache_dir = self.work_dir / "cache"
        cases = [load_preprocessed(d["image"], d["label"], plan, cache_dir) for d in datalist]
        train_idx, val_idx = persistent_split(names, self.work_dir / "split.json", config.val_fraction,
                                              config.val_max_cases, config.seed)

        network = self.spec.build(plan)
        if parent is not None:
            network.load_state_dict({k: v.float() for k, v in parent["state_dict"].items()})
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        state = {"model": self.spec.name, "status": "RUNNING", "started_at": started, "n_labels": len(datalist)}
        self._write_progress(state)

        def progress(entry):
            state.update(entry)
            self._write_progress(state)
            print(json.dumps({"progress": entry}), flush=True)

        try:
            result = train_network(network, plan, [cases[i] for i in train_idx], [cases[i] for i in val_idx],
                                   config, progress=progress, dice_only=self.spec.dice_only)
        except BaseException as e:  # killed or failed: say so, and leave the served weights alone
            state.update({"status": "ERROR", "error": str(e) or type(e).__name__})
            self._write_progress(state)
            raise
        previous = self.store.load()
        version = int(previous.get("version", 0)) + 1 if previous else 1
        checkpoint = {
            "model": self.spec.name,
            "state_dict": result.state_dict,
            "plan": json.loads(plan.to_json()),
            "train_config": config.__dict__,
            "val_dice_per_label": result.val_dice_per_label,
            "postprocessing": result.postprocessing,
            "planning": planning_kwargs(previous, self.spec),
            "version": version,
            "parent_version": parent.get("version") if parent else None,  # None: trained from scratch
            "n_train_cases": len(train_idx),
            "train_images": [names[i] for i in train_idx],
            "val_images": [names[i] for i in val_idx],
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "source": "trained",
        }
        if self.store.runtime_path.exists():
            # Keep the weights we replace, for rollback.
            shutil.copy2(self.store.runtime_path, self.store.runtime_path.with_name(f"model.v{version - 1}.pt"))
        path = self.store.publish(checkpoint)
        if self.peers:
            self.update_model_selection([datalist[i] for i in val_idx], config.device)
        state.update({"status": "DONE", "version": version, "val_dice_per_label": result.val_dice_per_label,
                      "finished_at": checkpoint["trained_at"], "seconds": round(result.seconds, 1)})
        self._write_progress(state)
        logger.info("%s: published version %d to %s", self.spec.name, version, path)
        return {"model": self.spec.name, "version": version, "val_dice_per_label": result.val_dice_per_label,
                "iterations": result.iterations, "seconds": round(result.seconds, 1)}
