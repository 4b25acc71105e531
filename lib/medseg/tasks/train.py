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

import torch
from monailabel.interfaces.tasks.train import TrainTask

from medseg.checkpoint import ModelStore, plan_of
from medseg.errors import MedSegInputError
from medseg.models import ModelSpec
from medseg.pipeline.fingerprint import fingerprint_files
from medseg.pipeline.plan import make_plan
from medseg.pipeline.training import TrainConfig, load_preprocessed, split_train_val, train_network

logger = logging.getLogger(__name__)


class MedSegTrainTask(TrainTask):
    def __init__(self, spec: ModelSpec, store: ModelStore, labels: dict[str, int], work_dir: Path, device: str):
        super().__init__(f"Fine-tune {spec.name} on the datastore's final labels")
        self.spec = spec
        self.store = store
        self.labels = dict(labels)
        self.work_dir = Path(work_dir)
        self.device = device
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

    def __call__(self, request, datastore):
        config = TrainConfig.from_request(request, TrainConfig(device=self.device))
        datalist = datastore.datalist()
        if not datalist:
            raise MedSegInputError("no image has a final label yet; submit at least one label before training")
        names = [os.path.basename(d["image"]) for d in datalist]

        parent = self.store.load()
        if parent is not None:
            plan = plan_of(parent)  # fine-tuning keeps the plan (and so the topology) of its weights
        else:
            plan = make_plan(fingerprint_files(datalist), self.labels, spatial_dims=self.spec.spatial_dims,
                             **self.spec.planning)
        cache_dir = self.work_dir / "cache"
        cases = [load_preprocessed(d["image"], d["label"], plan, cache_dir) for d in datalist]
        train_idx, val_idx = split_train_val(names, config.val_fraction, config.val_max_cases, config.seed)

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

        result = train_network(network, plan, [cases[i] for i in train_idx], [cases[i] for i in val_idx],
                               config, progress=progress, dice_only=self.spec.dice_only)
        version = int(parent.get("version", 0)) + 1 if parent else 1
        checkpoint = {
            "model": self.spec.name,
            "state_dict": result.state_dict,
            "plan": json.loads(plan.to_json()),
            "train_config": config.__dict__,
            "val_dice_per_label": result.val_dice_per_label,
            "version": version,
            "parent_version": parent.get("version") if parent else None,
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
        state.update({"status": "DONE", "version": version, "val_dice_per_label": result.val_dice_per_label,
                      "finished_at": checkpoint["trained_at"], "seconds": round(result.seconds, 1)})
        self._write_progress(state)
        logger.info("%s: published version %d to %s", self.spec.name, version, path)
        return {"model": self.spec.name, "version": version, "val_dice_per_label": result.val_dice_per_label,
                "iterations": result.iterations, "seconds": round(result.seconds, 1)}
