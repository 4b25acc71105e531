"""MONAI Label train task: final labels in the datastore -> fine-tuned weights, published.

MONAI Label runs this in a subprocess (``POST /train/<model>``); the server's infer
task picks the new weights up by file modification time, without a restart.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import fields
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
from monailabel.interfaces.tasks.train import TrainTask

from medseg.background import lower_priority
from medseg.checkpoint import ModelStore, plan_of, save_checkpoint
from medseg.errors import MedSegInputError
from medseg.imageio import read_volume
from medseg.models import MODELS, ModelSpec
from medseg.pipeline.cascade import (
    PerturbedPreviousStage,
    previous_stage_on_grid,
    with_previous_stage,
)
from medseg.pipeline.distributed import is_main_process, run_distributed
from medseg.pipeline.fingerprint import fingerprint_files
from medseg.pipeline.plan import Plan, machine_planning, make_plan
from medseg.pipeline.training import (
    FROM_SCRATCH_TRAINING,
    TrainConfig,
    TrainResult,
    load_preprocessed,
    persistent_split,
    pick_device,
    train_network,
)
from medseg.request_options import choice, client_id, flag, text
from medseg.selection import checkpoint_dice, evaluate_models, save_selection

logger = logging.getLogger(__name__)


MIN_CASES_TO_REPLAN = 5
PUBLISH_POLICIES = ("if_not_worse", "always")


REPLAN_SPACING_CHANGE = 0.2


def plans_differ(a: Plan, b: Plan) -> bool:
    if a.normalization != b.normalization or a.labels != b.labels:
        return True
    return any(abs(x - y) / x > REPLAN_SPACING_CHANGE for x, y in zip(a.target_spacing_mm, b.target_spacing_mm))


def _process_alive(pid) -> bool:
    if not pid:
        return True  # older progress files: no way to tell
    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE  # killed, not yet reaped
    except psutil.NoSuchProcess:
        return False


# Keys of a train request besides TrainConfig's: this task's own, and what MONAI Label's clients send.
TASK_OPTIONS = ("publish", "replan", "model_selection")
CLIENT_KEYS = ("model", "client_id", "name", "description", "gpus")


def check_train_request(params: dict) -> dict:
    """A training request's options, checked before the training process starts (422 otherwise)."""
    known = {f.name for f in fields(TrainConfig)} | set(TASK_OPTIONS) | set(CLIENT_KEYS)
    unknown = sorted(set(params) - known)
    if unknown:
        raise MedSegInputError(f"unknown training option(s) {unknown}; options: {', '.join(sorted(known))}")
    config = TrainConfig.from_request(params)
    if config.multi_gpu:
        most = max(os.cpu_count() or 1, torch.cuda.device_count())
        if config.world_size > most:
            raise MedSegInputError(f"world_size {config.world_size} is more processes than this machine has "
                                   f"devices or cores ({most})")
    out = dict(params)
    if "publish" in params:
        out["publish"] = choice("publish", params["publish"], PUBLISH_POLICIES)
    for key in ("replan", "model_selection"):
        if key in params:
            out[key] = flag(key, params[key])
    out = client_id(out)
    for key in CLIENT_KEYS:
        if key in out and key != "client_id":
            out[key] = text(key, out[key])
    return out


class TrainProgress:
    """Progress of one run in a JSON file that ``GET /train/`` reads (via ``stats()``).

    Picklable, so data-parallel workers report through it too (rank 0 only).
    """

    def __init__(self, path: Path, state: dict):
        self.path = Path(path)
        self.state = state
        self.stage = None  # cascade: which stage the entries are about

    def write(self, **updates) -> None:
        self.state.update(updates)
        if not is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.path)

    def __call__(self, entry: dict) -> None:
        if self.stage:
            entry = {**entry, "stage": self.stage}
        self.write(**entry)
        print(json.dumps({"progress": entry}), flush=True)


class ReportedTrainTask(TrainTask):
    """A train task whose runs report to ``self.progress_path`` (a TrainProgress file)."""

    progress_path: Path

    def stats(self):
        try:
            state = json.loads(self.progress_path.read_text())
        except (OSError, ValueError):
            return {}
        if state.get("status") == "RUNNING" and not _process_alive(state.get("pid")):
            # Killed (DELETE /train/, or the server stopped) before it could say so.
            state["status"] = "STOPPED"
        return state

    def mark_stopped(self) -> bool:
        """After ``DELETE /train/``: a run the progress file still calls RUNNING is STOPPED."""
        try:
            state = json.loads(self.progress_path.read_text())
        except (OSError, ValueError):
            return False
        if state.get("status") != "RUNNING":
            return False
        TrainProgress(self.progress_path, {**state, "status": "STOPPED",
                                            "stopped_at": time.strftime("%Y-%m-%dT%H:%M:%S")}).write()
        return True


class MedSegTrainTask(ReportedTrainTask):
    def __init__(self, spec: ModelSpec, store: ModelStore, labels: dict[str, int], work_dir: Path, device: str,
                 modality: str = "MR", gpu_memory_gb: float | None = None,
                 peers: list[tuple[ModelSpec, ModelStore]] | None = None, planning: dict | None = None):
        super().__init__(f"Fine-tune {spec.name} on the datastore's final labels")
        self.planning_defaults = dict(planning or {})  # make_plan keywords (scripts/train_shipped_model.py)
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

    def update_model_selection(self, val_pairs: list[dict], device: str) -> None:
        """Score every model with weights, and their ensemble, on this datastore's validation split."""
        selection = evaluate_models(self.peers, val_pairs, self.labels, device)
        save_selection(self.work_dir, selection)
        logger.info("model selection on %d validation images: %s", len(val_pairs), selection["val_dice_per_label"])

    def planning(self, parent: dict | None) -> dict:
        """``make_plan`` keywords: the machine's profile (``machine_planning``), the script's and the
        model's own; fine-tuning keeps what its weights were planned with."""
        machine = machine_planning(pick_device(self.device).type, self.gpu_memory_gb)
        planning = {**machine, **self.planning_defaults, **self.spec.planning}
        if parent is not None:
            planning.update(parent.get("planning") or {})
        return planning

    def choose_plan(self, parent: dict | None, datalist: list[dict], force_replan: bool = False):
        """Keep the weights' plan (and fine-tune) unless the labeled data calls for another.

        A fresh plan replaces the parent's when at least MIN_CASES_TO_REPLAN cases are
        labeled and it differs materially (normalization, or a target spacing more than
        REPLAN_SPACING_CHANGE off on some axis); training then starts from scratch, since
        weights learned at another resolution or intensity scale do not transfer.
        Returns (plan, parent or None, fingerprints or None).
        """
        fingerprints = None
        if parent is None or force_replan or len(datalist) >= MIN_CASES_TO_REPLAN:
            fingerprints = fingerprint_files(datalist, modality=self.modality)
            fresh = make_plan(fingerprints, self.labels, modality=self.modality,
                              spatial_dims=self.spec.spatial_dims, **self.planning(parent))
        if parent is None:
            return fresh, None, fingerprints
        current = plan_of(parent)
        if force_replan or (len(datalist) >= MIN_CASES_TO_REPLAN and plans_differ(current, fresh)):
            logger.info("%s: the labeled data calls for a new plan; training from scratch", self.spec.name)
            return fresh, None, fingerprints
        return current, parent, fingerprints

    def training_defaults(self, from_scratch: bool) -> dict:
        """TrainConfig defaults under the request: the model's own, else AdamW from random weights."""
        if self.spec.training:
            return dict(self.spec.training)
        return dict(FROM_SCRATCH_TRAINING) if from_scratch else {}

    def load_cases(self, plan: Plan, datalist: list[dict]):
        return [load_preprocessed(d["image"], d["label"], plan, self.work_dir / "cache") for d in datalist]

    def train(self, network, plan: Plan, train_cases, val_cases, config: TrainConfig, progress: TrainProgress,
              previous_stage=None) -> TrainResult:
        """One network trained, in this process or data-parallel (``multi_gpu``)."""
        args = (network, plan, train_cases, val_cases, config, progress, None, self.spec.dice_only, previous_stage)
        if config.processes() > 1 and not dist.is_initialized():
            logger.info("%s: data-parallel training on %d processes", self.spec.name, config.processes())
            return run_distributed(config.processes(), train_network, *args)[0]
        return train_network(*args)

    def fit(self, plan: Plan, parent: dict | None, datalist: list[dict], train_idx: list[int], val_idx: list[int],
            config: TrainConfig, progress: TrainProgress, fingerprints) -> tuple[TrainResult, dict]:
        """Train from ``parent`` (or from scratch); the result and extra checkpoint entries."""
        cases = self.load_cases(plan, datalist)
        network = self.spec.build(plan)
        if parent is not None:
            network.load_state_dict({k: v.float() for k, v in parent["state_dict"].items()})
        result = self.train(network, plan, [cases[i] for i in train_idx], [cases[i] for i in val_idx], config,
                            progress)
        return result, {}

    def __call__(self, request, datastore):
        lower_priority()  # a clinician's infer in the server comes first
        policy = choice("publish", request.get("publish", "if_not_worse"), PUBLISH_POLICIES)
        datalist = datastore.datalist()
        if not datalist:
            raise MedSegInputError("no image has a final label yet; submit at least one label before training")
        names = [os.path.basename(d["image"]) for d in datalist]

        parent = self.store.load()
        replan = flag("replan", request.get("replan", False))
        plan, parent, fingerprints = self.choose_plan(parent, datalist, force_replan=replan)
        config = TrainConfig.from_request(request, TrainConfig(device=self.device,
                                                               **self.training_defaults(parent is None)))
        train_idx, val_idx = persistent_split(names, self.work_dir / "split.json", config.val_fraction,
                                              config.val_max_cases, config.seed)
        if config.max_epochs:
            config.max_iterations = config.iterations_for(len(train_idx), plan.batch_size)
            logger.info("%s: %d epochs over %d cases = %d iterations", self.spec.name, config.max_epochs,
                        len(train_idx), config.max_iterations)
        # One labelled image is both trained and validated on: its Dice is no validation, and
        # the stats, the checkpoint and the publish decision say so.
        held_out = bool(set(val_idx) - set(train_idx))
        honesty = {"held_out_validation": held_out}
        if not held_out:
            honesty["validation_note"] = (f"only {len(datalist)} labelled image: the validation Dice is measured on "
                                          "the training image, not held out; label another image for a real one")
        progress = TrainProgress(self.progress_path, {
            "model": self.spec.name, "status": "RUNNING", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "pid": os.getpid(), **honesty,
            "n_labels": len(datalist), "plan": plan.summary(), "from_scratch": parent is None,
            "optimizer": config.optimizer, "learning_rate": config.learning_rate,
            "class_weighting": config.class_weighting,
            "processes": dist.get_world_size() if dist.is_initialized() else config.processes()})
        progress.write()
        print(json.dumps({"plan": progress.state["plan"], "from_scratch": parent is None}), flush=True)
        try:
            result, extra = self.fit(plan, parent, datalist, train_idx, val_idx, config, progress, fingerprints)
        except BaseException as e:  # killed or failed: say so, and leave the served weights alone
            progress.write(status="ERROR", error=str(e) or type(e).__name__)
            raise
        if not is_main_process():
            return {}  # torchrun: rank 0 publishes
        previous = self.store.load()
        version = self.store.next_version()
        val_pairs = [datalist[i] for i in val_idx]
        checkpoint = {
            "model": self.spec.name,
            "state_dict": result.state_dict,
            "plan": json.loads(plan.to_json()),
            "train_config": config.__dict__,
            "val_dice_per_label": result.val_dice_per_label,
            "postprocessing": result.postprocessing,
            "planning": self.planning(previous),
            "version": version,
            "parent_version": parent.get("version") if parent else None,  # None: trained from scratch
            "n_train_cases": len(train_idx),
            "train_images": [names[i] for i in train_idx],
            "val_images": [names[i] for i in val_idx],
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "source": "trained",
            **honesty,
            **extra,
        }
        comparison = self.compare_with_current(previous, checkpoint, val_pairs, config.device, policy, held_out)
        checkpoint["val_comparison"] = comparison
        summary = {"version": version, "published": comparison["publish"], "val_comparison": comparison,
                   "val_dice_per_label": result.val_dice_per_label, "iterations": result.iterations,
                   "seconds": round(result.seconds, 1)}
        if comparison["publish"]:
            self.store.archive_current()  # the replaced weights stay available for rollback
            self.store.publish(checkpoint)
            if self.peers and held_out and flag("model_selection", request.get("model_selection", True)):
                self.update_model_selection(val_pairs, config.device)
            logger.info("%s: published version %d", self.spec.name, version)
        else:
            # Worse on validation than what is served: keep the candidate for inspection only.
            save_checkpoint(self.store.runtime_path.with_name(f"model.rejected.v{version}.pt"), checkpoint)
            logger.warning("%s: version %d not published: %s", self.spec.name, version, comparison["reason"])
        progress.write(status="DONE", finished_at=checkpoint["trained_at"], **summary)
        return {"model": self.spec.name, **summary}

    def compare_with_current(self, current: dict | None, candidate: dict, val_pairs: list[dict], device: str,
                             policy: str, held_out: bool = True) -> dict:
        """Publish only weights whose validation Dice is not worse than the served weights'.

        Both are scored the same way, on the same validation images, on their original
        grids (their plans may differ). ``policy`` "always" skips the comparison.
        """
        if current is None:
            return {"publish": True, "reason": "no weights were served"}
        if policy == "always":
            return {"publish": True, "reason": "publish=always"}
        if not held_out:
            return {"publish": True, "reason": "no held-out validation image (one labelled image), so no gate: "
                                               "published without comparing with the served weights"}
        device = pick_device(device)
        scores = {name: checkpoint_dice(self.spec, ckpt, val_pairs, self.labels, device)
                  for name, ckpt in (("candidate", candidate), ("current", current))}
        means = {name: float(sum(d.values()) / len(d)) for name, d in scores.items()}
        publish = means["candidate"] >= means["current"]
        return {"publish": publish, "reason": f"mean validation Dice {means['candidate']:.4f} (new) vs "
                f"{means['current']:.4f} (version {current.get('version')})",
                "dice_per_label": scores, "current_version": current.get("version"),
                "val_images": [os.path.basename(p["image"]) for p in val_pairs]}


class CascadeTrainTask(MedSegTrainTask):
    """Both stages of the cascade, in order, each with ``max_iterations``.

    The first stage is planned and trained like ``cascade_lowres``; the second
    trains on perturbed ground truth (medseg.pipeline.cascade) and is validated on
    the first stage's real predictions for the validation images.
    """

    def fit(self, plan, parent, datalist, train_idx, val_idx, config, progress, fingerprints):
        first_spec = MODELS["cascade_lowres"]
        if parent is not None:
            first_plan = plan_of(parent["lowres"])
        else:
            first_plan = make_plan(fingerprints or fingerprint_files(datalist, modality=self.modality), self.labels, modality=self.modality,
                                   spatial_dims=3, **dict(self.planning(None), stage="lowres"))
        first_net = first_spec.build(first_plan)
        if parent is not None:
            first_net.load_state_dict({k: v.float() for k, v in parent["lowres"]["state_dict"].items()})
        first_cases = self.load_cases(first_plan, datalist)
        progress.stage = "lowres"
        first = self.train(first_net, first_plan, [first_cases[i] for i in train_idx],
                           [first_cases[i] for i in val_idx], config, progress)
        first_net.load_state_dict(first.state_dict)
        first_stage = {"state_dict": first.state_dict, "plan": json.loads(first_plan.to_json()),
                       "postprocessing": first.postprocessing, "val_dice_per_label": first.val_dice_per_label,
                       "training": {"iterations": first.iterations, "seconds": round(first.seconds, 1),
                                    "final_loss": round(first.final_loss, 4)}}
        del first_cases

        cases = self.load_cases(plan, datalist)
        first_predictor = first_spec.predictor(first_stage, pick_device(config.device))
        val_cases = []
        for i in val_idx:
            previous = previous_stage_on_grid(first_predictor, read_volume(datalist[i]["image"]), plan).label
            val_cases.append(with_previous_stage(cases[i], previous, plan.n_classes))
        network = self.spec.build(plan)
        if parent is not None:
            network.load_state_dict({k: v.float() for k, v in parent["state_dict"].items()})
        progress.stage = "fullres"
        result = self.train(network, plan, [cases[i] for i in train_idx], val_cases, config, progress,
                            previous_stage=PerturbedPreviousStage(plan, config.seed))
        result.seconds += first.seconds
        return result, {"lowres": first_stage}


def train_tasks(cfg, stores: dict[str, ModelStore]) -> dict[str, MedSegTrainTask]:
    """One train task per configured model (``cfg`` is a medseg.config.AppConfig)."""
    peers = [(spec, stores[spec.name]) for spec in cfg.models]
    return {
        spec.name: (CascadeTrainTask if spec.cascade else MedSegTrainTask)(
            spec, stores[spec.name], cfg.labels, cfg.work_dir, cfg.device, cfg.modality, cfg.gpu_memory_gb, peers
        )
        for spec in cfg.models
    }
